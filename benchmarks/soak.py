"""Soak: the CLI's audit engine (``run_audit``) N rounds in one process, watching time and memory.

    OMP_NUM_THREADS=2 python benchmarks/soak.py [--rounds 5] [--limit 24] [--quantizer int4 ...]

Each round is a whole audit as ``python -m kvsafety_tests`` runs it (model loaded, fp arm, noise
floor, perplexity, every quantizer), so anything an audit leaves behind (a model, a cache, a hook,
a tensor held by a closure) accumulates round after round. Printed per round: wall seconds, the
round's own peak RSS (Linux: VmHWM, reset through /proc/self/clear_refs before each round; where
that reset is not allowed, the peak so far, marked "so far"), the RSS now (``/proc/self/statm``,
after a ``gc.collect()``: memory still referenced) and its growth since the previous round. Round
1 pays for imports and lazy initialisation; a leak shows as growth that does not settle from
round 2 on.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time

from kvsafety_tests.engine import DEFAULT_QUANTIZERS, AuditSettings, run_audit
from kvsafety_tests.models import DEFAULT_MODEL
from kvsafety_tests.spec import SpecError, parse_spec

MIB = 2**20


def rss_now_mib() -> float:
    """Resident set size now (Linux: the second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def rss_peak_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) for this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_since_reset_mib() -> float:
    """VmHWM from /proc/self/status: the peak RSS since the last ``reset_peak`` (or since start)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return rss_peak_mib()


def _spec(text: str) -> str:
    try:
        return str(parse_spec(text))
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument(
        "--quantizer",
        action="append",
        type=_spec,
        help=f"repeatable (default: {' '.join(DEFAULT_QUANTIZERS)})",
    )
    p.add_argument("--prompts", default="builtin")
    p.add_argument("--limit", type=int, default=None, help="at most N harmful and N harmless prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--verbose", action="store_true", help="print the audit's progress lines")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds} must be >= 1")
    settings = AuditSettings(
        model=args.model,
        quantizers=tuple(args.quantizer or DEFAULT_QUANTIZERS),
        prompts=args.prompts,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
    )
    settings.validate()
    import torch

    print(
        f"{settings.model} ({settings.dtype}), quantizers {' '.join(settings.quantizers)}, "
        f"limit {settings.limit}, {settings.max_new_tokens} new tokens, {torch.get_num_threads()} threads"
    )
    print(f"start: rss {rss_now_mib():.0f} MiB, peak {rss_peak_mib():.0f} MiB")
    print(
        f"{'round':>5}  {'wall s':>7}  {'round peak MiB':>14}  {'rss MiB':>8}  {'growth MiB':>10}  verdicts"
    )
    log = print if args.verbose else (lambda message: None)
    rss: list[float] = []
    for i in range(1, args.rounds + 1):
        per_round = reset_peak()
        start = time.perf_counter()
        report = run_audit(settings, log=log)
        wall = time.perf_counter() - start
        verdicts = " ".join(f"{r.quantizer}={r.verdict}" for r in report.runs)
        del report
        gc.collect()
        rss.append(rss_now_mib())
        growth = f"{rss[-1] - rss[-2]:+10.1f}" if len(rss) > 1 else f"{'':>10}"
        peak = f"{peak_since_reset_mib():14.0f}" if per_round else f"{rss_peak_mib():6.0f} so far"
        print(f"{i:>5}  {wall:7.1f}  {peak}  {rss[-1]:8.0f}  {growth}  {verdicts}", flush=True)
    if len(rss) > 2:
        rate = (rss[-1] - rss[1]) / (len(rss) - 2)
        print(f"growth from round 2 to {len(rss)}: {rss[-1] - rss[1]:+.1f} MiB ({rate:+.1f} MiB/round)")


if __name__ == "__main__":
    main()
