"""The labelled sets and scoring: completions a person labelled, and a judge measured on them.

Two sets ship in ``kvsafety_tests.fixtures``:

- v2, ``judge_labelled_v2.jsonl`` (docs/judge-labelling.md): 845 distinct texts labelled by
  reading before any judge ran, split by prompt into ``dev`` (rules, thresholds and heads are
  fitted on it) and ``test`` (frozen by its sha256; every published accuracy is measured on it).
  ``load_labelled_v2`` reads it; ``with_prompts`` fills in each record's request text from the
  prompt packages (benchmark prompt text is never stored in the set).
- v3 (docs/judge-labelling.md, "Set v3"): a new frozen test split, ``judge_labelled_v3_test.jsonl``
  (439 distinct texts on prompts v2 never used, hand-written cases by new writers), with all of
  v2 as its dev split: v2's test split had been read, so it could no longer measure a judge
  fitted after that. ``load_labelled_v3`` reads it. Published accuracies are on v3's test split.
- v1, ``judge_labelled.jsonl``: the older set the ``rules-v1`` rules were written against (in
  sample). ``load_labelled`` reads it; ``split_by_prompt`` halves it by prompt.

``evaluate_judge`` gives a judge's ``JudgeScores``: accuracies, per-label recall with Wilson 95%
intervals over the (distinct) texts, and the confusion matrix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..stats import wilson_interval
from .protocol import LABELS, Judge, JudgeError

__all__ = [
    "LABELLED_SET_FILE",
    "LABELLED_SET_V2_FILE",
    "LABELLED_SET_V3_TEST_FILE",
    "LABELLED_SPLITS",
    "Interval",
    "JudgeScores",
    "LabelledCompletion",
    "breakdown",
    "check_dev_records",
    "evaluate_judge",
    "load_labelled",
    "load_labelled_v2",
    "load_labelled_v3",
    "prompt_fold",
    "score_labels",
    "split_by_prompt",
    "with_prompts",
]

LABELLED_SET_FILE = "judge_labelled.jsonl"  # v1, in the kvsafety_tests.fixtures package
LABELLED_SET_V2_FILE = "judge_labelled_v2.jsonl"  # v2 (docs/judge-labelling.md), same package
#: v3's test split (every record ``"split": "test"``); v3's dev split is all of v2.
LABELLED_SET_V3_TEST_FILE = "judge_labelled_v3_test.jsonl"
LABELLED_SPLITS: tuple[str, ...] = ("dev", "test")
HANDWRITTEN = "handwritten"  # the v2 source of the hand-written hard cases

#: A (low, high) 95% interval of a proportion.
Interval = tuple[float, float]


@dataclass(frozen=True)
class LabelledCompletion:
    """One line of the labelled set: a real completion and the label a person gave it.

    ``prompt`` is the request's text for builtin prompts and None for benchmark prompts (their
    text stays in the data package it ships in). ``why`` explains hard cases.
    """

    id: str
    model: str
    quantizer: str
    prompt_id: str
    prompt_kind: str
    completion: str
    label: str
    why: str = ""
    prompt: str | None = None
    prompt_source: str = "builtin"
    #: v2 only: ``dev`` or ``test`` ("" for v1 records).
    split: str = ""
    #: v2 only: the quantizer's family (none, int8, ..., kivi); None for hand-written cases.
    quantizer_family: str | None = None
    #: v2 only: which kind of hard case a hand-written record is; None for real completions.
    case_kind: str | None = None

    @property
    def handwritten(self) -> bool:
        """A hand-written hard case rather than a real completion of a model."""
        return self.prompt_source == HANDWRITTEN


_RECORD_FIELDS = ("id", "model", "quantizer", "prompt_id", "prompt_kind", "completion", "label")


def _jsonl_records(
    path: str | Path | None, default: str, required: Sequence[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each line of a labelled JSONL file (``default``: the shipped one),
    each record holding the ``required`` fields and a known label; JudgeError naming the line."""
    if path is None:
        text = resources.files("kvsafety_tests.fixtures").joinpath(default).read_text("utf-8")
        where = default
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise JudgeError(f"labelled set {str(path)!r} cannot be read: {e.strerror}") from None
        where = str(path)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise JudgeError(f"{where}:{n}: not JSON ({e.msg})") from None
        missing = [f for f in required if f not in raw]
        if missing:
            raise JudgeError(f"{where}:{n}: missing field(s) {', '.join(missing)}")
        if raw["label"] not in LABELS:
            raise JudgeError(f"{where}:{n}: label {raw['label']!r} unknown; valid: {', '.join(LABELS)}")
        yield f"{where}:{n}", raw


def load_labelled(path: str | Path | None = None) -> list[LabelledCompletion]:
    """The labelled set (default: the shipped ``fixtures/judge_labelled.jsonl``), validated."""
    return [
        LabelledCompletion(
            **{k: raw[k] for k in _RECORD_FIELDS},
            why=raw.get("why") or "",
            prompt=raw.get("prompt"),
            prompt_source=raw.get("prompt_source", "builtin"),
        )
        for _, raw in _jsonl_records(path, LABELLED_SET_FILE, _RECORD_FIELDS)
    ]


_V2_FIELDS = ("id", "text", "label", "split", "source", "prompt_id", "kind")


def load_labelled_v2(path: str | Path | None = None, *, split: str | None = None) -> list[LabelledCompletion]:
    """The labelled set v2 (default: the shipped ``fixtures/judge_labelled_v2.jsonl``), validated;
    ``split``: only its ``dev`` or ``test`` records.

    Benchmark records carry no prompt text (``prompt`` is None): ``with_prompts`` fills it in.
    Hand-written records carry their own request. Hand-written records have no model or quantizer
    (``model`` and ``quantizer`` are ``"handwritten"`` here, ``quantizer_family`` None).
    """
    if split is not None and split not in LABELLED_SPLITS:
        raise JudgeError(f"labelled split {split!r} unknown; valid: {', '.join(LABELLED_SPLITS)}")
    records = []
    for where, raw in _jsonl_records(path, LABELLED_SET_V2_FILE, _V2_FIELDS):
        if raw["split"] not in LABELLED_SPLITS:
            raise JudgeError(f"{where}: split {raw['split']!r} unknown; valid: {', '.join(LABELLED_SPLITS)}")
        if split is not None and raw["split"] != split:
            continue
        records.append(
            LabelledCompletion(
                id=raw["id"],
                model=raw.get("model") or HANDWRITTEN,
                quantizer=raw.get("quantizer") or HANDWRITTEN,
                prompt_id=raw["prompt_id"],
                prompt_kind=raw["kind"],
                completion=raw["text"],
                label=raw["label"],
                why=raw.get("why") or "",
                prompt=raw.get("prompt"),
                prompt_source=raw["source"],
                split=raw["split"],
                quantizer_family=raw.get("quantizer_family"),
                case_kind=raw.get("case_kind"),
            )
        )
    return records


def load_labelled_v3(split: str | None = None) -> list[LabelledCompletion]:
    """The labelled set v3: ``dev`` is every record of v2 (its two splits together), ``test`` the
    frozen ``judge_labelled_v3_test.jsonl``; ``split`` picks one (default: both, dev first)."""
    if split is not None and split not in LABELLED_SPLITS:
        raise JudgeError(f"labelled split {split!r} unknown; valid: {', '.join(LABELLED_SPLITS)}")
    dev = [replace(r, split="dev") for r in load_labelled_v2()] if split != "test" else []
    test = [] if split == "dev" else _shipped(LABELLED_SET_V3_TEST_FILE)
    wrong = [r.id for r in test if r.split != "test"]
    if wrong:
        raise JudgeError(f"{LABELLED_SET_V3_TEST_FILE}: record {wrong[0]!r} is not on the test split")
    return dev + test


def _shipped(name: str) -> list[LabelledCompletion]:
    """A v2-format file shipped in ``kvsafety_tests.fixtures``."""
    with resources.as_file(resources.files("kvsafety_tests.fixtures").joinpath(name)) as path:
        return load_labelled_v2(path)


def with_prompts(records: Sequence[LabelledCompletion]) -> list[LabelledCompletion]:
    """``records`` with each request's text filled in, as an audit would pass it to the judge.

    Benchmark prompts are read by id through ``kvsafety_tests.prompts.load_prompts`` from the
    packages that ship them; a ``-long`` id gets the long-context variant (the benign document,
    then the request). A record that already has its prompt keeps it. A missing data package is a
    ``JudgeError`` naming the set; an id the set does not hold is one too. A ``-long`` record that
    stores its own (short) request gets the document put before it too.
    """
    from ..prompts import (
        LONG_CONTEXT_TEMPLATE,
        Prompt,
        PromptError,
        load_prompts,
        long_context,
        long_context_variant,
    )

    by_source: dict[str, dict[str, Prompt]] = {}
    out = []
    for r in records:
        if r.prompt is not None:
            if r.prompt_id.endswith("-long") and r.prompt_source != HANDWRITTEN:
                # the set stores our own requests short; the audit sent them after the document
                r = replace(r, prompt=LONG_CONTEXT_TEMPLATE.format(context=long_context(), request=r.prompt))
            out.append(r)
            continue
        if r.prompt_source not in by_source:
            try:
                loaded = load_prompts(r.prompt_source, pair_builtin=False)
            except PromptError as e:
                raise JudgeError(f"record {r.id}: its prompt set cannot be read: {e}") from None
            by_source[r.prompt_source] = {p.id: p for p in loaded.prompts}
        base = r.prompt_id.removesuffix("-long")
        prompt = by_source[r.prompt_source].get(base)
        if prompt is None:
            raise JudgeError(f"record {r.id}: prompt {base!r} is not in set {r.prompt_source!r}")
        if r.prompt_id.endswith("-long"):
            prompt = long_context_variant(prompt)
        out.append(replace(r, prompt=prompt.text))
    return out


def check_dev_records(records: Sequence[LabelledCompletion], who: str) -> None:
    """A head trainer's argument check (``who`` names it): some records, every one on the dev
    split (heads are fitted on dev only) and with its prompt filled in (``with_prompts``)."""
    if not records:
        raise JudgeError(f"{who}: no records given")
    not_dev = [r.id for r in records if r.split != "dev"]
    if not_dev:
        raise JudgeError(
            f"{who}: {len(not_dev)} record(s) are not on the dev split (e.g. {not_dev[0]!r}); "
            "heads are fitted on dev only, the test split only measures"
        )
    no_prompt = [r.id for r in records if r.prompt is None]
    if no_prompt:
        raise JudgeError(
            f"{who}: {len(no_prompt)} record(s) have no prompt (e.g. {no_prompt[0]!r}); "
            "fill them in with with_prompts"
        )


def prompt_fold(record: LabelledCompletion, folds: int) -> int:
    """The cross-validation fold of ``record``, by sha256 of its prompt (a long variant goes with
    its prompt): every completion of one request lands in one fold."""
    key = f"{record.prompt_source}/{record.prompt_id.removesuffix('-long')}"
    return int(hashlib.sha256(("fold:" + key).encode()).hexdigest(), 16) % folds


def split_by_prompt(
    records: Sequence[LabelledCompletion],
) -> tuple[list[LabelledCompletion], list[LabelledCompletion]]:
    """(train, held-out): a deterministic half by sha256 of the prompt id, so the completions of
    one prompt (every model and quantizer) fall on one side and a classifier cannot score itself
    on a request it learned."""

    def held_out(r: LabelledCompletion) -> bool:
        return int(hashlib.sha256(r.prompt_id.encode()).hexdigest(), 16) % 2 == 1

    return [r for r in records if not held_out(r)], [r for r in records if held_out(r)]


@dataclass(frozen=True)
class JudgeScores:
    """A judge measured on labelled records (each a distinct text in the v2 set).

    ``refusal_accuracy`` is the accuracy of the binary verdict the metrics use (refused vs not):
    confusing complied with incoherent costs nothing there. Every proportion has a Wilson 95%
    interval beside it (``*_interval``; None where its denominator is 0). ``errors``: (id, label,
    judged).
    """

    judge: str
    n: int
    accuracy: float
    refusal_accuracy: float
    precision: dict[str, float | None]
    recall: dict[str, float | None]
    support: dict[str, int]
    confusion: dict[str, dict[str, int]]  # confusion[label][judged]
    errors: tuple[tuple[str, str, str], ...] = field(default=())
    accuracy_interval: Interval | None = None
    refusal_accuracy_interval: Interval | None = None
    recall_interval: dict[str, Interval | None] = field(default_factory=dict)

    @property
    def correct(self) -> int:
        """Records judged with their label."""
        return sum(self.confusion[a][a] for a in LABELS)

    @property
    def refusal_correct(self) -> int:
        """Records whose refused-vs-not verdict matches the label."""
        return round(self.refusal_accuracy * self.n)

    def table(self) -> str:
        """A plain-text table: the two accuracies, then precision and recall per label, with the
        Wilson 95% intervals, and the confusion matrix (rows: label; columns: judged)."""

        def pct(x: float | None) -> str:
            return "   n/a" if x is None else f"{100 * x:5.1f}%"

        def ci(iv: Interval | None) -> str:
            return "" if iv is None else f" [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]"

        lines = [
            f"judge {self.judge}: n={self.n}  accuracy {pct(self.accuracy)}{ci(self.accuracy_interval)}  "
            f"refused-vs-not accuracy {pct(self.refusal_accuracy)}{ci(self.refusal_accuracy_interval)}",
            f"{'label':<12}{'support':>8}{'precision':>11}{'recall':>9} {'recall 95% CI':<15}  judged as "
            + " / ".join(LABELS),
        ]
        for label in LABELS:
            row = " / ".join(str(self.confusion[label][j]) for j in LABELS)
            lines.append(
                f"{label:<12}{self.support[label]:>8}{pct(self.precision[label]):>11}"
                f"{pct(self.recall[label]):>9} {ci(self.recall_interval.get(label)).strip():<15}  {row}"
            )
        return "\n".join(lines)


def evaluate_judge(judge: Judge, records: Sequence[LabelledCompletion]) -> JudgeScores:
    """Score ``judge`` against the labels of ``records`` (one ``label_many`` call)."""
    if not records:
        raise JudgeError("evaluate_judge: no labelled records given")
    judged = judge.label_many([r.prompt or "" for r in records], [r.completion for r in records])
    return score_labels(judge.name, records, judged)


def score_labels(name: str, records: Sequence[LabelledCompletion], judged: Sequence[str]) -> JudgeScores:
    """``JudgeScores`` of the labels ``judged`` (one per record, in order) given by judge ``name``;
    lets a caller judge once and score several subsets (``breakdown``)."""
    if not records:
        raise JudgeError("score_labels: no labelled records given")
    if len(judged) != len(records):
        raise JudgeError(f"score_labels: {len(judged)} labels for {len(records)} records")
    bad = sorted({j for j in judged if j not in LABELS})
    if bad:
        raise JudgeError(f"judge {name!r} returned label(s) {bad}; valid: {', '.join(LABELS)}")
    confusion = {a: dict.fromkeys(LABELS, 0) for a in LABELS}
    for r, j in zip(records, judged, strict=True):
        confusion[r.label][j] += 1
    support = {a: sum(confusion[a].values()) for a in LABELS}
    predicted = {j: sum(confusion[a][j] for a in LABELS) for j in LABELS}
    correct = sum(confusion[a][a] for a in LABELS)
    refusal_correct = sum(
        (r.label == "refused") == (j == "refused") for r, j in zip(records, judged, strict=True)
    )
    n = len(records)
    return JudgeScores(
        judge=name,
        n=n,
        accuracy=correct / n,
        refusal_accuracy=refusal_correct / n,
        precision={a: confusion[a][a] / predicted[a] if predicted[a] else None for a in LABELS},
        recall={a: confusion[a][a] / support[a] if support[a] else None for a in LABELS},
        support=support,
        confusion=confusion,
        errors=tuple((r.id, r.label, j) for r, j in zip(records, judged, strict=True) if r.label != j),
        accuracy_interval=wilson_interval(correct, n),
        refusal_accuracy_interval=wilson_interval(refusal_correct, n),
        recall_interval={a: wilson_interval(confusion[a][a], support[a]) for a in LABELS},
    )


def breakdown(
    name: str,
    records: Sequence[LabelledCompletion],
    judged: Sequence[str],
    groups: Sequence[tuple[str, Callable[[LabelledCompletion], bool]]],
) -> dict[str, JudgeScores]:
    """``score_labels`` on each named subset of ``records`` (subsets with no record are left out)."""
    out = {}
    for title, keep in groups:
        pairs = [(r, j) for r, j in zip(records, judged, strict=True) if keep(r)]
        if pairs:
            out[title] = score_labels(name, [r for r, _ in pairs], [j for _, j in pairs])
    return out
