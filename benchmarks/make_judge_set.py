"""Build the judge's labelled set (fixtures/judge_labelled_v2.jsonl): generate, then assemble.

The set measures the refusal judges, so it is built by a protocol no judge takes part in
(docs/judge-labelling.md): real completions of both packaged models under every quantizer
family, plus hand-written hard cases, labelled by a person reading each distinct text before any
judge sees it, split by prompt into dev and test, and the test split frozen by its sha256.

Two steps:

``generate``: greedy completions (chat template, 64 new tokens) of both packaged models under
every quantizer family (none, int8, int4, int3, int2 per token, per-channel, fp8_e4m3,
fp8_e5m2, and KIVI on long-context prompts, where its full-precision window of 128 tokens
leaves most of the cache quantized), on builtin harmful and harmless prompts and on AdvBench,
HarmBench (both files), StrongREJECT and Do-Not-Answer prompts loaded from the installed data
packages through ``kvsafety_tests.prompts.load_prompts``. One unlabelled candidate per line.
Round 1 (720 completions) took 11 minutes on one core, round 2 (80 more, where refusals are
varied) 1 minute::

    OMP_NUM_THREADS=1 python benchmarks/make_judge_set.py generate --out /tmp/judge_candidates.jsonl

``build``: join the candidates with the labels a person wrote (a JSONL of ``{"key", "label",
"why"}``, ``key`` = ``text_key(text)``; label ``ambiguous`` leaves the text out with its reason),
keep one record per distinct text (whitespace-normalised), add the hand-written cases, split
dev/test by prompt, and print the counts and the test split's sha256::

    python benchmarks/make_judge_set.py build --candidates /tmp/judge_candidates.jsonl \\
        --labels /tmp/judge_labels.jsonl --handwritten /tmp/handwritten.jsonl \\
        --out fixtures/judge_labelled_v2.jsonl

``--previous FILE`` (an earlier build) keeps every prompt's side, carries its labels and
hand-written cases over, and freezes its test split: test records are copied verbatim and a new
text that would land on test is left out, so the recorded sha256 still holds. ``stats FILE``
prints the counts and the test sha256 of a built file. Benchmark prompt text is never written:
records name the prompt by id and source; builtin prompts and the hand-written cases' requests
are ours, and their text is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CELLS",
    "LABELS",
    "Cell",
    "build",
    "candidate_id",
    "canonical_test_sha256",
    "main",
    "normalise",
    "quantizer_family",
    "select_prompts",
    "split_key",
    "text_key",
]

MAX_NEW_TOKENS = 64
BATCH_SIZE = 16
LABELS = ("refused", "complied", "incoherent")
AMBIGUOUS = "ambiguous"
SOURCES = ("builtin", "advbench", "harmbench", "harmbench-text", "strongreject", "donotanswer")
MODELS = {"qwen2.5-coder-0.5b-instruct": "qwen", "smollm2-135m-instruct": "smol"}
OLD_SET = Path(__file__).resolve().parents[1] / "fixtures" / "judge_labelled.jsonl"
# Do-Not-Answer's "human_chatbox" questions ("Do you feel lonely?") are not harmful requests: an
# answer is neither a refusal nor compliance with anything harmful. Left out of the pools.
DONOTANSWER_SKIP = ("human_chatbox",)
SPLIT_SALT = "kvsafety-judge-v2"
TEST_EVERY = 2  # in each stratum, every TEST_EVERY-th prompt (by hash order) goes to test: 50/50


@dataclass(frozen=True)
class Cell:
    """One (model, quantizer) arm: how many prompts of each source it sends.

    ``harmful``: prompts per harmful source (builtin and each benchmark); ``harmless``: builtin
    harmless prompts. ``long``: each prompt after about 400 words of benign document
    (``long_context_variant``), so that windowed schemes quantize most of the cache.
    """

    model: str
    quantizer: str
    harmful: int
    harmless: int
    long: bool = False
    sources: tuple[str, ...] = SOURCES  # harmful sources this cell draws from
    round: int = 1  # generation round (``generate --round``); later rounds add prompts, never move them


def _cells() -> tuple[Cell, ...]:
    # Near-lossless quantizers get the most benchmark prompts: that is where fluent refusals
    # (qwen) and fluent answers are; low-bit ones fewer (their text is mostly broken).
    per_model = {
        "qwen2.5-coder-0.5b-instruct": {"big": (8, 8), "mid": (5, 6), "low": (3, 4), "long": (2, 4)},
        "smollm2-135m-instruct": {"big": (4, 6), "mid": (3, 5), "low": (2, 4), "long": (2, 4)},
    }
    tiers = {
        "big": ("none", "int8", "fp8_e4m3", "int4-channel"),
        "mid": ("int4", "int3", "int3-channel", "fp8_e5m2"),
        "low": ("int2", "int2-channel"),
        "long": ("kivi2", "kivi4"),
    }
    out = []
    for model, sizes in per_model.items():
        for tier, quantizers in tiers.items():
            h, b = sizes[tier]
            out += [Cell(model, q, h, b, long=tier == "long") for q in quantizers]
    # Round 2: real refusals in round 1 were few and mostly one stock string (66 distinct of
    # 578). Qwen under int3/int4 and both models on Do-Not-Answer's privacy and information
    # questions decline in the most varied wordings, so more prompts go there.
    bench = ("advbench", "harmbench", "harmbench-text", "strongreject", "donotanswer")
    out += [
        Cell("qwen2.5-coder-0.5b-instruct", "int3", 6, 0, sources=bench, round=2),
        Cell("qwen2.5-coder-0.5b-instruct", "int4", 4, 0, sources=bench, round=2),
        Cell("qwen2.5-coder-0.5b-instruct", "none", 10, 0, sources=("donotanswer",), round=2),
        Cell("smollm2-135m-instruct", "none", 10, 0, sources=("donotanswer",), round=2),
        Cell("smollm2-135m-instruct", "int8", 10, 0, sources=("donotanswer",), round=2),
    ]
    # Round 3: the labelled set v3's test split (docs/judge-labelling.md, "Set v3"). Only prompts
    # no earlier round used (``select_prompts`` skips them), so no v2 prompt reaches v3's test.
    # Benchmarks only: rounds 1 and 2 took every builtin harmless prompt and most harmful ones.
    round3 = {
        "qwen2.5-coder-0.5b-instruct": (
            ("none", 4), ("int8", 4), ("fp8_e4m3", 2), ("fp8_e5m2", 4), ("int4", 4),
            ("int3", 4), ("int3-channel", 2), ("int2", 1), ("kivi2", 2),
        ),
        "smollm2-135m-instruct": (
            ("none", 3), ("int8", 3), ("fp8_e5m2", 2), ("int4", 2), ("int3", 2),
            ("int2-channel", 1), ("kivi4", 1),
        ),
    }  # fmt: skip
    # Round 4: round 3 gave 159 distinct texts; more prompts, the same rule.
    round4 = {
        "qwen2.5-coder-0.5b-instruct": (
            ("none", 3), ("int8", 3), ("fp8_e5m2", 3), ("int4", 3), ("int4-channel", 3), ("int3", 3),
            ("kivi4", 2),
        ),
        "smollm2-135m-instruct": (
            ("none", 3), ("int8", 3), ("fp8_e4m3", 3), ("fp8_e5m2", 2), ("int3-channel", 2),
            ("int4-channel", 2), ("kivi2", 1),
        ),
    }  # fmt: skip
    out += [
        Cell(model, q, h, 0, long=q.startswith("kivi"), sources=bench, round=r)
        for r, table in ((3, round3), (4, round4))
        for model, rows in table.items()
        for q, h in rows
    ]
    return tuple(out)


CELLS: tuple[Cell, ...] = _cells()


# --- text identity, families, split keys ----------------------------------------------------


def normalise(text: str) -> str:
    """Whitespace-normalised text: what "distinct" is computed on (case and punctuation kept)."""
    return " ".join(text.split())


def text_key(text: str) -> str:
    """The id of a distinct text: sha256 of its normalised form, first 16 hex digits."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]


def quantizer_family(quantizer: str | None) -> str | None:
    """none, int8, int4, int3, int2 (per token), per-channel, fp8_e4m3, fp8_e5m2 or kivi."""
    if quantizer is None:
        return None
    head = quantizer.split(";")[0]
    if head.startswith("kivi"):
        return "kivi"
    if "-channel" in head:
        return "per-channel"
    return head


def candidate_id(short: str, quantizer: str, prompt_id: str) -> str:
    """A stable record id: model, quantizer and prompt, with ``;``/``=`` flattened."""
    return f"{short}-{re.sub(r'[;=]+', '-', quantizer)}-{prompt_id}"


def split_key(record: dict) -> str:
    """What a side is assigned to: the prompt (long variants go with their short prompt) or the
    hand-written case."""
    pid = record["prompt_id"]
    if pid.endswith("-long"):
        pid = pid[: -len("-long")]
    return f"{record['source']}/{pid}"


def _rank(key: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}/{key}".encode()).hexdigest()


def canonical_test_sha256(records: Iterable[dict]) -> str:
    """sha256 of the test split: its records as JSON (sorted keys, no spaces, UTF-8), one a line,
    lines sorted, each ending in a newline."""
    lines = sorted(
        json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        for r in records
        if r["split"] == "test"
    )
    return hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()


# --- generate -------------------------------------------------------------------------------


def _old_prompt_ids() -> set[str]:
    if not OLD_SET.exists():
        return set()
    return {
        json.loads(line)["prompt_id"] for line in OLD_SET.read_text(encoding="utf-8").splitlines() if line
    }


def _pool(source: str, kind: str) -> list:
    """A source's prompts of ``kind`` in a fixed order: prompts the old set never used first,
    categories interleaved, within a category by sha256 of the id."""
    from kvsafety_tests.prompts import load_prompts

    prompts = load_prompts(source, pair_builtin=False)
    items = [p for p in (prompts.harmful if kind == "harmful" else prompts.harmless)]
    if source == "donotanswer":
        items = [p for p in items if p.category not in DONOTANSWER_SKIP]
    old = _old_prompt_ids()
    out = []
    for used in (False, True):
        by_cat: dict[str, list] = {}
        for p in items:
            if (p.id in old) == used:
                by_cat.setdefault(p.category, []).append(p)
        queues = [sorted(v, key=lambda p: _rank(p.id)) for _, v in sorted(by_cat.items())]
        while any(queues):
            for q in queues:
                if q:
                    out.append(q.pop(0))
    return out


def _cycle(items: list, start: int) -> Iterator:
    i = start
    while True:
        yield items[i % len(items)]
        i += 1


def select_prompts(cells: Sequence[Cell]) -> dict[Cell, list]:
    """Per cell, its prompts: each model walks every pool from its own starting point (qwen at
    the start, smollm2 half-way), so cells of one model see different prompts. The walk always
    covers every cell of ``CELLS`` in order, so a cell's prompts do not depend on which cells
    are asked for. A round-3 cell skips every prompt an earlier round's cell took (either model's)."""
    from kvsafety_tests.prompts import long_context_variant

    pools = {(s, "harmful"): _pool(s, "harmful") for s in SOURCES}
    pools["builtin", "harmless"] = _pool("builtin", "harmless")
    walkers: dict[tuple[str, str, str], Iterator] = {}
    out: dict[Cell, list] = {}
    taken: set[tuple[str, str]] = set()  # (source, prompt id) of rounds 1 and 2
    for cell in CELLS:
        chosen = []
        for (source, kind), pool in pools.items():
            if kind == "harmful" and source not in cell.sources:
                continue
            n = cell.harmful if kind == "harmful" else cell.harmless
            key = (cell.model, source, kind)
            if key not in walkers:
                walkers[key] = _cycle(pool, 0 if MODELS[cell.model] == "qwen" else len(pool) // 2)
            picked: list = []
            for _ in range(2 * len(pool)):
                if len(picked) == n:
                    break
                p = next(walkers[key])
                if cell.round < 3:  # rounds 3 and 4 skip these
                    taken.add((source, p.id))
                elif (source, p.id) in taken or p in picked or p in chosen:
                    continue
                picked.append(p)
            if len(picked) < n:
                raise SystemExit(f"{source}: too few prompts left for {cell} ({len(picked)} of {n})")
            if cell.round >= 3:
                taken.update((source, p.id) for p in picked)
            chosen += picked
        out[cell] = [long_context_variant(p) for p in chosen] if cell.long else chosen
    return {cell: out[cell] for cell in cells}


def _progress(message: str) -> None:
    print(f"[make_judge_set] {message}", file=sys.stderr, flush=True)


def generate(cells: Sequence[Cell], batch_size: int) -> list[dict]:
    import torch

    from kvsafety_tests.backends.hf import HFBackend
    from kvsafety_tests.models import load_model, resolve_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    selected = select_prompts(cells)
    records: list[dict] = []
    for model_name in dict.fromkeys(c.model for c in cells):
        model, tokenizer = load_model(resolve_model(model_name))
        backend = HFBackend(model, tokenizer, batch_size=batch_size)
        for cell in (c for c in cells if c.model == model_name):
            prompts = selected[cell]
            start = time.monotonic()
            completions = backend.run(
                [p.text for p in prompts], cell.quantizer, max_new_tokens=MAX_NEW_TOKENS
            )
            _progress(
                f"{cell.model} {cell.quantizer}: {len(prompts)} prompts in {time.monotonic() - start:.0f} s"
            )
            for p, c in zip(prompts, completions, strict=True):
                record = {
                    "id": candidate_id(MODELS[cell.model], cell.quantizer, p.id),
                    "model": cell.model,
                    "quantizer": cell.quantizer,
                    "prompt_id": p.id,
                    "kind": p.kind,
                    "source": p.source,
                    "category": p.category,
                    "context": "long" if cell.long else "short",
                    "text": c.text,
                    "new_tokens": len(c.token_ids),
                    "key": text_key(c.text),
                }
                records.append(record)
        del model, backend
    return records


# --- build ----------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _builtin_texts() -> dict[str, str]:
    from kvsafety_tests.prompts import load_prompts

    return {p.id: p.text for p in load_prompts("builtin", pair_builtin=False)}


def _assign_sides(keys: dict[str, str], previous: dict[str, str]) -> dict[str, str]:
    """Side per split key. ``keys``: split key -> stratum. Within each stratum, keys in order of
    sha256(salt/key) alternate dev, test, dev, test, ...: a 50/50 split of every source and kind
    (and every hand-written case kind) that depends on no label. Keys in ``previous`` (an
    earlier build) keep their side."""
    strata: dict[str, list[str]] = {}
    for k, stratum in keys.items():
        strata.setdefault(stratum, []).append(k)
    sides: dict[str, str] = {}
    for _stratum, members in sorted(strata.items()):
        for i, k in enumerate(sorted(members, key=_rank)):
            sides[k] = "test" if i % TEST_EVERY == TEST_EVERY - 1 else "dev"
    sides.update({k: previous[k] for k in keys if k in previous})
    return sides


FIELDS = (
    "id", "text", "label", "why", "split", "model", "quantizer", "quantizer_family", "context",
    "source", "prompt_id", "kind", "category", "case_kind", "prompt", "new_tokens", "occurrences",
)  # fmt: skip


def build(
    candidates: Sequence[dict],
    labels: dict[str, dict],
    handwritten: Sequence[dict],
    previous: Sequence[dict] = (),
) -> tuple[list[dict], list[dict]]:
    """(records, left out). One record per distinct text.

    A text that occurs under several prompts is kept once: on dev when any occurrence is on a
    dev prompt, else on test, under its first occurrence on that side in generation order. Texts
    of the old in-sample set (fixtures/judge_labelled.jsonl: the rules were fitted to them) never
    enter test; one that occurs only on test prompts is left out.

    ``previous``: an earlier build. Every prompt keeps its side, and its test split is frozen:
    its test records are carried over verbatim, and a new text that would land on test is left
    out (a new test split is a new file, not an edit of the frozen one).
    """
    old_texts = {normalise(r["completion"]) for r in _read_jsonl(OLD_SET)} if OLD_SET.exists() else set()
    builtin = _builtin_texts()
    handwritten = [{**h, "source": "handwritten"} for h in handwritten]
    frozen = [r for r in previous if r["split"] == "test"]
    frozen_texts = {normalise(r["text"]) for r in frozen}
    strata = {split_key(c): f"{c['source']}/{c['kind']}" for c in candidates}
    strata.update({split_key(h): f"handwritten/{h['case_kind']}" for h in handwritten})
    sides = _assign_sides(strata, {split_key(r): r["split"] for r in previous})

    def leave_out(key: str, rid: str, reason: str, why: str = "") -> None:
        left_out.append({"key": key, "id": rid, "why": why, "reason": reason})

    groups: dict[str, list[dict]] = {}
    for c in candidates:
        groups.setdefault(normalise(c["text"]), []).append(c)
    records: list[dict] = []
    left_out: list[dict] = []
    for norm, occ in groups.items():
        key = text_key(norm)
        if norm in frozen_texts:
            continue  # carried over from the frozen test split below
        if key not in labels:
            raise SystemExit(f"no label for text {key} ({occ[0]['id']}): label every distinct text first")
        lab = labels[key]
        if lab["label"] == AMBIGUOUS:
            leave_out(key, occ[0]["id"], "ambiguous", lab.get("why", ""))
            continue
        if lab["label"] not in LABELS:
            raise SystemExit(
                f"label {lab['label']!r} of {key} unknown; valid: {', '.join(LABELS)}, {AMBIGUOUS}"
            )
        on_dev = [c for c in occ if sides[split_key(c)] == "dev"]
        if norm in old_texts and not on_dev:
            leave_out(key, occ[0]["id"], "in the old set, test prompts only")
            continue
        if frozen and not on_dev:
            leave_out(key, occ[0]["id"], "new text on a test prompt: the test split is frozen")
            continue
        keep = on_dev[0] if on_dev else occ[0]
        records.append(
            {
                "id": keep["id"],
                "text": keep["text"],
                "label": lab["label"],
                "why": lab.get("why", ""),
                "split": sides[split_key(keep)],
                "model": keep["model"],
                "quantizer": keep["quantizer"],
                "quantizer_family": quantizer_family(keep["quantizer"]),
                "context": keep["context"],
                "source": keep["source"],
                "prompt_id": keep["prompt_id"],
                "kind": keep["kind"],
                "category": keep["category"],
                "case_kind": None,
                # Benchmark prompt text stays in its package; builtin prompts are ours.
                "prompt": builtin.get(keep["prompt_id"].removesuffix("-long"))
                if keep["source"] == "builtin"
                else None,
                "new_tokens": keep["new_tokens"],
                "occurrences": len(occ),
            }
        )
    seen = {normalise(r["text"]) for r in records} | set(groups)
    for h in handwritten:
        norm = normalise(h["text"])
        if norm in frozen_texts:
            continue
        if norm in seen:
            raise SystemExit(f"hand-written case {h['id']} duplicates a text already in the set")
        if h["label"] not in LABELS:
            raise SystemExit(
                f"hand-written case {h['id']}: label {h['label']!r} unknown; valid: {', '.join(LABELS)}"
            )
        if frozen and sides[split_key(h)] == "test":
            leave_out(text_key(norm), h["id"], "new text on a test prompt: the test split is frozen")
            continue
        seen.add(norm)
        records.append(
            {
                "id": h["id"],
                "text": h["text"],
                "label": h["label"],
                "why": h.get("why", ""),
                "split": sides[split_key(h)],
                "model": None,
                "quantizer": None,
                "quantizer_family": None,
                "context": "short",
                "source": "handwritten",
                "prompt_id": h["prompt_id"],
                "kind": h["kind"],
                "category": h.get("category"),
                "case_kind": h["case_kind"],
                "prompt": h["prompt"],
                "new_tokens": None,
                "occurrences": 1,
            }
        )
    records = [{f: r[f] for f in FIELDS} for r in records] + [dict(r) for r in frozen]
    records.sort(key=lambda r: (r["source"] == "handwritten", r["model"] or "", r["id"]))
    return records, left_out


def build_test_set(
    candidates: Sequence[dict],
    labels: dict[str, dict],
    handwritten: Sequence[dict],
    dev: Sequence[dict],
) -> tuple[list[dict], list[dict]]:
    """(records, left out): a new test split, every record ``"split": "test"``, against ``dev``
    (every record of an earlier set, all of which judges may now be fitted on).

    One record per distinct text, under its first occurrence. A text that ``dev`` or the old
    set (v1) holds is left out, and so is any candidate on a prompt ``dev`` used: nothing on the
    new test split was seen while fitting. Labels ``ambiguous`` are left out with their reason.
    """
    seen_texts = {normalise(r["text"]) for r in dev}
    if OLD_SET.exists():
        seen_texts |= {normalise(r["completion"]) for r in _read_jsonl(OLD_SET)}
    dev_keys = {split_key(r) for r in dev}
    records: list[dict] = []
    left_out: list[dict] = []
    groups: dict[str, list[dict]] = {}
    for c in candidates:
        groups.setdefault(normalise(c["text"]), []).append(c)
    for norm, occ in groups.items():
        key, first = text_key(norm), occ[0]
        if key not in labels:
            raise SystemExit(f"no label for text {key} ({first['id']}): label every distinct text first")
        lab = labels[key]
        reason = (
            "ambiguous"
            if lab["label"] == AMBIGUOUS
            else "text already in dev or v1"
            if norm in seen_texts
            else "prompt already in dev"
            if any(split_key(c) in dev_keys for c in occ)
            else None
        )
        if reason:
            left_out.append({"key": key, "id": first["id"], "why": lab.get("why", ""), "reason": reason})
            continue
        if lab["label"] not in LABELS:
            raise SystemExit(
                f"label {lab['label']!r} of {key} unknown; valid: {', '.join(LABELS)}, {AMBIGUOUS}"
            )
        records.append(
            {
                **{f: first.get(f) for f in ("id", "text", "model", "quantizer", "context", "source")},
                **{f: first[f] for f in ("prompt_id", "kind", "category", "new_tokens")},
                "label": lab["label"],
                "why": lab.get("why", ""),
                "split": "test",
                "quantizer_family": quantizer_family(first["quantizer"]),
                "case_kind": None,
                "prompt": None,  # benchmark prompts only: their text stays in the package
                "occurrences": len(occ),
            }
        )
    seen_texts |= set(groups)
    for h in handwritten:
        norm = normalise(h["text"])
        if norm in seen_texts:
            raise SystemExit(f"hand-written case {h['id']} duplicates a text already seen")
        if h["label"] not in LABELS:
            raise SystemExit(
                f"hand-written case {h['id']}: label {h['label']!r} unknown; valid: {', '.join(LABELS)}"
            )
        seen_texts.add(norm)
        records.append(
            {
                **{f: h[f] for f in ("id", "text", "label", "prompt_id", "kind", "case_kind", "prompt")},
                "why": h.get("why", ""),
                "category": h.get("category"),
                "split": "test",
                "model": None,
                "quantizer": None,
                "quantizer_family": None,
                "context": "short",
                "source": "handwritten",
                "new_tokens": None,
                "occurrences": 1,
            }
        )
    records = [{f: r[f] for f in FIELDS} for r in records]
    records.sort(key=lambda r: (r["source"] == "handwritten", r["model"] or "", r["id"]))
    return records, left_out


def counts(records: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Distinct texts per label, and per label within each model, family, source and split."""
    axes = ("model", "quantizer_family", "source", "split", "case_kind", "kind", "context")
    out: dict[str, dict[str, int]] = {"label": dict(Counter(r["label"] for r in records))}
    for axis in axes:
        table: Counter = Counter()
        for r in records:
            value = r[axis] if r[axis] is not None else "-"
            table[f"{value}"] += 1
            table[f"{value}/{r['label']}"] += 1
        out[axis] = dict(sorted(table.items()))
    return out


def _print_stats(records: Sequence[dict]) -> None:
    print(f"{len(records)} distinct texts")
    for axis, table in counts(records).items():
        print(f"{axis}: " + ", ".join(f"{k}={v}" for k, v in sorted(table.items())))
    print(f"test sha256: {canonical_test_sha256(records)}")


def _write_build(out: Path, records: list[dict], left_out_path: Path | None, left_out: list[dict]) -> int:
    """Write a built set (and, if asked, the texts left out), print its counts and test sha256."""
    _write_jsonl(out, records)
    if left_out_path:
        _write_jsonl(left_out_path, left_out)
    _print_stats(records)
    print(f"left out: {dict(Counter(r['reason'] for r in left_out))}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write unlabelled candidate completions")
    gen.add_argument("--out", type=Path, required=True, help="candidates JSONL to write")
    gen.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"default {BATCH_SIZE}")
    gen.add_argument(
        "--model", action="append", default=None, help="only these models (repeatable); default both"
    )
    gen.add_argument("--quantizer", action="append", default=None, help="only these quantizers (repeatable)")
    gen.add_argument(
        "--round", type=int, action="append", default=None, help="only these rounds (1-4; repeatable)"
    )
    bld = sub.add_parser("build", help="assemble the labelled set from candidates and labels")
    bld.add_argument("--candidates", type=Path, required=True)
    bld.add_argument(
        "--labels",
        type=Path,
        default=None,
        help='JSONL of {"key", "label", "why"} (adds to --previous\'s labels)',
    )
    bld.add_argument(
        "--handwritten", type=Path, default=None, help="JSONL of hand-written cases (default: --previous's)"
    )
    bld.add_argument("--previous", type=Path, default=None, help="earlier build whose sides are kept")
    bld.add_argument("--out", type=Path, required=True)
    bld.add_argument("--left-out", type=Path, default=None, help="JSONL of the texts left out, with reasons")
    new = sub.add_parser("build-test", help="a new test split against an earlier set (all of it dev)")
    new.add_argument("--candidates", type=Path, required=True)
    new.add_argument("--labels", type=Path, action="append", required=True, help="repeatable")
    new.add_argument("--handwritten", type=Path, action="append", default=[], help="repeatable")
    new.add_argument("--dev", type=Path, required=True, help="the earlier set: every record is dev")
    new.add_argument("--out", type=Path, required=True)
    new.add_argument("--left-out", type=Path, default=None, help="JSONL of the texts left out, with reasons")
    st = sub.add_parser("stats", help="counts and test sha256 of a built file")
    st.add_argument("path", type=Path)
    args = parser.parse_args(argv)

    if args.command == "generate":
        cells = [
            c
            for c in CELLS
            if (args.model is None or c.model in args.model)
            and (args.quantizer is None or c.quantizer in args.quantizer)
            and (args.round is None or c.round in args.round)
        ]
        if not cells:
            parser.error(
                f"no cell matches --model {args.model!r} --quantizer {args.quantizer!r}; valid models: "
                f"{', '.join(MODELS)}; quantizers: {', '.join(dict.fromkeys(c.quantizer for c in CELLS))}"
            )
        records = generate(cells, args.batch_size)
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):
            raise SystemExit("duplicate record ids: a cell sends one prompt twice")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        distinct = len({r["key"] for r in records})
        _progress(f"wrote {len(records)} candidates ({distinct} distinct texts) to {args.out}")
        return 0

    if args.command == "stats":
        _print_stats(_read_jsonl(args.path))
        return 0

    if args.command == "build-test":
        labels = {r["key"]: r for path in args.labels for r in _read_jsonl(path)}
        handwritten = [h for path in args.handwritten for h in _read_jsonl(path)]
        records, left_out = build_test_set(
            _read_jsonl(args.candidates), labels, handwritten, _read_jsonl(args.dev)
        )
        return _write_build(args.out, records, args.left_out, left_out)

    previous = _read_jsonl(args.previous) if args.previous and args.previous.exists() else []
    # Labels already written (an earlier build's records) count; a labels file adds or overrides.
    labels = {text_key(r["text"]): {"label": r["label"], "why": r["why"]} for r in previous}
    if args.labels:
        labels.update({r["key"]: r for r in _read_jsonl(args.labels)})
    if args.handwritten:
        handwritten = _read_jsonl(args.handwritten)
    else:
        handwritten = [r for r in previous if r["source"] == "handwritten"]
    records, left_out = build(_read_jsonl(args.candidates), labels, handwritten, previous)
    return _write_build(args.out, records, args.left_out, left_out)


if __name__ == "__main__":
    raise SystemExit(main())
