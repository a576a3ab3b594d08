"""The ``kernels`` setting: which implementation quantizes the cache, recorded per run, and never a
number that depends on the choice (the implementations are bit-exact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvsafety_tests.config import ConfigError, resolve_config
from kvsafety_tests.engine import AuditSettings, run_audit
from kvsafety_tests.kernels import AUTO_CPU, BACKENDS, implementation, resolve_kernels
from kvsafety_tests.report import run_to_dict
from kvsafety_tests.settings import KERNELS
from kvsafety_tests.spec import parse_spec

from ..models_fixture import SMOL

#: What may differ between two implementations' reports: which ran, how long it took, and when.
_RUN_ONLY = {"kernels", "seconds"}


def test_the_setting_offers_every_implementation_and_auto() -> None:
    """settings.KERNELS is spelt out (the settings table must not import torch): it must name
    exactly the kernels package's implementations, plus auto."""
    assert KERNELS == ("auto", *BACKENDS)


def test_auto_is_triton_on_cuda_and_the_measured_choice_elsewhere() -> None:
    assert resolve_kernels("auto", "cuda") == "triton"
    assert resolve_kernels("auto", "cuda:1") == "triton"
    assert resolve_kernels("auto", "cpu") == AUTO_CPU
    assert resolve_kernels("compiled", "cpu") == "compiled"
    assert resolve_kernels("torch", "cuda") == "torch"


def test_a_kernel_that_cannot_run_on_the_device_is_one_line_naming_the_valid_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(
        ValueError, match="kernels = 'compiled' is the CPU path; valid on cuda: auto, torch, triton"
    ):
        resolve_kernels("compiled", "cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs the Triton interpreter: set TRITON_INTERPRET=1"):
        resolve_kernels("triton", "cpu")
    with pytest.raises(ConfigError, match=r"^\[tool.kvsafety\] kernels = 'triton' on cpu needs the Triton"):
        resolve_config({"kernels": "triton"}, {}, rootdir=Path("."))
    with pytest.raises(ConfigError, match="kernels = 'torch' needs backend = 'hf'"):
        resolve_config(
            {"kernels": "torch", "backend": "vllm", "quantizers": ["fp8_e5m2"]}, {}, rootdir=Path(".")
        )


@pytest.mark.parametrize(
    ("spec", "compiled_runs"),
    [("int4", "compiled"), ("int2-g32", "compiled"), ("int4-channel", "torch"), ("fp8_e5m2", "torch")],
)
def test_compiled_leaves_what_it_does_not_cover_to_the_reference(spec: str, compiled_runs: str) -> None:
    scheme = parse_spec(spec).layer(0).key
    assert implementation(scheme, "compiled") == compiled_runs
    assert implementation(scheme, "torch") == "torch"
    assert implementation(scheme, "triton") == "triton"


def _audit(kernels: str) -> list[dict[str, Any]]:
    settings = AuditSettings(
        model=SMOL,
        quantizers=("int4", "fp8_e5m2", "int3-channel"),
        limit=2,
        max_new_tokens=8,
        noise_floor=False,
        baseline_cache=False,  # each implementation computes its own fp arm too
        kernels=kernels,
    )
    return [run_to_dict(r) for r in run_audit(settings).runs]


@pytest.fixture(scope="module")
def torch_runs() -> list[dict[str, Any]]:
    return _audit("torch")


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["compiled", "triton"])
def test_an_audit_gives_the_same_report_whichever_kernels_ran(
    kernels: str, torch_runs: list[dict[str, Any]]
) -> None:
    """Triton runs under the interpreter on CPU (conftest.py sets TRITON_INTERPRET=1), natively on
    CUDA; compiled is torch.compile's C++ on CPU. Every field but the implementation and the time
    must match the eager reference's, per prompt and per layer."""
    other = _audit(kernels)
    assert [r["kernels"] for r in torch_runs] == ["torch", "torch", "torch"]
    expected = {"compiled": ["compiled", "torch", "torch"], "triton": ["triton", "triton", "triton"]}[kernels]
    assert [r["kernels"] for r in other] == expected
    assert len(other) == len(torch_runs) == 3
    for ours, reference in zip(other, torch_runs, strict=True):
        assert set(ours) == set(reference)
        differing = [k for k in reference if k not in _RUN_ONLY and ours[k] != reference[k]]
        assert differing == [], (ours["quantizer"], differing)
        assert (
            reference["perplexity_ratio"] is not None and reference["perplexity_ratio"] != 1.0
        )  # it measured
