"""The ``kernels`` setting inside a real audit, side by side in one process.

Runs the same small audit once per implementation (torch, compiled twice: the first pays inductor's
compilation, the second finds it cached; triton too on CUDA), prints each one's seconds over its
quantized runs (model loading and the fp arm excluded: ``RunEntry.seconds``) and the ratio to the
torch reference, and checks that the reports agree field by field.

    OMP_NUM_THREADS=2 python benchmarks/kernels_in_audit.py --limit 8 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from kvsafety_tests.engine import AuditSettings, run_audit
from kvsafety_tests.report import run_to_dict


def audit(args: argparse.Namespace, kernels: str) -> tuple[float, float, list[dict[str, Any]]]:
    settings = AuditSettings(
        model=args.model,
        quantizers=tuple(args.quantizer),
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        noise_floor=False,
        baseline_cache=False,
        kernels=kernels,
    )
    start = time.perf_counter()
    runs = [run_to_dict(r) for r in run_audit(settings, log=lambda _: None).runs]
    return sum(r["seconds"] for r in runs), time.perf_counter() - start, runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--quantizer", action="append", default=None)
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.quantizer = args.quantizer or ["int4", "int8-g32"]
    order = ["torch", "compiled", "compiled"] if args.device == "cpu" else ["torch", "triton", "triton"]
    results = [(k, *audit(args, k)) for k in order]
    reference = results[0][3]
    print(f"{args.model}, {', '.join(args.quantizer)}, limit {args.limit}, {args.max_new_tokens} new tokens")
    print("| kernels | pass | seconds in quantized runs | ratio to torch | audit wall s | report equal |")
    print("| --- | --- | --- | --- | --- | --- |")
    seen: set[str] = set()
    for kernels, run_s, wall_s, runs in results:
        nth = "second (cached)" if kernels in seen else "first"
        seen.add(kernels)
        equal = all(
            {k: v for k, v in a.items() if k not in ("seconds", "kernels")}
            == {k: v for k, v in b.items() if k not in ("seconds", "kernels")}
            for a, b in zip(runs, reference, strict=True)
        )
        print(f"| {kernels} | {nth} | {run_s:.2f} | {run_s / results[0][1]:.2f} | {wall_s:.1f} | {equal} |")


if __name__ == "__main__":
    main()
