"""True KV bytes per token of each quantizer, counted from the stored tensors of a real stream.

    python benchmarks/kv_bytes_table.py [--tokens 1024] [--head-dim 64] [--kv-heads 2]

Streams random bf16 K/V (the bytes do not depend on the values) through QuantizedStream with each
spec's flush window, and prints bytes per token and the ratio to the bf16 cache, per tensor
(keys and values of one layer; every layer of a model is the same).
"""

from __future__ import annotations

import argparse

import torch

from kvsafety_tests.kernels import QuantizedStream
from kvsafety_tests.spec import parse_spec

SPECS = [
    "none",
    "int8",
    "int4",
    "int4-g64",
    "int4-sym-g64",
    "int3",
    "int2",
    "int2-channel",
    "kivi4",
    "kivi2",
    "fp8_e4m3",
    "fp8_e5m2",
    "int4-out2",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--kv-heads", type=int, default=2)
    args = p.parse_args()
    x = torch.randn(1, args.kv_heads, args.tokens, args.head_dim).to(torch.bfloat16)
    full = 2 * x.numel() * 2  # keys + values in bf16
    print(f"{args.tokens} tokens, {args.kv_heads} KV heads, head_dim {args.head_dim}")
    print("| spec | bytes/token (K+V, one layer) | ratio to bf16 |")
    print("| --- | --- | --- |")
    for text in SPECS:
        spec = parse_spec(text)
        total = 0
        for scheme in (spec.kv.key, spec.kv.value):
            stream = QuantizedStream(scheme, spec.window(0))
            stream.append(x)
            total += stream.nbytes
        print(f"| `{text}` | {total / args.tokens:.1f} | {total / full:.4f} |")


if __name__ == "__main__":
    main()
