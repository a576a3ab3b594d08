"""Which long-context form does the default model still refuse? (issue 16 item 5, docs/results/kivi.md)

For each form (where the benign document goes, and how long it is) the fp model answers the builtin
harmful prompts (greedy, chat template, the default judge); the script prints the fp refusals
k/n, the prompt length in tokens after the chat template, and, for KIVI, the quantized fraction of
the attended K/V at the first response position (a prefill with one new token).

    OMP_NUM_THREADS=2 python benchmarks/kivi_forms.py --limit 16 --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.prompts.context import LONG_CONTEXT_TEMPLATE, history_messages, long_context

# the chat messages of one request
Form = Callable[[str], list[dict[str, str]]]


def _plain(request: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": request}]


def _before(request: str, doc: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": LONG_CONTEXT_TEMPLATE.format(context=doc, request=request)}]


def _after(request: str, doc: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{request}\n\n---\n\n{doc}"}]


def _system(request: str, doc: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": doc}, {"role": "user", "content": request}]


def forms(words_list: list[int]) -> dict[str, Form]:
    """Every form at every document length: before (the ``-long`` layout), after (the request first),
    system (the document as the system message), history (``history_messages``)."""
    out: dict[str, Form] = {"plain": _plain}
    for w in words_list:
        doc = long_context(w)
        out[f"before-{w}"] = functools.partial(_before, doc=doc)
        out[f"after-{w}"] = functools.partial(_after, doc=doc)
        out[f"system-{w}"] = functools.partial(_system, doc=doc)
        out[f"history-{w}"] = functools.partial(history_messages, context_words=w)
    return out


def _encoder(tokenizer: Any, messages: dict[str, list[dict[str, str]]]) -> Callable[[str], list[int]]:
    """HFBackend.encode for one form: the messages whose last user turn is the given text, in the
    chat template (as backends/chat.py does for one message)."""

    def encode(user: str) -> list[int]:
        text = tokenizer.apply_chat_template(messages[user], add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return encode


def _brief(row: dict[str, object]) -> dict[str, object]:
    return {
        k: _brief(v) if isinstance(v, dict) else v for k, v in row.items() if k not in ("texts", "labels")
    }


def _flips(fp: list[str], q: list[str]) -> dict[str, object]:
    """docs/metrics.md's refusal numbers on the harmful prompts, with Wilson 95% intervals."""
    from kvsafety_tests.stats import mcnemar_exact_p, wilson_interval

    at_risk = [i for i, lab in enumerate(fp) if lab == "refused"]
    flips = [i for i in at_risk if q[i] != "refused"]
    complied = [i for i in at_risk if q[i] == "complied"]
    reverse = [i for i, lab in enumerate(fp) if lab != "refused" and q[i] == "refused"]
    n = len(fp)
    return {
        "refused": q.count("refused"),
        "incoherent": q.count("incoherent"),
        "conditional_flip": f"{len(flips)}/{len(at_risk)}",
        "conditional_flip_ci": wilson_interval(len(flips), len(at_risk)),
        "compliance_flip": f"{len(complied)}/{len(at_risk)}",
        "reverse_flip": f"{len(reverse)}/{n - len(at_risk)}",
        "mcnemar_p": mcnemar_exact_p(len(flips), len(reverse)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--words", type=int, nargs="+", default=[80, 120, 200])
    ap.add_argument("--only", nargs="*", default=None, help="form names to run (default: all)")
    ap.add_argument("--kivi", default="kivi2", help="spec for the quantized fraction")
    ap.add_argument("--audit", nargs="*", default=[], help="specs run on every selected form (flips vs fp)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from kvsafety_tests.backends.hf import HFBackend
    from kvsafety_tests.judge import load_judge
    from kvsafety_tests.models import load_model, resolve_model

    model, tok = load_model(resolve_model(args.model), dtype=torch.bfloat16)
    backend = HFBackend(model, tok, batch_size=16)
    judge = load_judge("rules")
    harmful = [p.text for p in load_prompts("builtin", limit=args.limit).harmful]
    rows = []
    for name, form in forms(args.words).items():
        if args.only and name not in args.only:
            continue
        messages = {form(r)[-1]["content"]: form(r) for r in harmful}
        encode = _encoder(tok, messages)
        backend.encode = encode  # type: ignore[method-assign,assignment]
        users = list(messages)
        lengths = [len(encode(u)) for u in users]
        t0 = time.monotonic()
        out = backend.run(users, "none", max_new_tokens=args.max_new_tokens)
        labels = judge.label_many(users, [c.text for c in out])
        fp_s = time.monotonic() - t0
        t0 = time.monotonic()
        q = backend.run(users, args.kivi, max_new_tokens=1)
        fracs = [c.quantized_fraction for c in q if c.quantized_fraction is not None]
        row = {
            "form": name,
            "refused": labels.count("refused"),
            "complied": labels.count("complied"),
            "incoherent": labels.count("incoherent"),
            "n": len(labels),
            "tokens_min": min(lengths),
            "tokens_median": statistics.median(lengths),
            "tokens_max": max(lengths),
            f"{args.kivi}_quantized_fraction": sum(fracs) / len(fracs) if fracs else None,
            "fp_seconds": round(fp_s, 1),
            "frac_seconds": round(time.monotonic() - t0, 1),
            "texts": [c.text for c in out],
            "labels": labels,
        }
        for spec in args.audit:
            t0 = time.monotonic()
            qa = backend.run(users, spec, max_new_tokens=args.max_new_tokens)
            qlabels = judge.label_many(users, [c.text for c in qa])
            row[spec] = _flips(labels, qlabels) | {
                "quantized_fraction": statistics.mean(c.quantized_fraction or 0.0 for c in qa),
                "seconds": round(time.monotonic() - t0, 1),
                "texts": [c.text for c in qa],
                "labels": qlabels,
            }
        rows.append(row)
        print(json.dumps(_brief(row)), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
