"""The judge's labelled sets v2 (fixtures/judge_labelled_v2.jsonl) and v3 (its test split,
fixtures/judge_labelled_v3_test.jsonl; its dev split is all of v2): the frozen test splits and the
protocol's invariants (docs/judge-labelling.md). Reads the file only: no network, no model, no
judge (the set measures the judges, so this test never imports one)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SET_PATH = FIXTURES / "judge_labelled_v2.jsonl"
V3_TEST_PATH = FIXTURES / "judge_labelled_v3_test.jsonl"
V1_PATH = FIXTURES / "judge_labelled.jsonl"

# The frozen test split (docs/judge-labelling.md, "Freezing the test split"). A change to any
# test record (text, label, why, provenance) or to which records are on test changes this hash:
# the judges' published test figures would no longer be about the same texts. Never update it to
# make this test pass; build a new set with a new file name instead.
TEST_SHA256 = "7c82fb084c11fa2d103cf2497bade7466d4fda6e5360f151293f72223004aac0"
V3_TEST_SHA256 = "45f8c17518cd1562b8fa9722f2cfac3212d5dac09b23c6c24ac7df926ec08d80"

LABELS = ("refused", "complied", "incoherent")
SPLITS = ("dev", "test")
MODELS = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
FAMILIES = ("none", "int8", "int4", "int3", "int2", "per-channel", "fp8_e4m3", "fp8_e5m2", "kivi")
SOURCES = ("builtin", "advbench", "harmbench", "harmbench-text", "strongreject", "donotanswer", "handwritten")
OURS = ("builtin", "handwritten")  # sources whose prompt text is ours and may be stored
CASE_KINDS = (
    "decline-varied",
    "decline-other-language",
    "decline-with-resources",
    "deflection",
    "decline-then-loop",
    "opener-then-compliance",
    "disclaimer-then-instructions",
    "partial-compliance",
    "fictional-frame",
    "warning-words-in-compliance",
    "compliance-other-language",
    "harmless-with-refusal-words",
    "word-salad",
    "loop",
    "symbol-run",
)
#: Kinds the v3 writers added.
V3_CASE_KINDS = (
    *CASE_KINDS,
    "premise-rejection",
    "harmless-declined",
    "harmless-answered",
    "fluent-but-empty",
)
FIELDS = {
    "id", "text", "label", "why", "split", "model", "quantizer", "quantizer_family", "context",
    "source", "prompt_id", "kind", "category", "case_kind", "prompt", "new_tokens", "occurrences",
}  # fmt: skip
MIN_TEXTS = 600
MIN_PER_LABEL = 150


def normalise(text: str) -> str:
    """Whitespace-normalised text: what "distinct" is computed on."""
    return " ".join(text.split())


def canonical_test_sha256(records: list[dict]) -> str:
    """sha256 of the test records as JSON (sorted keys, compact separators, UTF-8 unescaped), one
    a line, lines sorted, each ending in a newline."""
    lines = sorted(
        json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        for r in records
        if r["split"] == "test"
    )
    return hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()


def split_key(record: dict) -> str:
    """The prompt (or hand-written case) a side is assigned to; long variants go with their prompt."""
    return f"{record['source']}/{record['prompt_id'].removesuffix('-long')}"


@pytest.fixture(scope="module")
def records() -> list[dict]:
    lines = SET_PATH.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_test_split_is_frozen(records):
    assert canonical_test_sha256(records) == TEST_SHA256, (
        "the frozen test split of fixtures/judge_labelled_v2.jsonl changed; "
        "see docs/judge-labelling.md before touching it"
    )


def test_schema(records):
    for r in records:
        assert set(r) == FIELDS, r["id"]
        assert r["label"] in LABELS, r["id"]
        assert r["split"] in SPLITS, r["id"]
        assert r["source"] in SOURCES, r["id"]
        assert r["kind"] in ("harmful", "harmless"), r["id"]
        assert isinstance(r["text"], str), r["id"]
        if r["source"] == "handwritten":
            assert r["case_kind"] in CASE_KINDS, r["id"]
            assert r["model"] is None and r["quantizer"] is None, r["id"]
            assert r["why"], f"{r['id']}: hand-written cases say why they carry their label"
        else:
            assert r["case_kind"] is None, r["id"]
            assert r["model"] in MODELS, r["id"]
            assert r["quantizer_family"] in FAMILIES, r["id"]
            assert r["occurrences"] >= 1, r["id"]
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids), [i for i, n in Counter(ids).items() if n > 1]


def test_distinct_texts_and_label_counts(records):
    texts = [normalise(r["text"]) for r in records]
    assert len(set(texts)) == len(texts), "one record per distinct (whitespace-normalised) text"
    assert len(texts) >= MIN_TEXTS
    per_label = Counter(r["label"] for r in records)
    assert all(per_label[label] >= MIN_PER_LABEL for label in LABELS), per_label


def test_no_text_and_no_prompt_on_both_sides(records):
    sides: dict[str, set[str]] = {}
    for r in records:
        sides.setdefault(normalise(r["text"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    prompt_sides: dict[str, set[str]] = {}
    for r in records:
        prompt_sides.setdefault(split_key(r), set()).add(r["split"])
    on_both = [k for k, s in prompt_sides.items() if len(s) > 1]
    assert not on_both, on_both[:5]


def test_both_sides_cover_every_stratum(records):
    for axis, values in (
        ("label", LABELS),
        ("model", MODELS),
        ("quantizer_family", FAMILIES),
        ("source", SOURCES),
        ("case_kind", CASE_KINDS),
    ):
        for split in SPLITS:
            seen = {r[axis] for r in records if r["split"] == split}
            missing = [v for v in values if v not in seen]
            assert not missing, f"{split} split lacks {axis} {missing}"
    for split in SPLITS:
        side = [r for r in records if r["split"] == split]
        for model in MODELS:
            labels = {r["label"] for r in side if r["model"] == model}
            assert labels == set(LABELS), f"{split} split, {model}: labels {sorted(labels)}"
    test_share = sum(r["split"] == "test" for r in records) / len(records)
    assert 0.35 <= test_share <= 0.6, test_share


def test_benchmark_prompt_text_is_not_stored(records):
    # Benchmark prompts are referenced by source and id; their text stays in its package.
    for r in records:
        if r["source"] not in OURS:
            assert r["prompt"] is None, r["id"]
            assert r["prompt_id"].startswith(r["source"].split("-")[0]), r["id"]
        else:
            assert isinstance(r["prompt"], str) and r["prompt"], r["id"]


# --- set v3: a new test split, with all of v2 as its dev split --------------------------------


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def v3_test() -> list[dict]:
    return _read(V3_TEST_PATH)


def test_v3_test_split_is_frozen(v3_test):
    assert canonical_test_sha256(v3_test) == V3_TEST_SHA256, (
        "the frozen test split fixtures/judge_labelled_v3_test.jsonl changed; "
        "see docs/judge-labelling.md before touching it"
    )
    assert {r["split"] for r in v3_test} == {"test"}


def test_v3_schema_counts_and_coverage(v3_test):
    for r in v3_test:
        assert set(r) == FIELDS, r["id"]
        assert r["label"] in LABELS and r["source"] in SOURCES, r["id"]
        if r["source"] == "handwritten":
            assert r["case_kind"] in V3_CASE_KINDS and r["why"], r["id"]
            assert isinstance(r["prompt"], str) and r["prompt"], r["id"]
        else:
            assert r["model"] in MODELS and r["quantizer_family"] in FAMILIES, r["id"]
            assert r["prompt"] is None, f"{r['id']}: benchmark prompt text stays in its package"
    texts = [normalise(r["text"]) for r in v3_test]
    assert len(set(texts)) == len(texts) == 439
    assert Counter(r["label"] for r in v3_test) == {"refused": 107, "complied": 207, "incoherent": 125}
    assert {r["case_kind"] for r in v3_test if r["case_kind"]} == set(V3_CASE_KINDS)
    for model in MODELS:
        assert {r["label"] for r in v3_test if r["model"] == model} == set(LABELS), model


def test_v3_test_shares_no_text_and_no_prompt_with_what_judges_were_fitted_on(records, v3_test):
    # Everything a judge could have been fitted on: all of v2 (v3's dev split) and v1.
    seen = {normalise(r["text"]) for r in records} | {normalise(r["completion"]) for r in _read(V1_PATH)}
    assert not [r["id"] for r in v3_test if normalise(r["text"]) in seen]
    v2_prompts = {split_key(r) for r in records}
    assert not [r["id"] for r in v3_test if split_key(r) in v2_prompts]
