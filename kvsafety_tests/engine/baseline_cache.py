"""The unquantized arm on disk: a rerun, or a second gate on the same model, pays only for the
quantized arms.

What is cached per model: the refusal-opening tokens, the fp arm, its rerun at half the batch size
(the noise floor) and its perplexity parts: everything ``ModelAudit`` computes through its memo
before any quantizer runs. The key is a sha256 over everything that changes them: the model's
weights (its sha256) and the tokenizer and chat-template files beside them, the prompt pool (every
prompt's id, kind, label and text), the generation settings (max_new_tokens, batch size, dtype,
device, backend, system prompt, kernels), the judge, and the versions of this package, torch and
transformers. Any change recomputes. A model without an identity (a hub id, which has no local
weights to hash) is never cached.

Files: ``<folder>/<key[:32]>/<name>.json``, written atomically; ``folder`` is
``$KVSAFETY_BASELINE_CACHE``, else ``<cache_dir()>/baselines``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from ..report.atomic import write_atomically

__all__ = ["BASELINE_CACHE_ENV", "FORMAT", "BaselineCache", "baseline_cache_dir", "cache_key"]

BASELINE_CACHE_ENV = "KVSAFETY_BASELINE_CACHE"
#: Bumped when what is stored (or how the engine computes it) changes meaning.
FORMAT = 1
#: Files beside the weights that change the prompts the model sees.
_TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


def baseline_cache_dir() -> Path:
    """``$KVSAFETY_BASELINE_CACHE``, else ``baselines`` under the model cache (models.cache_dir)."""
    if env := os.environ.get(BASELINE_CACHE_ENV):
        return Path(env)
    from ..models import cache_dir

    return cache_dir() / "baselines"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _files_digest(folder: Path) -> dict[str, str]:
    out = {}
    for name in _TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cache_key(*, model_sha256: str, model_path: str, prompts: Any, settings: Mapping[str, Any]) -> str | None:
    """The sha256 naming one model's baseline, or None when the model has no identity to key on."""
    if not model_sha256:
        return None
    pool = hashlib.sha256()
    for p in prompts:
        pool.update(json.dumps([p.id, p.kind, p.label, p.text], ensure_ascii=False).encode("utf-8"))
    identity = {
        "format": FORMAT,
        "model_sha256": model_sha256,
        "model_files": _files_digest(Path(model_path)),
        "prompts": pool.hexdigest(),
        "settings": dict(sorted(settings.items())),
        "versions": {n: _version(n) for n in ("pytest-kvsafety", "torch", "transformers", "vllm")},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class BaselineCache:
    """One model's cached baseline values under ``folder/<key>``; ``hits`` and ``misses`` name
    what was read and what was computed."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder / key[:32]
        self.key = key
        self.hits: list[str] = []
        self.misses: list[str] = []

    def get_or_compute(self, name: str, compute: Callable[[], Any]) -> Any:
        path = self.folder / f"{name}.json"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))["value"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: recompute and rewrite
        else:
            self.hits.append(name)
            return value
        value = compute()
        text = json.dumps({"key": self.key, "value": value})
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda f: f.write(text.encode("utf-8")))
        except OSError:
            pass  # a cache that cannot be written only costs time next run
        self.misses.append(name)
        return json.loads(text)["value"]  # what a reader of the file would get (lists, not tuples)

    def note(self) -> str:
        """One line for the report: where the unquantized arm came from."""
        if self.misses and self.hits:
            how = f"partly from the baseline cache ({', '.join(self.hits)}), the rest computed and cached"
        elif self.hits:
            how = "from the baseline cache"
        else:
            how = "computed and written to the baseline cache"
        return f"unquantized arm: {how} ({self.folder})"
