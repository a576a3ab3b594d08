"""Audit generation throughput against a naive loop, side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/audit_throughput.py [--prompts 8] [--new-tokens 256] [--spec int4]

Both arms produce greedy completions of the same builtin prompts (harmful and harmless, alternating)
with the same per-token INT quantization of the cache:
- naive: one prompt at a time through ``model.generate`` with a fake-quant DynamicCache (each new
  token's K/V replaced by dequant(quant(.)) on arrival, full-precision storage);
- audit: HFBackend (batched, left-padded, stops each sequence at EOS, QuantizedKVCache storing codes).
Prints prompt-completions per second of each and the ratio.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from kvsafety_tests.backends.hf import HFBackend
from kvsafety_tests.kernels import dequantize, quantize
from kvsafety_tests.models import DEFAULT_MODEL, load_model, resolve_model
from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.spec import IntScheme, parse_spec


class FakeQuantLayer(DynamicLayer):
    """DynamicLayer that stores dequant(quant(k)) of each token: same numbers, no codes kept."""

    scheme: IntScheme

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        k = dequantize(quantize(key_states, self.scheme))
        v = dequantize(quantize(value_states, self.scheme))
        return super().update(k, v, *args, **kwargs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--spec", default="int4", help="a per-token INT spec (token-local, window 1)")
    args = p.parse_args()
    spec = parse_spec(args.spec)
    scheme = spec.kv.key
    if not isinstance(scheme, IntScheme) or spec.window(0) != 1:
        raise SystemExit(f"--spec {args.spec}: needs a per-token INT spec such as int4")
    model, tok = load_model(resolve_model(args.model))
    ps = load_prompts("builtin")
    texts = [t.text for pair in zip(ps.harmful, ps.harmless, strict=False) for t in pair][: args.prompts]
    print(
        f"{args.model}, {len(texts)} prompts, {args.new_tokens} new tokens, {args.spec}, "
        f"{torch.get_num_threads()} threads"
    )

    start = time.perf_counter()
    naive_tokens = 0
    for text in texts:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        layers = []
        for _ in range(model.config.num_hidden_layers):
            layer = FakeQuantLayer()
            layer.scheme = scheme
            layers.append(layer)
        out = model.generate(
            **enc, max_new_tokens=args.new_tokens, do_sample=False, past_key_values=Cache(layers=layers)
        )
        naive_tokens += out.shape[1] - enc["input_ids"].shape[1]
    naive = time.perf_counter() - start

    backend = HFBackend(model, tok, batch_size=args.batch_size)
    start = time.perf_counter()
    res = backend.run(texts, spec, max_new_tokens=args.new_tokens)
    audit = time.perf_counter() - start
    audit_tokens = sum(len(c.token_ids) for c in res)

    print(f"naive loop : {naive:7.1f} s  {len(texts) / naive:.3f} completions/s  {naive_tokens} tokens")
    print(f"audit      : {audit:7.1f} s  {len(texts) / audit:.3f} completions/s  {audit_tokens} tokens")
    print(f"ratio (audit completions/s over naive): {naive / audit:.2f}x")


if __name__ == "__main__":
    main()
