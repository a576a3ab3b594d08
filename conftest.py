"""The project's own test-suite setup: Hypothesis profiles and torch state hygiene.

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

pytest_plugins = ["pytester"]

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "thorough", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
