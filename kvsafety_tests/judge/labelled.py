"""The labelled set and scoring: real completions a person labelled, and a judge measured on them.

``load_labelled`` reads and validates the set (default: the shipped
``fixtures/judge_labelled.jsonl``); ``split_by_prompt`` halves it by prompt, so the embedding head
trains on one half and is scored on the other; ``evaluate_judge`` gives a judge's ``JudgeScores``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .protocol import LABELS, Judge, JudgeError

__all__ = [
    "LABELLED_SET_FILE",
    "JudgeScores",
    "LabelledCompletion",
    "evaluate_judge",
    "load_labelled",
    "split_by_prompt",
]

LABELLED_SET_FILE = "judge_labelled.jsonl"  # in the kvsafety_tests.fixtures package


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


_RECORD_FIELDS = ("id", "model", "quantizer", "prompt_id", "prompt_kind", "completion", "label")


def load_labelled(path: str | Path | None = None) -> list[LabelledCompletion]:
    """The labelled set (default: the shipped ``fixtures/judge_labelled.jsonl``), validated."""
    if path is None:
        text = resources.files("kvsafety_tests.fixtures").joinpath(LABELLED_SET_FILE).read_text("utf-8")
        where = LABELLED_SET_FILE
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise JudgeError(f"labelled set {str(path)!r} cannot be read: {e.strerror}") from None
        where = str(path)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise JudgeError(f"{where}:{n}: not JSON ({e.msg})") from None
        missing = [f for f in _RECORD_FIELDS if f not in raw]
        if missing:
            raise JudgeError(f"{where}:{n}: missing field(s) {', '.join(missing)}")
        if raw["label"] not in LABELS:
            raise JudgeError(f"{where}:{n}: label {raw['label']!r} unknown; valid: {', '.join(LABELS)}")
        records.append(
            LabelledCompletion(
                **{k: raw[k] for k in _RECORD_FIELDS},
                why=raw.get("why") or "",
                prompt=raw.get("prompt"),
                prompt_source=raw.get("prompt_source", "builtin"),
            )
        )
    return records


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
    """A judge measured on labelled records.

    ``refusal_accuracy`` is the accuracy of the binary verdict the metrics use (refused vs not):
    confusing complied with incoherent costs nothing there. ``errors``: (id, label, judged).
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

    def table(self) -> str:
        """A plain-text table: the two accuracies, then precision and recall per label."""

        def pct(x: float | None) -> str:
            return "   n/a" if x is None else f"{100 * x:5.1f}%"

        lines = [
            f"judge {self.judge}: n={self.n}  accuracy {pct(self.accuracy)}  "
            f"refused-vs-not accuracy {pct(self.refusal_accuracy)}",
            f"{'label':<12}{'support':>8}{'precision':>11}{'recall':>9}   judged as " + " / ".join(LABELS),
        ]
        for label in LABELS:
            row = " / ".join(str(self.confusion[label][j]) for j in LABELS)
            lines.append(
                f"{label:<12}{self.support[label]:>8}{pct(self.precision[label]):>11}"
                f"{pct(self.recall[label]):>9}   {row}"
            )
        return "\n".join(lines)


def evaluate_judge(judge: Judge, records: Sequence[LabelledCompletion]) -> JudgeScores:
    """Score ``judge`` against the labels of ``records`` (one ``label_many`` call)."""
    if not records:
        raise JudgeError("evaluate_judge: no labelled records given")
    judged = judge.label_many([r.prompt or "" for r in records], [r.completion for r in records])
    bad = sorted({j for j in judged if j not in LABELS})
    if bad:
        raise JudgeError(f"judge {judge.name!r} returned label(s) {bad}; valid: {', '.join(LABELS)}")
    confusion = {a: dict.fromkeys(LABELS, 0) for a in LABELS}
    for r, j in zip(records, judged, strict=True):
        confusion[r.label][j] += 1
    support = {a: sum(confusion[a].values()) for a in LABELS}
    predicted = {j: sum(confusion[a][j] for a in LABELS) for j in LABELS}
    correct = sum(confusion[a][a] for a in LABELS)
    refusal_correct = sum(
        (r.label == "refused") == (j == "refused") for r, j in zip(records, judged, strict=True)
    )
    return JudgeScores(
        judge=judge.name,
        n=len(records),
        accuracy=correct / len(records),
        refusal_accuracy=refusal_correct / len(records),
        precision={a: confusion[a][a] / predicted[a] if predicted[a] else None for a in LABELS},
        recall={a: confusion[a][a] / support[a] if support[a] else None for a in LABELS},
        support=support,
        confusion=confusion,
        errors=tuple((r.id, r.label, j) for r, j in zip(records, judged, strict=True) if r.label != j),
    )
