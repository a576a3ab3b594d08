"""The backend layer: both backends are a ``Backend`` and see the same tokens, and choosing and
checking a backend imports no model library (a vllm configuration is refused before anything loads)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvsafety_tests.backends import Backend, Completion, eos_ids
from tests.models_fixture import SMOL, load, smol_folder

HEAVY = ("torch", "numpy", "transformers", "triton", "vllm")

CHECK_VLLM = f"""
import json, sys
from kvsafety_tests.backends import check_vllm_settings
from kvsafety_tests.backends.vllm import vllm_cache_args

assert vllm_cache_args("fp8_e4m3;L0=none").skip_layers == (0,)
refused = []
for quantizers in (["fp8_e5m2"], ["int4"]):
    try:
        check_vllm_settings(quantizers)
    except ValueError as e:
        refused.append(str(e))
assert any("int4 cannot run on vllm" in r for r in refused), refused
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
"""


def test_checking_a_vllm_configuration_imports_no_model_library() -> None:
    """A fresh interpreter (this one holds torch already): the vllm backend's module and the settings
    check load, refuse what vLLM cannot express, and leave torch, transformers and vLLM unimported."""
    out = subprocess.run([sys.executable, "-c", CHECK_VLLM], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


class _Tokenizer:
    eos_token_id = 2


def test_eos_ids_merge_the_generation_config_and_the_tokenizer() -> None:
    listed = [5, 2]
    assert eos_ids(listed, _Tokenizer()) == [2, 5]
    assert listed == [5, 2], "the generation config's own list must not grow"
    assert eos_ids(7, _Tokenizer()) == [2, 7]
    assert eos_ids(None, _Tokenizer()) == [2]


def test_capture_refuses_a_backend_without_a_residual_stream() -> None:
    from kvsafety_tests.pcr.subspace import capture

    class NoResidual:
        name = "fake"
        num_layers = 2

        def run(self, prompts: list[str], spec: str, **kwargs: object) -> list[Completion]:
            return [
                Completion(prompt_index=i, token_ids=[], text="", prompt_tokens=1)
                for i in range(len(prompts))
            ]

    with pytest.raises(ValueError, match="the fake backend returned no residual stream"):
        capture(NoResidual(), ["a", "b"], "int4")


@pytest.mark.model
def test_both_backends_are_a_backend_and_see_the_same_tokens() -> None:
    """The vllm backend builds without vLLM (it loads its tokenizer and config; engines start on
    first use), so the protocol and the shared chat template are checked here on SmolLM2."""
    from kvsafety_tests.backends.hf import HFBackend
    from kvsafety_tests.backends.vllm import VLLMBackend

    model, tok = load(SMOL)
    hf, vb = HFBackend(model, tok), VLLMBackend(smol_folder(), dtype="float32")
    assert isinstance(hf, Backend) and isinstance(vb, Backend)
    assert (hf.name, vb.name) == ("hf", "vllm")
    for prompt in ("How do I bake bread?", ""):
        assert hf.encode(prompt) == vb.encode(prompt)
    assert hf.eos_ids == vb.eos_ids
    shape = ("num_layers", "head_dim", "num_kv_heads", "max_positions", "fp16_bytes_per_token")
    assert [getattr(hf, a) for a in shape] == [getattr(vb, a) for a in shape]
