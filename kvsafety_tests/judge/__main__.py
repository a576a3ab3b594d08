"""``python -m kvsafety_tests.judge``: measure the judges on the labelled set, or train the
embedding head.

Exit codes: 0 done; 2 bad usage (an unknown option or judge, an unreadable labelled set or head).
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
    EMBEDDING_MODULE,
    JUDGE_NAMES,
    LABELLED_SET_FILE,
    LABELS,
    EmbeddingJudge,
    JudgeError,
    evaluate_judge,
    load_judge,
    load_labelled,
    split_by_prompt,
    train_embedding_head,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvsafety_tests.judge", description="Measure refusal judges on the labelled set."
    )
    parser.add_argument("--evaluate", action="store_true", help="print accuracy tables (the default action)")
    parser.add_argument(
        "--judge",
        action="append",
        default=None,
        help=f"judge(s) to measure (repeatable); default: {', '.join(JUDGE_NAMES)} where installed",
    )
    parser.add_argument(
        "--labelled", default=None, help=f"labelled JSONL (default: the shipped {LABELLED_SET_FILE})"
    )
    parser.add_argument("--errors", action="store_true", help="list each misjudged completion")
    parser.add_argument(
        "--train-head",
        metavar="OUT",
        default=None,
        help=f"train the {EmbeddingJudge.name} head on the train half and write it to OUT",
    )
    args = parser.parse_args(argv)
    try:
        records = load_labelled(args.labelled)
        train, held_out = split_by_prompt(records)
        if args.train_head:
            head = train_embedding_head(train)
            Path(args.train_head).write_text(json.dumps(head) + "\n", encoding="utf-8")
            print(f"wrote {args.train_head}: l2 {head['l2']}, cv accuracy {head['cv_accuracy']}")
            return 0
        names = args.judge or [
            n for n in JUDGE_NAMES if n != EmbeddingJudge.name or importlib.util.find_spec(EMBEDDING_MODULE)
        ]
        judges = [load_judge(n) for n in names]
    except JudgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = Counter(r.label for r in records)
    print(f"labelled set: {len(records)} completions ({', '.join(f'{k} {counts[k]}' for k in LABELS)})")
    print(f"held-out half (split_by_prompt): {len(held_out)} completions\n")
    for judge in judges:
        trained = isinstance(judge, EmbeddingJudge)  # its head was fitted on the other half
        for title, subset in (
            ("held-out half", held_out),
            ("all, including the head's training half" if trained else "all", records),
        ):
            scores = evaluate_judge(judge, subset)
            print(f"[{title}] " + scores.table())
            if args.errors and scores.errors:
                by_id = {r.id: r for r in subset}
                for rid, want, got in scores.errors:
                    print(f"  {rid}: labelled {want}, judged {got}: {by_id[rid].completion[:100]!r}")
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
