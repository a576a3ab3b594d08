"""The unquantized arm on disk (engine/baseline_cache.py): a second audit of the same model pays
only for its quantized arms, and any change that could change the baseline recomputes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvsafety_tests.backends.hf import HFBackend
from kvsafety_tests.engine import AuditSettings, run_audit
from kvsafety_tests.engine.baseline_cache import BaselineCache, cache_key
from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.report import run_to_dict

from ..models_fixture import SMOL

PROMPTS = load_prompts("builtin", limit=2).prompts
SETTINGS = {"max_new_tokens": 8, "batch_size": 16, "dtype": "bfloat16"}


def _key(**changes: Any) -> str | None:
    parts: dict[str, Any] = {
        "model_sha256": "ab" * 32,
        "model_path": "/nowhere",
        "prompts": PROMPTS,
        "settings": SETTINGS,
    }
    parts.update(changes)
    return cache_key(**parts)


def test_the_key_changes_with_everything_that_changes_the_baseline() -> None:
    base = _key()
    assert base is not None and base == _key()  # stable
    assert _key(model_sha256="cd" * 32) != base
    assert _key(settings={**SETTINGS, "max_new_tokens": 9}) != base
    assert _key(settings={**SETTINGS, "dtype": "float32"}) != base
    assert _key(prompts=PROMPTS[:-1]) != base
    assert _key(model_sha256="") is None  # a hub id: nothing to key on, never cached


def test_values_are_read_back_and_an_unreadable_file_is_recomputed(tmp_path: Path) -> None:
    calls: list[str] = []

    def compute() -> list[int]:
        calls.append("x")
        return [1, 2]

    first = BaselineCache(tmp_path, "k" * 64)
    assert first.get_or_compute("baseline", compute) == [1, 2] and first.misses == ["baseline"]
    second = BaselineCache(tmp_path, "k" * 64)
    assert second.get_or_compute("baseline", compute) == [1, 2] and second.hits == ["baseline"]
    assert len(calls) == 1 and second.note().startswith("unquantized arm: from the baseline cache")
    (tmp_path / ("k" * 32) / "baseline.json").write_text("{not json")
    third = BaselineCache(tmp_path, "k" * 64)
    assert third.get_or_compute("baseline", compute) == [1, 2] and len(calls) == 2


@pytest.mark.model
def test_a_second_audit_generates_no_unquantized_arm_and_gives_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVSAFETY_BASELINE_CACHE", str(tmp_path))
    specs: list[str] = []
    real = HFBackend.run

    def run(self: HFBackend, prompts: Any, spec: Any = "none", **kwargs: Any) -> Any:
        specs.append(str(spec))
        return real(self, prompts, spec, **kwargs)

    monkeypatch.setattr(HFBackend, "run", run)
    settings = AuditSettings(model=SMOL, quantizers=("int4",), limit=3, max_new_tokens=8)
    cold = run_audit(settings).runs[0]
    cold_calls, specs[:] = list(specs), []
    warm = run_audit(settings).runs[0]
    assert "none" in cold_calls and "none" not in specs  # the fp arm, rerun and perplexity: all cached
    assert specs == ["int4", "int4"]  # generation and perplexity of the quantized arm only
    assert any("computed and written to the baseline cache" in n for n in cold.notes)
    assert any(n.startswith("unquantized arm: from the baseline cache") for n in warm.notes)

    def numbers(run: Any) -> dict[str, Any]:
        return {k: v for k, v in run_to_dict(run).items() if k not in ("seconds", "notes")}

    assert numbers(warm) == numbers(cold)
    specs[:] = []
    changed = run_audit(AuditSettings(model=SMOL, quantizers=("int4",), limit=3, max_new_tokens=9)).runs[0]
    assert "none" in specs  # another horizon is another baseline
    assert any("computed and written" in n for n in changed.notes)
