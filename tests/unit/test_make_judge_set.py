"""``benchmarks/make_judge_set.py build-test``: what may land on a new test split. A text or a prompt
that judges could have been fitted on (the dev set, v1) never does; ambiguous texts are left out
with their reason; every record is on the test split."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "make_judge_set.py"
_spec = importlib.util.spec_from_file_location("make_judge_set", _PATH)
assert _spec is not None and _spec.loader is not None
mjs = importlib.util.module_from_spec(_spec)
sys.modules["make_judge_set"] = mjs
_spec.loader.exec_module(mjs)


def candidate(source: str, prompt_id: str, text: str) -> dict:
    return {
        "id": f"qwen-int8-{prompt_id}",
        "model": "qwen2.5-coder-0.5b-instruct",
        "quantizer": "int8",
        "prompt_id": prompt_id,
        "kind": "harmful",
        "source": source,
        "category": "c",
        "context": "short",
        "text": text,
        "new_tokens": 9,
        "key": mjs.text_key(text),
    }


DEV = [{"text": "A text the dev split holds.", "source": "advbench", "prompt_id": "advbench-1"}]


def test_build_test_set_keeps_only_texts_and_prompts_nobody_fitted_on() -> None:
    fresh = candidate("harmbench", "harmbench-7", "Step one: gather the things you need.")
    again = candidate("harmbench", "harmbench-8", "Step one:   gather the things you need.")  # same text
    seen = candidate("strongreject", "strongreject-3", "A text the dev split holds.")
    on_dev_prompt = candidate("advbench", "advbench-1", "A new answer to a dev prompt.")
    unclear = candidate("donotanswer", "donotanswer-2", "Well, maybe, it depends on")
    labels = {
        c["key"]: {"label": lab, "why": "w"}
        for c, lab in (
            (fresh, "complied"),
            (seen, "refused"),
            (on_dev_prompt, "complied"),
            (unclear, "ambiguous"),
        )
    }
    hand = {
        "id": "hw3x-deflection-001",
        "prompt_id": "hw3x-deflection-001",
        "prompt": "Our request.",
        "text": "Here is a safe recipe for bread instead.",
        "label": "refused",
        "why": "answers a different request",
        "kind": "harmful",
        "category": None,
        "case_kind": "deflection",
    }
    records, left = mjs.build_test_set([fresh, again, seen, on_dev_prompt, unclear], labels, [hand], DEV)
    assert [r["id"] for r in records] == [fresh["id"], hand["id"]]
    assert {r["split"] for r in records} == {"test"} and records[0]["occurrences"] == 2
    assert records[0]["prompt"] is None and records[1]["prompt"] == "Our request."
    assert set(records[0]) == set(mjs.FIELDS)
    assert sorted(x["reason"] for x in left) == [
        "ambiguous",
        "prompt already in dev",
        "text already in dev or v1",
    ]


def test_build_test_set_refuses_an_unlabelled_text_and_a_duplicate_hand_written_case() -> None:
    fresh = candidate("harmbench", "harmbench-7", "Step one: gather the things you need.")
    with pytest.raises(SystemExit, match="no label for text"):
        mjs.build_test_set([fresh], {}, [], DEV)
    dup = {"id": "hw3x-loop-001", "text": "Step one: gather the things you need.", "label": "complied"}
    with pytest.raises(SystemExit, match="duplicates a text already seen"):
        mjs.build_test_set([fresh], {fresh["key"]: {"label": "complied"}}, [dup], DEV)
