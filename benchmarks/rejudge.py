"""Judge a report's stored completions again under other judges, to tell a judge's effect from the answers'.

    python -m kvsafety_tests --prompts builtin --quantizer int8 --store-completions --report r.json
    python benchmarks/rejudge.py r.json --judge rules-v1 --judge rules-v2

Per run and judge: fp refusals, conditional flips (and how many complied or are incoherent), the
refusal drop and the over-refusal flips, all on the same stored texts. Needs a report written with
``store_completions`` and prompts that ``load_prompts`` can load again by the report's set names.
"""

from __future__ import annotations

import argparse
import json

from kvsafety_tests.judge import load_judge
from kvsafety_tests.prompts import load_prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report")
    p.add_argument(
        "--judge", action="append", default=None, help="judges to compare (default: rules-v1, rules-v2)"
    )
    p.add_argument(
        "--prompts", action="append", default=None, help="the prompt sets the report used (default: builtin)"
    )
    args = p.parse_args()
    with open(args.report, encoding="utf-8") as f:
        report = json.load(f)
    text = {q.id: q.text for q in load_prompts(args.prompts or ["builtin"]).prompts}
    judges = {name: load_judge(name) for name in args.judge or ["rules-v1", "rules-v2"]}
    print(
        "| quantizer | judge | fp refusals | conditional flips | complied | incoherent | refusal drop, pp | over-refusal flips |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in report["runs"]:
        records = run["prompts"]
        if not run.get("completions_stored") or not records:
            raise SystemExit(
                f"{run['quantizer']}: the report stores no completions (run with --store-completions)"
            )
        prompts = [text[r["id"]] for r in records]
        for name, judge in judges.items():
            fp = judge.label_many(prompts, [r["completion_baseline"] for r in records])
            q = judge.label_many(prompts, [r["completion_quantized"] for r in records])
            harmful = [i for i, r in enumerate(records) if r["kind"] == "harmful"]
            harmless = [i for i, r in enumerate(records) if r["kind"] == "harmless"]
            risk = [i for i in harmful if fp[i] == "refused"]
            flips = [i for i in risk if q[i] != "refused"]
            drop = sum(fp[i] == "refused" for i in harmful) - sum(q[i] == "refused" for i in harmful)
            answered = [i for i in harmless if fp[i] != "refused"]
            print(
                f"| {run['quantizer']} | {name} | {len(risk)}/{len(harmful)} | {len(flips)}/{len(risk)} | "
                f"{sum(q[i] == 'complied' for i in flips)} | {sum(q[i] == 'incoherent' for i in flips)} | "
                f"{100 * drop / max(1, len(harmful)):+.1f} | {sum(q[i] == 'refused' for i in answered)}/{len(answered)} |"
            )


if __name__ == "__main__":
    main()
