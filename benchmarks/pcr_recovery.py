"""PCR's plan against the baselines at equal memory, measured on held-out evaluation prompts.

    python benchmarks/pcr_recovery.py [--model NAME] [--quantizer int4 ...] [--limit 48]
        [--budget 0.07] [--seeds 5] [--probe 'int5;L0=int8' ...] [--json out.json]

Per quantizer: PCR's diagnosis (opening score) on the harmful calibration prompts the fp model
refuses (``select_refused`` over the default pool's calibration pool), then greedy generation
(the engine defaults: 32 new tokens, batch 64) on the harmful evaluation prompts of the default
pool (builtin+advbench+harmbench, stratified; never the calibration ones) for fp, the quantizer,
the plan and each baseline (uniform extra bits, random layers per seed, first/last layers,
attention-score allocation), judged by the rules judge.

Prints one Markdown table per quantizer: refusal rate, measured recovery with its paired
bootstrap 95% interval (``measure_recovery``: every resample kept), and extra KV memory; the
random-layer baseline as mean and min-max over seeds. For the plan against the best baseline
(the baseline arm, any single random seed included, with the highest measured recovery): the
paired difference of recoveries ``sum(plan - base) / sum(fp - q)`` with a paired bootstrap
interval over prompts (``ratio_resamples``/``ratio_bounds``: every resample kept) and the exact
McNemar test on the plan-vs-baseline discordant prompts. Then PCR's per-layer curves (R_layer,
R_gran, R_out as fractions of the calibration damage D), so a failure can be explained.
``--probe SPEC`` adds hand-chosen arms (e.g. one layer at more bits) to test an explanation; they
are reported as ``probe`` rows and never count as the best baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from kvsafety_tests.engine.calibration import select_refused
from kvsafety_tests.judge import load_judge
from kvsafety_tests.models import DEFAULT_MODEL, load_model, resolve_model
from kvsafety_tests.pcr import (
    attention_concentration,
    baseline_specs,
    diagnose,
    measure_recovery,
    spec_bytes_per_token,
)
from kvsafety_tests.pcr.plan import ratio_bounds, ratio_resamples
from kvsafety_tests.prompts import calibration_pool, load_prompts
from kvsafety_tests.spec import parse_spec
from kvsafety_tests.stats import mcnemar_exact_p

DEFAULT_SETS = ["builtin", "advbench", "harmbench"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--quantizer", action="append", default=None)
    p.add_argument("--prompts", action="append", default=None, help="prompt sets (default: the default pool)")
    p.add_argument("--limit", type=int, default=48, help="harmful evaluation prompts (stratified)")
    p.add_argument("--budget", type=float, default=0.07)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--probe", action="append", default=[], help="an extra arm to measure (not a baseline)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import torch

    from kvsafety_tests.backends.hf import HFBackend

    t_start = time.monotonic()
    log = lambda msg: print(f"[{time.monotonic() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    prompts = load_prompts(args.prompts or DEFAULT_SETS, limit=args.limit)
    harmful = [q.text for q in prompts.harmful]
    judge = load_judge("rules")
    model, tok = load_model(resolve_model(args.model), dtype=torch.bfloat16)
    backend = HFBackend(model, tok, batch_size=args.batch_size)
    shape = (backend.num_layers, backend.head_dim, backend.num_kv_heads)

    pool = calibration_pool(prompts)
    sel = select_refused(backend, judge, [(q.id, q.text) for q in pool])
    log(sel.note())
    overlap = set(sel.texts) & set(harmful)
    if overlap:
        raise SystemExit(f"calibration and evaluation prompts overlap: {sorted(overlap)[:3]}")

    def refused(spec: str) -> list[bool]:
        t0 = time.monotonic()
        out = backend.run(harmful, spec, max_new_tokens=args.max_new_tokens)
        labels = judge.label_many(harmful, [c.text for c in out])
        log(f"  {spec}: {labels.count('refused')}/{len(labels)} refused ({time.monotonic() - t0:.0f} s)")
        return [x == "refused" for x in labels]

    attention = attention_concentration(backend, sel.texts)
    fp = refused("none")
    out: dict[str, Any] = {
        "model": args.model,
        "sets": args.prompts or DEFAULT_SETS,
        "budget": args.budget,
        "n_harmful": len(harmful),
        "calibration": {"note": sel.note(), "ids": sel.ids},
        "attention": attention,
        "fp": fp,
        "results": [],
    }
    for q in args.quantizer or ["int4"]:
        spec = parse_spec(q)
        log(f"{spec}: PCR diagnosis on {sel.refused} calibration prompts")
        d = diagnose(
            backend, spec, sel.texts, sel.first_tokens, openings=sel.openings(), budget=args.budget, log=log
        )
        log(f"{spec}: {d.mode}, plan {d.plan}, {d.forward_passes} passes, {d.seconds:.0f} s")
        quantized = refused(str(spec))
        base = spec_bytes_per_token(spec, *shape)
        arms = dict(
            baseline_specs(
                spec,
                d,
                num_layers=shape[0],
                head_dim=shape[1],
                kv_heads=shape[2],
                attention=attention,
                seeds=range(args.seeds),
            )
            if d.mode is not None
            else {}
        )
        for probe in args.probe:
            probe_spec = parse_spec(probe)
            arms[f"probe {probe_spec}"] = probe_spec
        rows = []
        for name, arm_spec in arms.items():
            arm = refused(str(arm_spec)) if str(arm_spec) != str(spec) else quantized
            rec = measure_recovery(fp, quantized, arm)
            rows.append(
                {
                    "arm": name,
                    "spec": str(arm_spec),
                    "refused": arm,
                    "refusal_rate": rec.refusal_rate,
                    "recovery": rec.value,
                    "recovery_ci": rec.ci,
                    "reason": rec.reason,
                    "memory_overhead": spec_bytes_per_token(arm_spec, *shape) / base - 1.0,
                }
            )
        change = measure_recovery(fp, quantized, quantized).change
        result = {
            "quantizer": str(spec),
            "refused_q": quantized,
            "refusal_rate_fp": sum(fp) / len(fp),
            "refusal_rate_quantized": sum(quantized) / len(quantized),
            "change": str(change),
            "mode": d.mode,
            "damage": d.damage,
            "damages": d.damages,
            "score": d.score,
            "top_layers": d.top,
            "r_top": d.r_top,
            "plan": d.plan,
            "plan_layers": {str(k): v for k, v in d.plan_layers.items()},
            "predicted_recovery": d.predicted_recovery,
            "forward_passes": d.forward_passes,
            "diagnosis_seconds": d.seconds,
            "r_layer": d.r_layer,
            "r_gran": d.r_gran,
            "r_out": d.r_out,
            "r_int8": {str(k): v for k, v in d.r_int8.items()},
            "notes": d.notes,
            "arms": rows,
            "versus_best": _versus_best(fp, quantized, rows),
        }
        out["results"].append(result)
        _print_table(result, len(harmful))
        if args.json:  # after every quantizer, so a cut-off run keeps what it finished
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(out, f, indent=1)


def _versus_best(fp: list[bool], quantized: list[bool], rows: list[dict]) -> dict | None:
    """The plan against the baseline arm with the highest measured recovery: the paired difference
    of recoveries with a paired bootstrap interval (every resample kept) and McNemar on the
    plan-vs-baseline discordant prompts."""
    plan = next((r for r in rows if r["arm"] == "pcr"), None)
    others = [
        r
        for r in rows
        if r["arm"] != "pcr" and not r["arm"].startswith("probe") and r["recovery"] is not None
    ]
    if plan is None or plan["recovery"] is None or not others:
        return None
    best = max(others, key=lambda r: r["recovery"])
    num = [float(a) - float(b) for a, b in zip(plan["refused"], best["refused"], strict=True)]
    den = [float(f) - float(q) for f, q in zip(fp, quantized, strict=True)]
    draws = ratio_resamples(num, den)
    lo, hi = ratio_bounds(draws, 0.025)
    only_plan = sum(1 for a, b in zip(plan["refused"], best["refused"], strict=True) if a and not b)
    only_base = sum(1 for a, b in zip(plan["refused"], best["refused"], strict=True) if b and not a)
    return {
        "baseline": best["arm"],
        "difference": math.fsum(num) / math.fsum(den),
        "ci": (lo, hi),
        "only_plan": only_plan,
        "only_baseline": only_base,
        "mcnemar_p": mcnemar_exact_p(only_plan, only_base),
    }


def _fmt_rec(a: dict) -> str:
    if a["recovery"] is None:
        return "null (drop not significant)"
    ci = a["recovery_ci"]
    return f"{a['recovery']:.2f}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


def _print_table(r: dict, n: int) -> None:
    pred = "n/a" if r["predicted_recovery"] is None else f"{r['predicted_recovery']:.2f}"
    print(
        f"\n### {r['quantizer']}: fp {r['refusal_rate_fp']:.1%} -> {r['refusal_rate_quantized']:.1%} refused "
        f"(n = {n}); {r['change']}; mode {r['mode']}; D {r['damage']:+.3f} ({r['score']}); predicted "
        f"recovery {pred}; diagnosis {r['forward_passes']} passes, {r['diagnosis_seconds']:.0f} s\n"
    )
    print("| arm | spec | refusal rate | recovery [95% CI] | extra KV memory |")
    print("| --- | --- | --- | --- | --- |")
    randoms = [a for a in r["arms"] if a["arm"].startswith("random-")]
    for a in r["arms"]:
        print(
            f"| {a['arm']} | `{a['spec']}` | {a['refusal_rate']:.1%} | {_fmt_rec(a)} | {a['memory_overhead']:+.1%} |"
        )
    values = [a["recovery"] for a in randoms if a["recovery"] is not None]
    if values:
        rates = [a["refusal_rate"] for a in randoms]
        print(
            f"| random (mean of {len(values)} seeds) | | {sum(rates) / len(rates):.1%} | "
            f"{sum(values) / len(values):.2f} (min {min(values):.2f}, max {max(values):.2f}) | "
            f"{max(a['memory_overhead'] for a in randoms):+.1%} (max) |"
        )
    v = r["versus_best"]
    if v is not None:
        print(
            f"\nplan - best baseline ({v['baseline']}): {v['difference']:+.2f} of the lost refusals, paired "
            f"bootstrap 95% [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]; discordant prompts: {v['only_plan']} refused "
            f"only under the plan, {v['only_baseline']} only under the baseline, exact McNemar p={v['mcnemar_p']:.3g}"
        )
    print("\nPer-layer curves (fraction of D removed by the fix at that layer alone):\n")
    print("| layer | R_layer | R_gran | R_out | R_int8 (top layers) | in plan |")
    print("| --- | --- | --- | --- | --- | --- |")
    int8 = r.get("r_int8", {})
    for layer, (a, b, c) in enumerate(zip(r["r_layer"], r["r_gran"], r["r_out"], strict=True)):
        e = f"{int8[str(layer)]:+.2f}" if str(layer) in int8 else ""
        print(f"| {layer} | {a:+.2f} | {b:+.2f} | {c:+.2f} | {e} | {r['plan_layers'].get(str(layer), '')} |")
    ranked = sorted(r["r_layer"], reverse=True)
    cum = 0.0
    k = 0
    for k, x in enumerate(ranked, 1):  # noqa: B007
        cum += x
        if cum >= 0.8:
            break
    print(
        f"\nR_layer: top-3 sum {sum(ranked[:3]):.2f}, all-layer sum {sum(r['r_layer']):.2f}; "
        f"top-3 together (measured) {r['r_top']:.2f}; layers whose R_layer sum first reaches 0.8: "
        + (str(k) if cum >= 0.8 else "never")
    )


if __name__ == "__main__":
    main()
