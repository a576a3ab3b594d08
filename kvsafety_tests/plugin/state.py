"""What the plugin's hooks share through ``config.stash``: the gate session and the controller's state.

``GATE`` holds the process's ``GateSession`` (``kvsafety_tests.engine``), set by
``pytest_configure`` only with ``--kvsafety``: every other hook returns early without it.
``STATE`` holds ``ControllerState``, the bookkeeping of the process that writes the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..engine import GateSession, ProgressFile
    from ..gate.violation import Violation
    from ..report import Report

__all__ = ["COMBO_FIXTURE", "GATE", "STATE", "ControllerState"]


class ControllerState:
    """Controller-side bookkeeping: the store folder it owns, dead workers, the final report."""

    def __init__(self) -> None:
        self.owned_store: Path | None = None
        self.problems: list[str] = []
        self.report: Report | None = None
        self.compare_failures: list[Violation] = []
        self.compare_warnings: list[str] = []
        self.plots: list[Path] = []
        #: One line: where the flip review page went, or why it was not written (flip_review).
        self.flip_review: str | None = None
        self.progress: ProgressFile | None = None
        self.write_error: str | None = None
        #: vllm on GPUs under pytest-xdist: the GPUs each worker is pinned to, by worker index.
        self.worker_gpus: dict[int, list[str]] = {}


GATE: pytest.StashKey[GateSession] = pytest.StashKey()
STATE: pytest.StashKey[ControllerState] = pytest.StashKey()
#: The fixture every kv_* fixture depends on; collection parametrizes it with (model, quantizer).
COMBO_FIXTURE = "_kv_combo"
