"""PCR's plan against the baselines at equal memory, measured on the evaluation prompts.

    python benchmarks/pcr_recovery.py [--model NAME] [--quantizer int4 ...] [--limit 48]
        [--budget 0.07] [--seeds 3] [--json out.json] [--diagnose-only]

Per quantizer: PCR's diagnosis on the harmful calibration prompts (timed, passes counted), then
greedy generation on the harmful evaluation prompts (never the calibration ones) for fp, the
quantizer, the plan and each baseline (uniform extra bits, random layers per seed, first/last
layers, attention-score allocation), judged by the rules judge. Prints one Markdown table per
quantizer: refusal rate, measured recovery with its paired-bootstrap 95% interval, and extra KV
memory. Recovery is null when the quantizer's drop is within noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvsafety_tests.engine import calibration_refusal_tokens, fallback_refusal_tokens
from kvsafety_tests.judge import load_judge
from kvsafety_tests.models import DEFAULT_MODEL, load_model, resolve_model
from kvsafety_tests.pcr import (
    attention_concentration,
    baseline_specs,
    diagnose,
    measure_recovery,
    spec_bytes_per_token,
)
from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.spec import parse_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--quantizer", action="append", default=None)
    p.add_argument("--prompts", default="builtin")
    p.add_argument("--limit", type=int, default=48, help="harmful evaluation prompts (stratified)")
    p.add_argument("--budget", type=float, default=0.07)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--diagnose-only", action="store_true", help="time PCR's diagnosis per quantizer; generate nothing"
    )
    args = p.parse_args()
    import torch

    from kvsafety_tests.backends.hf import HFBackend

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    prompts = load_prompts(args.prompts, limit=args.limit)
    harmful = [q.text for q in prompts.harmful]
    calibration = [q.text for q in prompts.calibration if q.label == "harmful"]
    judge = load_judge("rules")
    model, tok = load_model(resolve_model(args.model), dtype=torch.bfloat16)
    backend = HFBackend(model, tok, batch_size=args.batch_size)
    shape = (backend.num_layers, backend.head_dim, backend.num_kv_heads)

    def refused(spec: str) -> list[bool]:
        t0 = time.monotonic()
        out = backend.run(harmful, spec, max_new_tokens=args.max_new_tokens)
        labels = judge.label_many(harmful, [c.text for c in out])
        log(f"  {spec}: {labels.count('refused')}/{len(labels)} refused ({time.monotonic() - t0:.0f} s)")
        return [x == "refused" for x in labels]

    # the refusal tokens, as the audit finds them: first tokens of fp refusals on calibration
    tokens = calibration_refusal_tokens(backend, judge, calibration) or fallback_refusal_tokens(tok)
    if args.diagnose_only:
        for q in args.quantizer or ["int4"]:
            d = diagnose(backend, q, calibration, tokens, budget=args.budget)
            print(
                f"{d.quantizer}: diagnosis {d.seconds:.1f} s, {d.forward_passes} passes, mode {d.mode}, damage "
                f"{d.damage:+.3f}, top {d.top} (together {d.r_top:.2f}), plan {d.plan} "
                f"(+{d.plan_memory_overhead:.1%}), predicted recovery {d.predicted_recovery}"
            )
        return
    attention = attention_concentration(backend, calibration)
    fp = refused("none")
    results = []
    for q in args.quantizer or ["int4"]:
        spec = parse_spec(q)
        log(f"{spec}: PCR diagnosis")
        d = diagnose(backend, spec, calibration, tokens, budget=args.budget, log=log)
        log(f"{spec}: {d.mode}, plan {d.plan}, {d.forward_passes} passes, {d.seconds:.0f} s")
        quantized = refused(str(spec))
        base = spec_bytes_per_token(spec, *shape)
        rows = []
        arms = (
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
        for name, arm_spec in arms.items():
            arm = refused(str(arm_spec)) if str(arm_spec) != str(spec) else quantized
            rec = measure_recovery(fp, quantized, arm)
            rows.append(
                {
                    "arm": name,
                    "spec": str(arm_spec),
                    "refusal_rate": rec.refusal_rate,
                    "recovery": rec.value,
                    "recovery_ci": rec.ci,
                    "reason": rec.reason,
                    "memory_overhead": spec_bytes_per_token(arm_spec, *shape) / base - 1.0,
                }
            )
        results.append(
            {
                "quantizer": str(spec),
                "n_harmful": len(harmful),
                "refusal_rate_fp": sum(fp) / len(fp),
                "refusal_rate_quantized": sum(quantized) / len(quantized),
                "mode": d.mode,
                "damage": d.damage,
                "top_layers": d.top,
                "r_top": d.r_top,
                "plan": d.plan,
                "predicted_recovery": d.predicted_recovery,
                "forward_passes": d.forward_passes,
                "diagnosis_seconds": d.seconds,
                "r_layer": d.r_layer,
                "r_gran": d.r_gran,
                "r_out": d.r_out,
                "arms": rows,
            }
        )
        _print_table(results[-1])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"model": args.model, "budget": args.budget, "attention": attention, "results": results},
                f,
                indent=1,
            )


def _print_table(r: dict) -> None:
    print(
        f"\n### {r['quantizer']}: fp {r['refusal_rate_fp']:.1%} -> {r['refusal_rate_quantized']:.1%} refused "
        f"(n = {r['n_harmful']}); mode {r['mode']}; predicted recovery "
        + ("n/a" if r["predicted_recovery"] is None else f"{r['predicted_recovery']:.2f}")
        + f"; diagnosis {r['forward_passes']} passes, {r['diagnosis_seconds']:.0f} s\n"
    )
    print("| arm | spec | refusal rate | recovery [95% CI] | extra KV memory |")
    print("| --- | --- | --- | --- | --- |")
    for a in r["arms"]:
        if a["recovery"] is None:
            rec = "null (drop within noise)"
        else:
            ci = a["recovery_ci"]
            rec = f"{a['recovery']:.2f}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")
        print(
            f"| {a['arm']} | `{a['spec']}` | {a['refusal_rate']:.1%} | {rec} | {a['memory_overhead']:+.1%} |"
        )


if __name__ == "__main__":
    main()
