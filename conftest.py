"""The project's own test-suite setup: markers, GPU skips, Hypothesis profiles and torch state hygiene.

Profiles (choose with HYPOTHESIS_PROFILE): "ci" (default; what .ci/run uses, sized so the whole
suite stays within its budget on 2 cores), "thorough" (10x the examples, for local runs before
a release), "dev" (few examples, fast iteration).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


# Before anything imports triton: on a CPU machine the Triton kernels run under the interpreter,
# which must be chosen before triton.language is first imported (transformers and torch.compile
# import it too). kernels/triton_common.py raises a clear error if this order is broken.
if "TRITON_INTERPRET" not in os.environ and _no_cuda():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402 (after the TRITON_INTERPRET decision)
from hypothesis import HealthCheck, settings  # noqa: E402

# The baseline cache (engine/baseline_cache.py) is on by default, as for users, but never the
# user's own: each test process starts with an empty one (and each test with its own, below).
if "KVSAFETY_BASELINE_CACHE" not in os.environ:
    import tempfile

    os.environ["KVSAFETY_BASELINE_CACHE"] = tempfile.mkdtemp(prefix="kvsafety-baselines-")

# PyYAML before any in-process pytester run: pytester restores sys.modules after each inner run,
# and a yaml first imported inside one would be dropped while its C loader's constructor tables
# stay bound to the dropped module (later safe_load calls then fail with "could not determine a
# constructor for the tag None"). Imported here it is part of every snapshot.
try:
    import yaml  # noqa: F401
except ImportError:  # the prompt sets that need it say so themselves
    pass

pytest_plugins = ["pytester"]

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "thorough", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: This repository's own markers (the installed plugin registers only ``kvsafety``).
MARKERS: dict[str, str] = {
    "gpu": "needs a CUDA GPU; skipped with the reason when torch sees none",
    "model": "loads a real model (SmolLM2 or Qwen2.5-Coder); deselect with -m 'not model'",
    "slow": "takes minutes on a 2-core CPU (full prompt sets, real-model sweeps)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _cuda_skip_reason() -> str | None:
    """None when a CUDA GPU is usable, else why not (names what is missing)."""
    import torch

    if not torch.cuda.is_available():
        build = "CPU-only torch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        return f"needs a CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, {build})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    reason = _cuda_skip_reason() if gpu_items else None
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _own_baseline_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test starts with an empty baseline cache (on, as for users): no test's numbers, call
    counts or timings depend on which tests ran before it."""
    monkeypatch.setenv("KVSAFETY_BASELINE_CACHE", str(tmp_path_factory.mktemp("baselines")))


@pytest.fixture(autouse=True)
def _restore_torch_state() -> Iterator[None]:
    """Tests must not leak global torch state (default dtype, grad mode, RNG) into each other."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    dtype, grad, rng = torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_rng_state()
    yield
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.set_rng_state(rng)
