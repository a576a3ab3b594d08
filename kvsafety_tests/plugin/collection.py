"""What ``pytest --kvsafety`` collects: the gate items, and the kv_* fixtures' (model, quantizer).

``pytest_generate_tests`` parametrizes a user's tests that use the kv_* fixtures with every
configured (model, quantizer); ``pytest_collection_modifyitems`` adds the gate items
(``plugin.items``) and marks every audit item ``kvsafety``; ``pytest_collection_finish`` tells the
session which runs were selected, so one that never finishes makes the report incomplete.
Without ``--kvsafety`` each hook returns at once.
"""

from __future__ import annotations

import pytest

from .state import COMBO_FIXTURE, GATE

__all__ = ["combo_of", "pytest_collection_finish", "pytest_collection_modifyitems", "pytest_generate_tests"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if COMBO_FIXTURE not in metafunc.fixturenames:
        return
    gate = metafunc.config.stash.get(GATE, None)
    if gate is None:
        return  # without --kvsafety the kv_* fixtures skip
    combos = gate.config.combos()
    metafunc.parametrize(COMBO_FIXTURE, combos, ids=[f"{m}-{q}" for m, q in combos])


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so those select our items too
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    gate = config.stash.get(GATE, None)
    if gate is None:
        return  # without --kvsafety the plugin leaves every item as it found it
    from .items import gate_items

    items.extend(gate_items(session, gate))
    for item in items:
        if combo_of(item) is not None and item.get_closest_marker("kvsafety") is None:
            item.add_marker(pytest.mark.kvsafety)


def pytest_collection_finish(session: pytest.Session) -> None:
    gate = session.config.stash.get(GATE, None)
    if gate is None:
        return
    for item in session.items:
        combo = combo_of(item)
        if combo is not None:
            gate.expected.add(combo)


def combo_of(item: pytest.Item) -> tuple[str, str] | None:
    """The (model, quantizer) an item audits: a gate item's, or a kv_* test's parameter; else None."""
    from .items import GateItem

    if isinstance(item, GateItem):
        return item.combo
    callspec = getattr(item, "callspec", None)
    if callspec is not None and COMBO_FIXTURE in callspec.params:
        model, quantizer = callspec.params[COMBO_FIXTURE]
        return (model, quantizer)
    return None
