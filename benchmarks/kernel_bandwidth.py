"""Throughput of the KV quantization kernels next to a plain tensor copy, in one run.

    python benchmarks/kernel_bandwidth.py [--shape 8,8,2048,128] [--dtype bf16] [--repeats 5]
                                   [--device cpu|cuda] [--json PATH]

Paths: "reference" (the eager torch reference, api backend="torch"), "fused" (kernels/fused.py,
CPU only, INT token / group schemes) and, with --device cuda, "triton" (api backend="triton").
Schemes: int8 per token (asymmetric), int4 in groups of 64 (asymmetric), KIVI-style int2 keys per
channel in groups of 32 tokens, fp8 e4m3 (scale 1). Ops: quantize, dequantize, quantize+dequantize.

Method: every (path, scheme, op) and the copy run once to warm up (this compiles the fused
graphs), then ``--repeats`` rounds that each time every entry once, in the same order
(interleaved, so drift and background load hit all entries alike); the table shows the median.
Thread count: whatever torch was given by the environment (OMP_NUM_THREADS etc.), printed.

Bytes moved = bytes read + bytes written, by the tensors the op takes and returns:
copy = input + output; quantize = input + stored form (codes + scales + zero-points);
dequantize = stored form + output; quantize+dequantize = the sum of the two. Temporaries are not
counted (the eager reference writes many; that is what makes it slow).
GB/s = bytes moved / median time. Ratios compare with the copy (x.clone(), which allocates its
output like every op here does):
  bw ratio   = (bytes moved per second by the op) / (bytes moved per second by the copy)
  time ratio = copy time / op time (how many copies fit in the time of one op, inverted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kvsafety_tests.spec import Fp8Scheme, Granularity, IntScheme

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEVICES = ("cpu", "cuda")
OPS = ("quantize", "dequantize", "quantize+dequantize")
SCHEMES: dict[str, IntScheme | Fp8Scheme] = {
    "int8-token": IntScheme(8, False, Granularity.TOKEN),
    "int4-g64": IntScheme(4, False, Granularity.GROUP, 64),
    "int2-channel-t32 (kivi keys)": IntScheme(2, False, Granularity.CHANNEL, 32),
    "fp8_e4m3": Fp8Scheme("e4m3"),
}


@dataclass
class Entry:
    path: str
    scheme: str
    op: str
    fn: Callable[[], Any] = field(repr=False)
    bytes_moved: int
    times: list[float] = field(default_factory=list, repr=False)
    faults: list[int] = field(default_factory=list, repr=False)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected four positive integers batch,kv_heads,tokens,head_dim, e.g. 8,8,2048,128"
        )
    return dims


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/kernel_bandwidth.py",
        description="Time KV quantization kernels against a plain tensor copy (see the module docstring).",
    )
    p.add_argument("--shape", type=_shape, default=(8, 8, 2048, 128), help="batch,kv_heads,tokens,head_dim")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="K/V dtype")
    p.add_argument("--repeats", type=_positive, default=5, help="timed rounds; the median is reported")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (valid choices here: cpu)")
    if args.shape[2] % 32:
        p.error(f"--shape: tokens ({args.shape[2]}) must be a multiple of 32 for the per-channel scheme")
    if args.shape[3] % 64:
        p.error(f"--shape: head_dim ({args.shape[3]}) must be a multiple of 64 for the g64 scheme")
    return args


def _stored_bytes(q: Any) -> int:
    return int(q.nbytes)


def _build(x: torch.Tensor, device: str) -> tuple[list[Entry], list[str]]:
    """The entries to time (copy first) and the reasons for paths left out."""
    from kvsafety_tests.kernels import api
    from kvsafety_tests.kernels.fused import dequantize_fused, fused_supports, quantize_fused

    x_bytes = x.numel() * x.element_size()
    entries = [Entry("copy", "-", "x.clone()", lambda: x.clone(), 2 * x_bytes)]
    skipped: list[str] = []
    buf = torch.empty_like(x)
    entries.append(Entry("(info) copy_", "-", "into preallocated", lambda: buf.copy_(x), 2 * x_bytes))

    paths: dict[str, tuple[Callable[..., Any], Callable[..., Any]] | None] = {}
    paths["reference"] = (
        lambda t, s: api.quantize(t, s, backend="torch"),
        lambda q: api.dequantize(q, backend="torch"),
    )
    if device == "cpu":
        paths["fused"] = (quantize_fused, dequantize_fused)
        skipped.append("triton: --device cpu (the Triton backend is timed with --device cuda only)")
    else:
        skipped.append("fused: CPU-only path, not run with --device cuda")
        try:
            from kvsafety_tests.kernels import triton_kernels  # noqa: F401
        except Exception as e:  # ImportError, or the module failing to set itself up
            skipped.append(
                f"triton: cannot import kvsafety_tests.kernels.triton_kernels ({type(e).__name__}: {e})"
            )
        else:
            paths["triton"] = (
                lambda t, s: api.quantize(t, s, backend="triton"),
                lambda q: api.dequantize(q, backend="triton"),
            )

    for path, fns in paths.items():
        assert fns is not None
        quant, dequant = fns
        for name, scheme in SCHEMES.items():
            if path == "fused" and not fused_supports(scheme):
                skipped.append(f"fused {name}: not covered by the fused path (INT token / group only)")
                continue
            try:
                q = quant(x, scheme)  # warm-up and compile; also gives the stored size
                dequant(q)
            except Exception as e:
                skipped.append(f"{path} {name}: {type(e).__name__}: {e}")
                continue
            qb = _stored_bytes(q)
            q_fn, dq_fn, qdq_fn = _ops(quant, dequant, x, scheme, q)
            entries += [
                Entry(path, name, "quantize", q_fn, x_bytes + qb),
                Entry(path, name, "dequantize", dq_fn, qb + x_bytes),
                Entry(path, name, "quantize+dequantize", qdq_fn, 2 * (x_bytes + qb)),
            ]
    return entries, skipped


def _ops(
    quant: Callable[..., Any], dequant: Callable[..., Any], x: torch.Tensor, scheme: Any, q: Any
) -> tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]]:
    """quantize, dequantize and quantize+dequantize of x, as argument-free callables."""

    def q_fn() -> Any:
        return quant(x, scheme)

    def dq_fn() -> Any:
        return dequant(q)

    def qdq_fn() -> Any:
        return dequant(quant(x, scheme))

    return q_fn, dq_fn, qdq_fn


def _time_all(entries: list[Entry], repeats: int, device: str) -> None:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for e in entries:  # warm-up round (the fused graphs are compiled in _build already)
        e.fn()
    sync()
    for _ in range(repeats):
        for e in entries:
            sync()
            f0 = _minor_faults()
            t0 = time.perf_counter()
            e.fn()
            sync()
            e.times.append(time.perf_counter() - t0)
            e.faults.append(_minor_faults() - f0)


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where getrusage is unavailable)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def _rows(entries: list[Entry]) -> list[dict[str, Any]]:
    copy = entries[0]
    copy_t = statistics.median(copy.times)
    copy_bw = copy.bytes_moved / copy_t
    rows = []
    for e in entries:
        t = statistics.median(e.times)
        bw = e.bytes_moved / t
        rows.append(
            {
                "path": e.path,
                "scheme": e.scheme,
                "op": e.op,
                "median_ms": t * 1e3,
                "min_ms": min(e.times) * 1e3,
                "bytes_moved": e.bytes_moved,
                "gb_per_s": bw / 1e9,
                "bw_ratio_vs_copy": bw / copy_bw,
                "time_ratio_copy_over_op": copy_t / t,
                "page_faults": int(statistics.median(e.faults)),
            }
        )
    return rows


HEADER = """\
bytes moved = input read + output written (INT/FP8 stored form: codes + scales + zero-points)
GB/s        = bytes moved / median time (1 GB = 1e9 bytes)
bw ratio    = op GB/s / copy GB/s   (>= 0.5: the op moves its bytes at least half as fast as x.clone())
time ratio  = copy ms / op ms       (1.0: as fast as one x.clone() of the input)
faults      = minor page faults per call (median): first touches of freshly mapped output memory.
              glibc maps allocations above its mmap threshold (dynamic, at most 32 MiB) anew each
              time; each 4 KiB fault costs ~1-2 us on a VM, which can dominate a copy. "(info) copy_" copies
              into a preallocated buffer: pure memory bandwidth, no allocation.
"""


def _print_table(rows: list[dict[str, Any]], meta: dict[str, Any], skipped: list[str]) -> None:
    print(
        f"shape {meta['shape']} {meta['dtype']} on {meta['device']} ({meta['device_name']}), "
        f"torch {meta['torch']}, {meta['threads']} thread(s), median of {meta['repeats']} interleaved "
        "repeats after one warm-up"
    )
    print(f"input {meta['input_mb']:.1f} MB")
    print(HEADER)
    cols = ("path", "scheme", "op", "ms", "GB/s", "bw ratio", "time ratio", "faults")
    widths = (13, 28, 19, 9, 7, 8, 10, 7)
    print(
        "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for r in rows:
        cells = (
            r["path"],
            r["scheme"],
            r["op"],
            f"{r['median_ms']:.2f}",
            f"{r['gb_per_s']:.2f}",
            f"{r['bw_ratio_vs_copy']:.3f}",
            f"{r['time_ratio_copy_over_op']:.3f}",
            str(r["page_faults"]),
        )
        print(
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    for reason in skipped:
        print(f"skipped: {reason}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    torch.manual_seed(0)
    x = torch.randn(args.shape, dtype=torch.float32).to(DTYPES[args.dtype]).to(device)
    entries, skipped = _build(x, device)
    _time_all(entries, args.repeats, device)
    rows = _rows(entries)
    meta = {
        "shape": list(args.shape),
        "dtype": args.dtype,
        "device": device,
        "device_name": torch.cuda.get_device_name()
        if device == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "input_mb": x.numel() * x.element_size() / 1e6,
        "command": " ".join(
            [sys.executable, "benchmarks/kernel_bandwidth.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    _print_table(rows, meta, skipped)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows, "skipped": skipped}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
