"""The kv_* fixtures: a user's own tests written against the audited runs.

Each test that asks for one is parametrized with every configured (model, quantizer)
(``plugin.collection``); ``kv_audit`` is that run's ``RunEntry``, computed once per pytest run
however many tests ask for it. Without ``--kvsafety`` they skip, saying how to run them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .state import GATE

if TYPE_CHECKING:
    from ..report import RunEntry

__all__ = ["_kv_combo", "kv_audit", "kv_bits", "kv_model", "kv_quantizer"]


@pytest.fixture
def _kv_combo(request: pytest.FixtureRequest) -> tuple[str, str]:  # state.COMBO_FIXTURE
    if request.config.stash.get(GATE, None) is None:
        pytest.skip("the kv_* fixtures audit a model: run pytest --kvsafety")
    raise pytest.UsageError(
        "kv_* fixtures were not parametrized: pytest-kvsafety's collection hook did not run"
    )


@pytest.fixture
def kv_model(_kv_combo: tuple[str, str]) -> str:
    """The audited model's name, one per configured model."""
    return _kv_combo[0]


@pytest.fixture
def kv_quantizer(_kv_combo: tuple[str, str]) -> str:
    """The canonical QuantSpec string, one per configured quantizer."""
    return _kv_combo[1]


@pytest.fixture
def kv_bits(_kv_combo: tuple[str, str]) -> float:
    """Nominal bits per stored K/V element of ``kv_quantizer`` (16 for none, 8 for FP8)."""
    from ..spec import nominal_bits, parse_spec

    return nominal_bits(parse_spec(_kv_combo[1]))


@pytest.fixture
def kv_audit(request: pytest.FixtureRequest, _kv_combo: tuple[str, str]) -> RunEntry:
    """The audited run of (kv_model, kv_quantizer): a ``RunEntry`` with every docs/report.md field,
    computed once per pytest run however many tests ask for it."""
    gate = request.config.stash[GATE]
    return gate.run(*_kv_combo)
