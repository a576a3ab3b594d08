"""The pytest11 entry point: options, markers and the GPU skip. Thin wiring only.

Cheap by design: importing this module (which pytest does in every run where the package is
installed) imports nothing heavier than the spec parser. torch is imported only when a collected
test carries the ``gpu`` marker, to ask whether CUDA is there.
"""

from __future__ import annotations

import argparse

import pytest

from .spec import SpecError, parse_spec

__all__ = ["MARKERS"]

MARKERS: dict[str, str] = {
    "gpu": "needs a CUDA GPU; skipped with the reason when torch sees none",
    "kvsafety": "a KV-cache safety audit test (collected or written against the kv_* fixtures)",
    "slow": "takes minutes on a 2-core CPU (full prompt sets, real-model sweeps)",
}


def _spec_arg(text: str) -> str:
    """argparse type for quantizer specs: bad strings fail on the command line, before any model loads."""
    try:
        return str(parse_spec(text))
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvsafety", "KV-cache quantization safety gate (pytest-kvsafety)")
    group.addoption(
        "--kvsafety",
        action="store_true",
        default=False,
        help="run the KV-cache safety audit and gate on its thresholds (default: off)",
    )
    group.addoption(
        "--kvsafety-quantizer",
        action="append",
        type=_spec_arg,
        default=None,
        metavar="SPEC",
        help="quantizer spec to audit, repeatable (e.g. int4, kivi2, fp8_e5m2, int4-g64;L3=none); "
        "default: the [tool.kvsafety] quantizers",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if config.getoption("kvsafety"):
        # Fail closed: the audit engine is not part of this release yet, and a gate that cannot
        # measure must never read as a pass.
        raise pytest.UsageError(
            "--kvsafety: the audit engine is not available in pytest-kvsafety "
            f"{_version()}; nothing was measured, so the gate cannot pass"
        )


def _version() -> str:
    from . import __version__

    return __version__


def _cuda_skip_reason() -> str | None:
    """None when a CUDA GPU is usable, else why not (names what is missing)."""
    try:
        import torch
    except ImportError:
        return "needs a CUDA GPU: torch is not installed"
    if not torch.cuda.is_available():
        build = "CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        return f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _cuda_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in gpu_items:
        item.add_marker(skip)
