"""Judged completions per second: the engine at 8b59947 against this one, side by side in one run.

    git worktree add /tmp/kv-old 8b59947
    OMP_NUM_THREADS=1 python benchmarks/throughput.py compare --old /tmp/kv-old --limit 48 --repeats 2
    python benchmarks/peak_rss.py -- python benchmarks/throughput.py one --engine new --out new.json
    python benchmarks/throughput.py horizon --horizons 16 24 32 48

``compare``: the same builtin prompts (``--limit`` harmful and harmless, the stratified subset) go
through a whole audit of one quantizer (fp arm, its rerun at half the batch, teacher-forced
perplexity, the quantized arm and its perplexity) in the old engine at its defaults (batch 16,
64 new tokens) and in this one at ``--batch-size`` and ``--max-new-tokens``, each in a fresh
process, interleaved old/new ``--repeats`` times. Judged completions = the labels of the fp arm,
the rerun and the quantized arm (3 per prompt); per second of the whole audit, model loading and
calibration included. Also printed: each process's peak RSS (VmHWM) and, per prompt, how often the
two engines' labels agree (all three labels, and refused against not refused) in the fp and the
quantized arm. The baseline cache is off: both engines compute everything.

``horizon``: the default judge's verdict on the labelled set's test split (text the judge was not
fitted to) with every completion cut to N tokens (the default model's tokenizer), against its
verdict on the whole completion (up to 64 tokens) and against the human label.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = "qwen2.5-coder-0.5b-instruct"


def _peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError("no VmHWM in /proc/self/status")  # pragma: no cover


# -- one engine, one audit (a child process; PYTHONPATH picks the engine) ----------------------
def one(args: argparse.Namespace) -> None:
    from kvsafety_tests.prompts import PromptSet, load_prompts

    if args.ids:
        ids = set(json.loads(Path(args.ids).read_text()))
    else:  # this engine's stratified subset (the same as ``compare`` picks)
        part = load_prompts("builtin", limit=args.limit)
        ids = {p.id for p in (*part.harmful, *part.harmless)}
    full = load_prompts("builtin")
    chosen = tuple(p for p in full.prompts if p.kind == "calibration" or p.id in ids)
    prompt_set = PromptSet(full.name, chosen)
    start = time.monotonic()
    if args.engine == "old":
        from kvsafety_tests.audit import AuditSettings, ModelAudit  # type: ignore[import-not-found]

        settings = AuditSettings(model=args.model, quantizers=(args.quantizer,))
    else:
        import kvsafety_tests.backends.hf as hb
        from kvsafety_tests.engine.audit import AuditSettings, ModelAudit

        if args.plain_logprobs:  # the whole-vocabulary log-softmax (before the memory fix)
            hb.LOGPROB_CHUNK_ELEMENTS = None
        settings = AuditSettings(
            model=args.model,
            quantizers=(args.quantizer,),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            baseline_cache=False,
        )
    audit = ModelAudit(settings, prompt_set, log=lambda _: None)
    run = audit.audit(args.quantizer)
    seconds = time.monotonic() - start
    if run.verdict == "error":
        raise SystemExit(f"{args.engine} engine: the audit errored: {run.error}")
    n = len(audit.eval_prompts)
    judged = n * (2 + (audit.rerun is not None))
    out = {
        "engine": args.engine,
        "batch_size": settings.batch_size,
        "max_new_tokens": settings.max_new_tokens,
        "seconds": seconds,
        "judged": judged,
        "peak_rss_gib": _peak_rss_gib(),
        "fp": {r.id: r.baseline for r in run.prompts},
        "quantized": {r.id: r.quantized for r in run.prompts},
        "perplexity_ratio": run.perplexity_quantized / run.perplexity_baseline
        if run.perplexity_quantized and run.perplexity_baseline
        else None,
        "verdict": run.verdict,
    }
    Path(args.out).write_text(json.dumps(out))


def _child(
    engine: str, args: argparse.Namespace, ids: Path, *, plain: bool = False, old_settings: bool = False
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    # the old engine from its worktree; this one from the repository
    env["PYTHONPATH"] = str(Path(args.old).resolve()) if engine == "old" else str(REPO)
    cmd = [sys.executable, str(Path(__file__).resolve()), "one", "--engine", engine, "--ids", str(ids)]
    cmd += ["--out", str(out), "--model", args.model, "--quantizer", args.quantizer]
    batch, tokens = (16, 64) if old_settings else (args.batch_size, args.max_new_tokens)
    cmd += ["--batch-size", str(batch), "--max-new-tokens", str(tokens)]
    if plain:
        cmd.append("--plain-logprobs")
    subprocess.run(cmd, check=True, env=env, cwd="/tmp" if engine == "old" else REPO)
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return result


def _agreement(a: dict[str, str], b: dict[str, str], harmful: set[str] | None = None) -> str:
    keys = sorted(k for k in a if harmful is None or k in harmful)
    same = sum(a[k] == b[k] for k in keys)
    refused = sum((a[k] == "refused") == (b[k] == "refused") for k in keys)
    return f"labels {same}/{len(keys)}, refused-vs-not {refused}/{len(keys)}"


def compare(args: argparse.Namespace) -> None:
    from kvsafety_tests.prompts import load_prompts

    subset = load_prompts("builtin", limit=args.limit)
    ids_list = [p.id for p in (*subset.harmful, *subset.harmless)]
    harmful = {p.id for p in subset.harmful}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids_list, f)
        ids = Path(f.name)
    print(
        f"{args.model}, {len(subset.harmful)} harmful + {len(subset.harmless)} harmless builtin prompts, "
        f"quantizer {args.quantizer}; old engine {args.old} at its defaults; new engine at batch "
        f"{args.batch_size}, {args.max_new_tokens} new tokens; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '1')}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for repeat in range(1, args.repeats + 1):
        for engine in ("old", "new", *(("new-16-64",) if args.new_at_old_settings else ())):
            r = _child(engine[:3], args, ids, old_settings=engine == "new-16-64")
            r["repeat"], r["engine"] = repeat, engine
            results.append(r)
            print(
                f"repeat {repeat} {engine}: batch {r['batch_size']}, {r['max_new_tokens']} tokens: "
                f"{r['seconds']:.1f} s, {r['judged']} judged, {r['judged'] / r['seconds']:.3f} judged/s, "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB, perplexity ratio {r['perplexity_ratio']:.4f}, "
                f"verdict {r['verdict']}",
                flush=True,
            )
        old, new = (r for r in results if r["repeat"] == repeat and r["engine"] in ("old", "new"))
        if args.new_at_old_settings:
            same = results[-1]
            print(
                f"repeat {repeat}: this engine at batch 16, 64 tokens over the old engine: "
                f"{(same['judged'] / same['seconds']) / (old['judged'] / old['seconds']):.2f}x; labels "
                f"fp {_agreement(old['fp'], same['fp'])}, quantized {_agreement(old['quantized'], same['quantized'])}",
                flush=True,
            )
        print(
            f"repeat {repeat}: ratio (new judged/s over old) "
            f"{(new['judged'] / new['seconds']) / (old['judged'] / old['seconds']):.2f}x",
            flush=True,
        )
        for arm in ("fp", "quantized"):
            print(
                f"repeat {repeat} agreement, {arm} arm: all prompts {_agreement(old[arm], new[arm])}; "
                f"harmful {_agreement(old[arm], new[arm], harmful)}",
                flush=True,
            )
    if args.plain_too:
        r = _child("new", args, ids, plain=True)
        print(
            f"new engine, whole-vocabulary log-softmax (before the memory fix): {r['seconds']:.1f} s, "
            f"peak RSS {r['peak_rss_gib']:.2f} GiB, perplexity ratio {r['perplexity_ratio']:.4f}",
            flush=True,
        )
    ids.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


# -- the answer horizon --------------------------------------------------------------------
def horizon(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from kvsafety_tests.judge import load_judge
    from kvsafety_tests.judge.labelled import load_labelled_v2
    from kvsafety_tests.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(args.model).path)
    judge = load_judge("rules")
    rows = load_labelled_v2(split="test")
    token_ids = [tok.encode(r.completion, add_special_tokens=False) for r in rows]
    full = judge.label_many([""] * len(rows), [r.completion for r in rows])
    long_ = [i for i, t in enumerate(token_ids) if len(t) > min(args.horizons)]
    print(
        f"labelled set v2, test split: {len(rows)} completions ({len(long_)} longer than "
        f"{min(args.horizons)} tokens); judge rules; tokens of {args.model}"
    )
    print("| horizon | judge at N vs whole: labels | refused-vs-not | vs the human label: refused-vs-not |")
    print("| --- | --- | --- | --- |")
    human = [r.label == "refused" for r in rows]
    for n in [*args.horizons, None]:
        cut = [r.completion if n is None else tok.decode(t[:n]) for r, t in zip(rows, token_ids, strict=True)]
        labels = judge.label_many([""] * len(rows), cut)
        same = sum(a == b for a, b in zip(labels, full, strict=True))
        refused = sum((a == "refused") == (b == "refused") for a, b in zip(labels, full, strict=True))
        right = sum((a == "refused") == h for a, h in zip(labels, human, strict=True))
        print(
            f"| {'whole' if n is None else n} | {same}/{len(rows)} | {refused}/{len(rows)} | "
            f"{right}/{len(rows)} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="old engine against this one, one run")
    c.add_argument("--old", default="/tmp/kv-old", help="a worktree of the old engine (8b59947)")
    c.add_argument("--limit", type=int, default=48)
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--plain-too", action="store_true", help="also the new engine without the memory fix")
    c.add_argument(
        "--new-at-old-settings",
        action="store_true",
        help="also this engine at batch 16, 64 tokens, each repeat",
    )
    c.add_argument("--json", help="write every process's figures and labels here")
    o = sub.add_parser("one", help="(internal) one engine's audit in this process")
    o.add_argument("--engine", choices=("old", "new"), required=True)
    o.add_argument("--ids", help="a JSON list of prompt ids (default: the subset of --limit)")
    o.add_argument("--limit", type=int, default=48)
    o.add_argument("--out", required=True)
    o.add_argument("--plain-logprobs", action="store_true")
    for q in (c, o):
        q.add_argument("--model", default=MODEL)
        q.add_argument("--quantizer", default="int4")
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--max-new-tokens", type=int, default=32)
    h = sub.add_parser("horizon", help="the judge's verdict at N tokens against the whole completion")
    h.add_argument("--model", default=MODEL)
    h.add_argument("--horizons", type=int, nargs="+", default=[16, 24, 32, 48])
    args = p.parse_args()
    {"compare": compare, "one": one, "horizon": horizon}[args.command](args)


if __name__ == "__main__":
    main()
