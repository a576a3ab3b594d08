"""Decode speed of our quantized cache against transformers' QuantizedCache (quanto, INT4), one run.

    OMP_NUM_THREADS=2 python benchmarks/decode_vs_quanto.py [--prompts 8] [--new-tokens 64]

Same model, same long prompts (builtin-long: the request after ~400 words, so both caches really
quantize), greedy, one prompt at a time so both go through the same batch-1 path. Ours: kivi4
(keys per channel, values per token, 128-token full-precision window) and int4 per token; theirs:
QuantizedCache(backend="quanto", nbits=4, q_group_size=64, residual_length=128). Needs
optimum-quanto (its first use compiles a C++ extension, excluded from the timing by a warm-up).
Prints decode tokens per second of each and the ratios.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import QuantizedCache

from kvsafety_tests.backends.hf import HFBackend
from kvsafety_tests.models import DEFAULT_MODEL, load_model, resolve_model
from kvsafety_tests.prompts import load_prompts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args()
    model, tok = load_model(resolve_model(args.model))
    texts = [x.text for x in load_prompts("builtin-long").harmless[: args.prompts]]
    backend = HFBackend(model, tok, batch_size=1)

    def quanto_run(prompts: list[str]) -> int:
        n = 0
        for text in prompts:
            enc = tok.apply_chat_template(
                [{"role": "user", "content": text}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            cache = QuantizedCache(
                backend="quanto", config=model.config, nbits=4, q_group_size=64, residual_length=128
            )
            out = model.generate(
                **enc,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                past_key_values=cache,
            )
            n += out.shape[1] - enc["input_ids"].shape[1]
        return n

    quanto_run(texts[:1])  # warm-up: compiles quanto's extension
    results = {}
    for name, fn in [
        ("transformers QuantizedCache quanto int4", lambda: quanto_run(texts)),
        (
            "ours kivi4",
            lambda: sum(
                len(c.token_ids) for c in backend.run(texts, "kivi4", max_new_tokens=args.new_tokens)
            ),
        ),
        (
            "ours int4",
            lambda: sum(len(c.token_ids) for c in backend.run(texts, "int4", max_new_tokens=args.new_tokens)),
        ),
    ]:
        start = time.perf_counter()
        tokens = fn()
        results[name] = (tokens, time.perf_counter() - start)
    print(
        f"{args.model}, {len(texts)} builtin-long prompts, up to {args.new_tokens} new tokens, "
        f"batch 1, {torch.get_num_threads()} threads"
    )
    base = results["transformers QuantizedCache quanto int4"]
    for name, (tokens, seconds) in results.items():
        print(
            f"{name:42s} {tokens:5d} tokens {seconds:7.1f} s  {tokens / seconds:6.2f} tok/s  "
            f"ratio {tokens / seconds / (base[0] / base[1]):.2f}"
        )


if __name__ == "__main__":
    main()
