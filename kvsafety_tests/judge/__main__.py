"""``python -m kvsafety_tests.judge``: measure the judges on the labelled set, or train a head.

``--evaluate`` (the default action) measures each judge on the labelled set v3, its dev split (all
of set v2) and its frozen test split shown separately, each also broken down into hand-written cases and real
completions: three-label accuracy, refused-vs-not accuracy, per-label recall with Wilson 95%
intervals over distinct texts, and the confusion matrix. ``--labelled PATH`` reads another file
instead: a v2-format file (records with ``text`` and ``split``) the same way, or the old v1 set
(``fixtures/judge_labelled.jsonl``) by its held-out half and in full, as before.

Exit codes: 0 done; 2 bad usage (an unknown option or judge, an unreadable labelled set or head,
a prompt package missing for a judge that reads the prompt).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from . import (
    CASCADE_JUDGE,
    EMBEDDING_MODULE,
    JUDGE_NAMES,
    LABELLED_SET_V2_FILE,
    LABELLED_SET_V3_TEST_FILE,
    LABELS,
    PROBE_JUDGE,
    EmbeddingJudge,
    Judge,
    JudgeError,
    JudgeScores,
    LabelledCompletion,
    breakdown,
    load_judge,
    load_labelled,
    load_labelled_v2,
    load_labelled_v3,
    score_labels,
    split_by_prompt,
    train_cascade_head,
    train_embedding_head,
    train_probe_head,
    with_prompts,
)
from .labelled import LABELLED_SPLITS

__all__ = ["main"]

_NEEDS_MINILM = (EmbeddingJudge.name, CASCADE_JUDGE)
_GROUPS = (
    ("hand-written", lambda r: r.handwritten),
    ("real completions", lambda r: not r.handwritten),
)


def _is_v2(path: str | None) -> bool:
    """Whether ``path`` (None: the shipped v2 set) holds v2 records (``text`` and ``split``)."""
    if path is None:
        return True
    try:
        first = next((ln for ln in Path(path).read_text("utf-8").splitlines() if ln.strip()), "{}")
        raw = json.loads(first)
    except (OSError, json.JSONDecodeError):
        return False  # load_labelled reports the problem with its own message
    return isinstance(raw, dict) and "text" in raw and "split" in raw


def _markdown(rows: list[tuple[str, str, JudgeScores]]) -> str:
    """One markdown row per (judge, subset): n, accuracies and per-label recall with intervals."""

    def cell(k: int, n: int, iv: tuple[float, float] | None) -> str:
        if n == 0 or iv is None:
            return "n/a"
        return f"{100 * k / n:.1f}% ({k}/{n}) [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]"

    head = (
        "| judge | subset | n | accuracy | refused vs not | "
        + " | ".join(f"{a} recall" for a in LABELS)
        + " |"
    )
    lines = [head, "|" + "---|" * (5 + len(LABELS))]
    for judge, subset, s in rows:
        recalls = " | ".join(cell(s.confusion[a][a], s.support[a], s.recall_interval.get(a)) for a in LABELS)
        lines.append(
            f"| {judge} | {subset} | {s.n} | {cell(s.correct, s.n, s.accuracy_interval)} | "
            f"{cell(s.refusal_correct, s.n, s.refusal_accuracy_interval)} | {recalls} |"
        )
    return "\n".join(lines)


def _print_errors(scores: JudgeScores, records: Sequence[LabelledCompletion]) -> None:
    by_id = {r.id: r for r in records}
    kinds = Counter(
        (want, got, by_id[rid].case_kind or f"real {by_id[rid].quantizer_family or by_id[rid].quantizer}")
        for rid, want, got in scores.errors
    )
    print("  errors by kind (labelled -> judged, case kind or quantizer family):")
    for (want, got, kind), count in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {count:3d}  {want} -> {got}  {kind}")
    for rid, want, got in scores.errors:
        print(f"  {rid}: labelled {want}, judged {got}: {by_id[rid].completion[:100]!r}")


def _evaluate_v2(
    judges: Sequence[Judge], path: str | None, splits: Sequence[str], *, errors: bool, markdown: bool
) -> int:
    records = load_labelled_v2(path) if path is not None else load_labelled_v3()
    records = [r for r in records if r.split in splits]  # a model judge reads only what is measured
    if any(getattr(j, "reads_prompt", False) for j in judges):
        records = with_prompts(records)  # a missing prompt package is a JudgeError: exit 2
    else:
        try:
            records = with_prompts(records)
        except JudgeError as e:  # these judges do not read the prompt: measure without it
            print(
                f"note: prompts not filled in ({e}); the judges measured here do not read them",
                file=sys.stderr,
            )
    where = path or f"v3 (dev: all of {LABELLED_SET_V2_FILE}; test: {LABELLED_SET_V3_TEST_FILE})"
    counts = Counter((r.split, r.label) for r in records)
    for split in splits:
        per = ", ".join(f"{a} {counts[split, a]}" for a in LABELS)
        print(
            f"labelled set {where}, {split} split: {sum(counts[split, a] for a in LABELS)} distinct texts ({per})"
        )
    print()
    rows: list[tuple[str, str, JudgeScores]] = []
    for judge in judges:
        judged = judge.label_many([r.prompt or "" for r in records], [r.completion for r in records])
        for split in splits:
            subset = [(r, j) for r, j in zip(records, judged, strict=True) if r.split == split]
            if not subset:
                continue
            recs, labels = [r for r, _ in subset], [j for _, j in subset]
            scores = score_labels(judge.name, recs, labels)
            print(f"[{split}] " + scores.table())
            rows.append((judge.name, split, scores))
            for title, part in breakdown(judge.name, recs, labels, _GROUPS).items():
                print(f"[{split}, {title}] " + part.table())
                rows.append((judge.name, f"{split}, {title}", part))
            if errors and scores.errors:
                _print_errors(scores, recs)
            print()
    if markdown:
        print(_markdown(rows))
    return 0


def _evaluate_v1(judges: Sequence[Judge], path: str, *, errors: bool) -> int:
    records = load_labelled(path)
    _, held_out = split_by_prompt(records)
    counts = Counter(r.label for r in records)
    print(f"labelled set (v1): {len(records)} completions ({', '.join(f'{k} {counts[k]}' for k in LABELS)})")
    print(f"held-out half (split_by_prompt): {len(held_out)} completions\n")
    for judge in judges:
        trained = isinstance(judge, EmbeddingJudge)  # its head was fitted on the other half
        for title, subset in (
            ("held-out half", held_out),
            ("all, including the head's training half" if trained else "all", records),
        ):
            judged = judge.label_many([r.prompt or "" for r in subset], [r.completion for r in subset])
            scores = score_labels(judge.name, subset, judged)
            print(f"[{title}] " + scores.table())
            if errors and scores.errors:
                _print_errors(scores, subset)
            print()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvsafety_tests.judge",
        description="Measure refusal judges on the labelled set (v3: dev and the frozen test split).",
    )
    parser.add_argument("--evaluate", action="store_true", help="print accuracy tables (the default action)")
    parser.add_argument(
        "--judge",
        action="append",
        default=None,
        help=f"judge(s) to measure (repeatable); default: {', '.join(JUDGE_NAMES)} where installed",
    )
    parser.add_argument(
        "--labelled",
        default=None,
        help="labelled JSONL (default: the shipped set v3, dev = all of "
        f"{LABELLED_SET_V2_FILE}, test = {LABELLED_SET_V3_TEST_FILE}); a v2-format file is measured by its "
        "own splits; a v1-format file (the old fixtures/judge_labelled.jsonl) by its held-out half and in full",
    )
    parser.add_argument(
        "--split",
        choices=(*LABELLED_SPLITS, "both"),
        default="both",
        help="which split of a v2 set to measure (default: both, shown separately)",
    )
    parser.add_argument(
        "--errors", action="store_true", help="list each misjudged text, and the errors by kind"
    )
    parser.add_argument(
        "--markdown", action="store_true", help="also print the figures as one markdown table"
    )
    parser.add_argument(
        "--train-head",
        metavar="OUT",
        default=None,
        help=f"train the {EmbeddingJudge.name} head on the v1 set's train half and write it to OUT",
    )
    parser.add_argument(
        "--train-probe",
        metavar="OUT",
        default=None,
        help=f"train the {PROBE_JUDGE} head on the v3 set's dev split (all of v2) and write it to OUT",
    )
    parser.add_argument(
        "--train-cascade",
        metavar="OUT",
        default=None,
        help=f"train the {CASCADE_JUDGE} head on the v2 set's dev split and write it to OUT",
    )
    args = parser.parse_args(argv)
    try:
        if args.train_head:
            train, _ = split_by_prompt(load_labelled(args.labelled if not _is_v2(args.labelled) else None))
            head = train_embedding_head(train)
            Path(args.train_head).write_text(json.dumps(head) + "\n", encoding="utf-8")
            print(f"wrote {args.train_head}: l2 {head['l2']}, cv accuracy {head['cv_accuracy']}")
            return 0
        if args.train_probe:
            head = train_probe_head(with_prompts(load_labelled_v3(split="dev")))
            Path(args.train_probe).write_text(json.dumps(head) + "\n", encoding="utf-8")
            print(
                f"wrote {args.train_probe}: layer {head['layer']}, l2 {head['l2']}, cv accuracy {head['cv_accuracy']}"
            )
            return 0
        if args.train_cascade:
            dev = with_prompts(load_labelled_v2(args.labelled, split="dev"))
            head = train_cascade_head(dev)
            Path(args.train_cascade).write_text(json.dumps(head) + "\n", encoding="utf-8")
            print(
                f"wrote {args.train_cascade}: {head['trained_on']}; l2 {head['l2']}, cv accuracy {head['cv_accuracy']}"
            )
            return 0
        names = args.judge or [
            n for n in JUDGE_NAMES if n not in _NEEDS_MINILM or importlib.util.find_spec(EMBEDDING_MODULE)
        ]
        judges = [load_judge(n) for n in names]
        if _is_v2(args.labelled):
            splits = LABELLED_SPLITS if args.split == "both" else (args.split,)
            return _evaluate_v2(judges, args.labelled, splits, errors=args.errors, markdown=args.markdown)
        return _evaluate_v1(judges, args.labelled, errors=args.errors)
    except JudgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
