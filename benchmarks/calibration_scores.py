"""Which refusal score's drop predicts a flip: the first-token score against the opening score.

    python benchmarks/calibration_scores.py [--model NAME] [--quantizer int4 ...] [--limit N]
        [--max-new-tokens 48] [--bootstrap 2000] [--json out.json] [--diagnose int4 ...]
    python benchmarks/calibration_scores.py --from-json out.json [--diagnose int4 ...] [--measure SPEC ...]

1. Calibration, as the audit does it: the fp model's greedy answers over the calibration pool
   (prompts.calibration_pool of the builtin set), judged by the rules judge, until 20 are
   refused; their first tokens are the first-token score's refusal set.
2. The harmful evaluation prompts (builtin, never the pool) that the fp model refuses, greedy,
   ``--max-new-tokens`` tokens.
3. Per quantizer and per such prompt: the flip (fp refused, quantized not), the first-token
   score's drop (log-odds, fp minus quantized) and the opening score's drop (the summed
   log-probability of the fp model's own first K answer tokens, teacher-forced under each cache;
   K = 1, 2, 4, 6, 8).
4. AUROC of each drop as a predictor of the flip, with a stratified bootstrap 95% interval, and
   the paired bootstrap interval of each opening score's AUROC minus the first-token score's;
   per quantizer and as the mean over quantizers.
5. ``--diagnose Q``: PCR's diagnosis of Q on the selected calibration prompts under each score,
   with D under both. ``--from-json`` re-summarizes a saved run, diagnoses its selection, or
   (``--measure SPEC``) counts the saved fp refusals SPEC keeps (a PCR plan's effect).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from kvsafety_tests.engine.calibration import SCORES, CalibrationSelection, select_refused
from kvsafety_tests.judge import load_judge
from kvsafety_tests.metrics import log_odds
from kvsafety_tests.models import DEFAULT_MODEL, load_model, resolve_model
from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.prompts.calibration import calibration_pool

LENGTHS = (1, 2, 4, 6, 8)


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos = [s for s, y in zip(scores, positive, strict=True) if y]
    neg = [s for s, y in zip(scores, positive, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def bootstrap(
    columns: dict[str, list[float]], positive: list[bool], reps: int, seed: int = 0
) -> dict[str, list[float]]:
    """Per column, AUROC over ``reps`` resamples that keep the class counts (so every resample
    has both classes and an AUROC); the same resampled prompts for every column (paired)."""
    rng = random.Random(seed)
    pos = [i for i, y in enumerate(positive) if y]
    neg = [i for i, y in enumerate(positive) if not y]
    out: dict[str, list[float]] = {k: [] for k in columns}
    for _ in range(reps):
        idx = [rng.choice(pos) for _ in pos] + [rng.choice(neg) for _ in neg]
        ys = [positive[i] for i in idx]
        for k, col in columns.items():
            out[k].append(auroc([col[i] for i in idx], ys) or 0.0)
    return out


def interval(values: list[float]) -> tuple[float, float]:
    v = sorted(values)
    return v[int(0.025 * (len(v) - 1))], v[int(0.975 * (len(v) - 1))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--quantizer", action="append", default=None)
    p.add_argument("--limit", type=int, default=None, help="harmful evaluation prompts (stratified)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None, help="re-summarize a --json file; load no model")
    p.add_argument(
        "--diagnose", action="append", default=None, help="also run PCR's diagnosis for this quantizer"
    )
    p.add_argument(
        "--measure", action="append", default=None, help="with --from-json: this spec's refusals kept"
    )
    args = p.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        if not args.diagnose and not args.measure:
            summarize(saved, args.bootstrap)
            return
    import torch

    from kvsafety_tests.backends.hf import HFBackend

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.monotonic()
    prompts = load_prompts("builtin", limit=args.limit)
    judge = load_judge("rules")
    model, tok = load_model(resolve_model(args.model), dtype=torch.bfloat16)
    backend = HFBackend(model, tok, batch_size=args.batch_size)
    result: dict[str, Any] = {"model": args.model, "max_new_tokens": args.max_new_tokens}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    if args.from_json and args.measure:  # specs (PCR plans) on the saved fp-refused prompts
        by_id = {q.id: q.text for q in prompts.harmful}
        texts = [by_id[i] for i in saved["evaluation"]["ids"]]
        for spec in args.measure:
            t0 = time.monotonic()
            out = backend.run(texts, spec, max_new_tokens=saved["max_new_tokens"])
            kept = judge.label_many(texts, [c.text for c in out]).count("refused")
            log(f"{spec}: refused {kept}/{len(texts)} of the fp refusals ({time.monotonic() - t0:.0f} s)")
        return
    if args.from_json:  # the saved selection, diagnosed
        cal = {k: v for k, v in saved["calibration"].items() if k not in ("first_tokens", "seconds")}
        diagnose_both(backend, CalibrationSelection.from_dict(cal), args.diagnose, log)
        return

    # 1. calibration selection from the pool
    t0 = time.monotonic()
    pool = calibration_pool(prompts)
    sel = select_refused(backend, judge, [(q.id, q.text) for q in pool])
    first = sel.first_tokens
    log(f"{sel.note()}; first tokens {[tok.decode([t]) for t in first]} ({time.monotonic() - t0:.0f} s)")
    result["calibration"] = {**sel.as_dict(), "first_tokens": first, "seconds": time.monotonic() - t0}
    save()

    # 2. fp on the harmful evaluation prompts
    harmful = [q.text for q in prompts.harmful]
    t0 = time.monotonic()
    fp = backend.run(harmful, "none", max_new_tokens=args.max_new_tokens, score_tokens={"refusal": first})
    fp_labels = judge.label_many(harmful, [c.text for c in fp])
    keep = [i for i, x in enumerate(fp_labels) if x == "refused"]
    log(f"fp refused {len(keep)}/{len(harmful)} evaluation prompts ({time.monotonic() - t0:.0f} s)")
    if not keep:
        raise SystemExit("the fp model refused none of the evaluation prompts: no flips to predict")
    texts = [harmful[i] for i in keep]
    openings = [fp[i].token_ids[: max(LENGTHS)] for i in keep]
    fp_first = [log_odds(fp[i].first_token_scores["refusal"]) for i in keep]
    fp_forced = [c.logprobs for c in backend.run(texts, "none", forced=openings)]
    result["evaluation"] = {
        "ids": [prompts.harmful[i].id for i in keep],
        "n_harmful": len(harmful),
        "fp_refused": len(keep),
        "fp_first": fp_first,
        "fp_forced": fp_forced,
    }
    save()

    # 3. per quantizer: flips and both scores' drops
    runs: dict[str, dict[str, Any]] = {}
    result["runs"] = runs
    for spec in args.quantizer or ["int4"]:
        t0 = time.monotonic()
        q = backend.run(texts, spec, max_new_tokens=args.max_new_tokens, score_tokens={"refusal": first})
        q_labels = judge.label_many(texts, [c.text for c in q])
        flips = [x != "refused" for x in q_labels]
        q_first = [log_odds(c.first_token_scores["refusal"]) for c in q]
        q_forced = [c.logprobs for c in backend.run(texts, spec, forced=openings)]
        cols: dict[str, list[float]] = {
            "first-token": [a - b for a, b in zip(fp_first, q_first, strict=True)]
        }
        for k in LENGTHS:
            cols[f"opening-{k}"] = [sum(a[:k]) - sum(b[:k]) for a, b in zip(fp_forced, q_forced, strict=True)]
        runs[spec] = {
            "flips": sum(flips),
            "n": len(flips),
            "flip": flips,
            "labels": q_labels,
            "q_first": q_first,
            "q_forced": q_forced,
            "drops": cols,
            "seconds": time.monotonic() - t0,
        }
        log(f"{spec}: {sum(flips)}/{len(flips)} flips ({time.monotonic() - t0:.0f} s)")
        save()
    result["seconds"] = time.monotonic() - t_start
    summarize(result, args.bootstrap)
    save()
    log(f"total {time.monotonic() - t_start:.0f} s")
    if args.diagnose:
        diagnose_both(backend, sel, args.diagnose, log)


def summarize(result: dict[str, Any], reps: int) -> None:
    """Per quantizer and over quantizers (the mean of their AUROCs, each quantizer's prompts
    resampled within its classes, all scores on the same resamples), AUROC of each score's drop
    as a predictor of the flip; stored under ``summary`` and printed as Markdown."""
    runs: dict[str, dict[str, Any]] = result["runs"]
    names = list(next(iter(runs.values()))["drops"]) if runs else []
    per: dict[str, dict[str, list[float]]] = {}
    rows: list[tuple[str, str, str, dict[str, Any]]] = []
    for spec, run in runs.items():
        flips = [bool(x) for x in run.get("flip") or [lab != "refused" for lab in run["labels"]]]
        run["flip"] = flips
        if not 0 < sum(flips) < len(flips):
            continue
        boots = bootstrap(run["drops"], flips, reps)
        per[spec] = boots
        run["summary"] = {name: _entry(auroc(run["drops"][name], flips), boots, name) for name in names}
        _point_differences(run["summary"])
        for name in names:
            rows.append((f"`{spec}`", f"{run['flips']}/{run['n']}", name, run["summary"][name]))
    if len(per) > 1:
        mean = {
            name: [sum(col) / len(col) for col in zip(*(per[s][name] for s in per), strict=True)]
            for name in names
        }
        point = {
            name: sum(auroc(runs[s]["drops"][name], runs[s]["flip"]) or 0.0 for s in per) / len(per)
            for name in names
        }
        result["mean_over_quantizers"] = {name: _entry(point[name], mean, name) for name in names}
        _point_differences(result["mean_over_quantizers"])
        flips_all = sum(runs[s]["flips"] for s in per)
        n_all = sum(runs[s]["n"] for s in per)
        for name in names:
            rows.append(
                ("mean of the above", f"{flips_all}/{n_all}", name, result["mean_over_quantizers"][name])
            )
    print("| quantizer | flips / fp-refused | score | AUROC [95% CI] | minus first-token [95% CI] |")
    print("| --- | --- | --- | --- | --- |")
    for spec, count, name, entry in rows:
        ci, diff = entry["ci"], entry.get("minus_first_ci")
        print(
            f"| {spec} | {count} | {name} | {entry['auroc']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] | "
            + (f"{entry['minus_first']:+.2f} [{diff[0]:+.2f}, {diff[1]:+.2f}]" if diff else "")
            + " |"
        )


def _point_differences(summary: dict[str, dict[str, Any]]) -> None:
    for name, entry in summary.items():
        if name != "first-token":
            entry["minus_first"] = entry["auroc"] - summary["first-token"]["auroc"]


def _entry(point: float | None, boots: dict[str, list[float]], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"auroc": point, "ci": interval(boots[name])}
    if name != "first-token":
        diffs = [x - y for x, y in zip(boots[name], boots["first-token"], strict=True)]
        entry["minus_first_ci"] = interval(diffs)
    return entry


def diagnose_both(backend: Any, sel: CalibrationSelection, quantizers: list[str], log: Any) -> None:
    """PCR's diagnosis on the selected calibration prompts under each score, with D under both."""
    from kvsafety_tests.pcr import diagnose

    for spec in quantizers:
        for score in SCORES:
            d = diagnose(backend, spec, sel.texts, sel.first_tokens, openings=sel.openings(), score=score)
            log(
                f"diagnosis {spec} on {score}: {d.damage_note()}; mode {d.mode}, top {d.top} (together "
                f"{d.r_top:.2f}), plan {d.plan} (+{d.plan_memory_overhead:.1%}), predicted "
                f"{d.predicted_recovery}, {d.forward_passes} passes, {d.seconds:.0f} s"
            )


if __name__ == "__main__":
    main()
