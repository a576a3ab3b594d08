"""How many at-risk refusals each prompt source gives the default model (docs/results/default-pool.md).

The fp arm of the audit (unquantized cache, greedy, the settings' default max_new_tokens, batch
size, dtype and judge) answers each source's harmful prompts, one source at a time (so a source's
batches hold only its own prompts, sorted by length as the audit sorts them), and the builtin
harmless prompts; the script prints per source the prompts, the refused count and rate with its
95% Wilson interval. Every refusal is at risk: the conditional flip rate is measured on them.

    OMP_NUM_THREADS=1 python benchmarks/default_pool.py --out /tmp/default-pool.json
    OMP_NUM_THREADS=1 python benchmarks/default_pool.py --limit 60   # a stratified subset per source

``--out`` keeps every prompt's label and refusal score (written after each source), and
``--stratified-limit N`` then counts the refusals in the stratified subset that ``limit = N``
draws from the union of the sources (load_prompts).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from kvsafety_tests.engine.audit import AuditSettings, ModelAudit
from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.settings import DEFAULT_MODEL
from kvsafety_tests.stats import wilson_interval

SOURCES = ("builtin", "advbench", "harmbench")


def _row(name: str, labels: list[str], seconds: float | None = None) -> str:
    n = len(labels)
    k = labels.count("refused")
    lo, hi = wilson_interval(k, n) or (float("nan"), float("nan"))
    took = "" if seconds is None else f"  {seconds:7.0f} s"
    return f"{name:<22} {n:>5} {k:>8} {k / n:>7.1%}  [{lo:.1%}, {hi:.1%}]{took}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument(
        "--source", action="append", choices=SOURCES, help=f"repeatable (default: {' '.join(SOURCES)})"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="a stratified subset of N harmful prompts per source"
    )
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the settings' default")
    p.add_argument("--batch-size", type=int, default=None, help="default: the settings' default")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON with every prompt's label (written per source)"
    )
    p.add_argument(
        "--stratified-limit",
        type=int,
        action="append",
        default=[],
        help="also count the refusals in the union's stratified subset at this limit (needs the full pool)",
    )
    args = p.parse_args()
    sources = tuple(args.source or SOURCES)
    settings = AuditSettings(
        model=args.model,
        quantizers=("int8",),  # never run: only the fp arm is generated
        prompts=("builtin",),
        limit=1,
        noise_floor=False,
        perplexity=False,
        baseline_cache=False,
        **{k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("batch_size", args.batch_size)) if v},
    )
    settings.validate()
    print(
        f"{settings.model} ({settings.dtype}, {settings.device}), fp arm, greedy {settings.max_new_tokens} "
        f"new tokens, batch {settings.batch_size}, judge {settings.judge}, limit per source {args.limit}"
    )
    start = time.monotonic()
    audit = ModelAudit(settings, load_prompts("builtin", limit=1), log=lambda message: None)
    print(f"model loaded, refusal tokens calibrated: {time.monotonic() - start:.0f} s")
    data: dict[str, Any] = {
        "settings": {
            k: getattr(settings, k)
            for k in ("model", "dtype", "device", "max_new_tokens", "batch_size", "judge")
        },
        "limit": args.limit,
        "sources": {},
    }
    print(f"{'source':<22} {'n':>5} {'refused':>8} {'rate':>7}  95% Wilson")
    harmless = load_prompts("builtin", limit=args.limit).harmless
    for name, prompts in [
        *((s, load_prompts(s, limit=args.limit, pair_builtin=False).harmful) for s in sources),
        ("builtin (harmless)", harmless),
    ]:
        arm = audit.generate("none", prompts=list(prompts))
        data["sources"][name] = {
            "seconds": arm.seconds,
            "prompts": {
                p.id: {"category": p.category, "label": label, "refusal_score": score}
                for p, label, score in zip(prompts, arm.labels, arm.refusal_scores, strict=True)
            },
        }
        print(_row(name, arm.labels, arm.seconds), flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(data, indent=1))
    harmful = [row["label"] for s in sources for row in data["sources"][s]["prompts"].values()]
    print(_row("pooled harmful", harmful))
    for limit in args.stratified_limit:
        chosen = load_prompts(list(sources), limit=limit).harmful
        labels = {pid: row["label"] for s in sources for pid, row in data["sources"][s]["prompts"].items()}
        missing = [p.id for p in chosen if p.id not in labels]
        if missing:
            print(
                f"limit {limit}: {len(missing)} prompts of the subset were not measured (run without --limit)"
            )
            continue
        for s in sources:
            print(_row(f"limit {limit}: {s}", [labels[p.id] for p in chosen if p.source == s]))
        print(_row(f"limit {limit}: pooled", [labels[p.id] for p in chosen]))
    print(f"total {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
