"""Where an audit arm's time goes on this machine: the matrix-multiply ceiling, the batch size, a profile.

    OMP_NUM_THREADS=2 python benchmarks/where_time_goes.py [--model NAME] [--prompts 32] [--quantizer int8]

Three measurements, printed in order:
1. bf16 matrix multiplies of the model's MLP shape (rows x hidden by hidden x intermediate) at
   16 rows (a decode step at batch 16) and 2048 rows: the arithmetic ceiling of these cores.
2. Greedy generation of 2N builtin prompts (N harmful, N harmless), 64 new tokens, at batch 16 and
   batch 64, side by side: seconds, the speedup, and how many greedy outputs are identical (bf16
   float order depends on the batch's shape).
3. A cProfile of one batch of 16 at batch 16: the functions with the most time of their own.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

from kvsafety_tests.backends.hf import HFBackend
from kvsafety_tests.models import DEFAULT_MODEL, load_model, resolve_model
from kvsafety_tests.prompts import load_prompts


def gemm_gflops(rows: int, hidden: int, inter: int, seconds: float = 1.0) -> float:
    """bf16 [rows, hidden] @ [hidden, inter], repeated for ``seconds``: GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, hidden, generator=g).to(torch.bfloat16)
    w = torch.randn(inter, hidden, generator=g).to(torch.bfloat16)
    for _ in range(3):
        a @ w.T
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ w.T
        n += 1
    return 2 * rows * hidden * inter * n / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompts", type=int, default=32, help="N harmful and N harmless (default 32)")
    p.add_argument("--quantizer", default="int8")
    p.add_argument("--new-tokens", type=int, default=64)
    a = p.parse_args()
    model, tok = load_model(resolve_model(a.model), dtype=torch.bfloat16)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    print(f"{a.model}: {torch.get_num_threads()} threads, MLP {hidden} x {inter}")
    for rows in (16, 2048):
        print(f"  bf16 matmul, {rows} rows: {gemm_gflops(rows, hidden, inter):.0f} GFLOP/s")

    ps = load_prompts("builtin", limit=a.prompts)
    prompts = [x.text for x in (*ps.harmful, *ps.harmless)]
    hf = HFBackend(model, tok, batch_size=16)
    hf.run(prompts[:2], a.quantizer, max_new_tokens=2)  # warm up
    outputs: dict[int, list[list[int]]] = {}
    seconds: dict[int, float] = {}
    for batch in (16, 64):
        hf.batch_size = batch
        start = time.perf_counter()
        outputs[batch] = [c.token_ids for c in hf.run(prompts, a.quantizer, max_new_tokens=a.new_tokens)]
        seconds[batch] = time.perf_counter() - start
        print(f"  batch {batch}: {seconds[batch]:.1f} s for {len(prompts)} prompts x {a.new_tokens} tokens")
    same = sum(x == y for x, y in zip(outputs[16], outputs[64], strict=True))
    print(
        f"  batch 64 vs 16: {seconds[16] / seconds[64]:.2f}x faster, identical outputs {same}/{len(prompts)}"
    )

    hf.batch_size = 16
    profile = cProfile.Profile()
    profile.enable()
    hf.run(prompts[:16], a.quantizer, max_new_tokens=a.new_tokens)
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(8)
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"  profile of one batch of 16: {total:.1f} s")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()[:1].isdigit()))


if __name__ == "__main__":
    main()
