"""The hooks pytest-kvsafety adds to pytest (registered by the plugin's ``pytest_addhooks``).

Implement them in a ``conftest.py`` or a plugin, like any pytest hook; mark the implementation
``@pytest.hookimpl(optionalhook=True)`` where it must also load without pytest-kvsafety.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..report import RunEntry


@pytest.hookspec
def pytest_kvsafety_run_finished(run: RunEntry, config: pytest.Config) -> None:
    """One audited (model, quantizer) run has finished: ``run`` is its report entry, with every
    docs/report.md field (an error verdict included). Called once per run, in the process that computed
    it (under pytest-xdist, the worker), as soon as the run is known to the gate: a run finished
    here is in the report even if the session stops during or after this call (Ctrl-C, say).
    Use it for per-run callbacks: progress, notifications, streaming results elsewhere."""
