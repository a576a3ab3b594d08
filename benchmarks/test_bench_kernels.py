"""pytest-benchmark timings of the KV quantization kernels on a realistic cache shape.

Not part of the default test run (testpaths is tests/); run with

    pytest benchmarks/ --benchmark-only                    # [8, 8, 2048, 128] bf16, ~30 s on 2 cores
    KVSAFETY_BENCH_SHAPE=2,2,256,128 pytest benchmarks/ --benchmark-only   # small, ~15 s, for CI smoke runs

Shape: KVSAFETY_BENCH_SHAPE = "batch,kv_heads,tokens,head_dim" (default 8,8,2048,128; bf16).
Every benchmark records ``bytes_moved`` (input read + output written, stored form = codes +
scales + zero-points) and ``gb_per_s`` (from the mean time) in its extra_info, for comparison with
the copy. ``python benchmarks/kernel_bandwidth.py`` prints the same comparison as one interleaved table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from kvsafety_tests.kernels.api import dequantize, quantize
from kvsafety_tests.kernels.fused import dequantize_fused, quantize_fused
from kvsafety_tests.spec import Fp8Scheme, Granularity, IntScheme

DEFAULT_SHAPE = "8,8,2048,128"
INT8 = IntScheme(8, False, Granularity.TOKEN)
INT4 = IntScheme(4, False, Granularity.TOKEN)
FP8 = Fp8Scheme("e4m3")


def bench_shape() -> tuple[int, ...]:
    text = os.environ.get("KVSAFETY_BENCH_SHAPE", DEFAULT_SHAPE)
    try:
        dims = tuple(int(p) for p in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise pytest.UsageError(
            f"KVSAFETY_BENCH_SHAPE={text!r}: expected four positive integers batch,kv_heads,tokens,head_dim, "
            f"e.g. {DEFAULT_SHAPE}"
        )
    return dims


@pytest.fixture(scope="module")
def kv() -> torch.Tensor:
    """[batch, kv_heads, tokens, head_dim] bf16 K/V-like data."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(bench_shape(), generator=g).to(torch.bfloat16)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def run(benchmark: Any, fn: Callable[[], Any], bytes_moved: int) -> None:
    fn()  # warm-up outside the timing: compiles the fused graphs, faults in the allocator
    benchmark(fn)
    benchmark.extra_info["bytes_moved"] = bytes_moved
    mean = benchmark.stats.stats.mean if benchmark.stats is not None else None
    if mean:
        benchmark.extra_info["gb_per_s"] = round(bytes_moved / mean / 1e9, 3)


def test_copy(benchmark: Any, kv: torch.Tensor) -> None:
    """The yardstick: x.clone() reads and writes the input once."""
    run(benchmark, kv.clone, 2 * _nbytes(kv))


@pytest.mark.parametrize("scheme", [INT8, INT4], ids=str)
def test_reference_quantize(benchmark: Any, kv: torch.Tensor, scheme: IntScheme) -> None:
    q = quantize(kv, scheme, backend="torch")
    run(benchmark, lambda: quantize(kv, scheme, backend="torch"), _nbytes(kv) + q.nbytes)


@pytest.mark.parametrize("scheme", [INT8, INT4], ids=str)
def test_reference_dequantize(benchmark: Any, kv: torch.Tensor, scheme: IntScheme) -> None:
    q = quantize(kv, scheme, backend="torch")
    run(benchmark, lambda: dequantize(q, backend="torch"), q.nbytes + _nbytes(kv))


def test_fused_quantize_int8(benchmark: Any, kv: torch.Tensor) -> None:
    q = quantize_fused(kv, INT8)
    run(benchmark, lambda: quantize_fused(kv, INT8), _nbytes(kv) + q.nbytes)


def test_fused_dequantize_int8(benchmark: Any, kv: torch.Tensor) -> None:
    q = quantize_fused(kv, INT8)
    run(benchmark, lambda: dequantize_fused(q), q.nbytes + _nbytes(kv))


def test_fp8_quantize(benchmark: Any, kv: torch.Tensor) -> None:
    q = quantize(kv, FP8, backend="torch")
    run(benchmark, lambda: quantize(kv, FP8, backend="torch"), _nbytes(kv) + q.nbytes)


def test_fp8_dequantize(benchmark: Any, kv: torch.Tensor) -> None:
    q = quantize(kv, FP8, backend="torch")
    run(benchmark, lambda: dequantize(q, backend="torch"), q.nbytes + _nbytes(kv))
