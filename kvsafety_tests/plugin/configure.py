"""``pytest_configure``: with ``--kvsafety``, the configuration read and checked, and the session made.

Without ``--kvsafety`` it registers the marker and refuses any other gate option (nothing would
be audited). With it: the configuration (pyproject's ``[tool.kvsafety]`` and the options) is
resolved and checked, the models, the report folder and the compare baseline are checked (each a
``UsageError`` before any model loads), the device and the shared store are chosen, and the
process's ``GateSession`` goes into ``config.stash``; the sole process or the xdist controller
also registers the ``ReportWriter`` that keeps the report on disk current.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..settings import overrides_from
from .finish import ReportWriter
from .options import MARKERS, baseline_report
from .state import GATE, STATE, ControllerState
from .xdist import plan_worker_gpus

if TYPE_CHECKING:
    from ..engine import Log

__all__ = ["pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    if not config.getoption("kvsafety"):
        given = [k for k, v in vars(config.option).items() if k.startswith("kvsafety_") and v is not None]
        if given:  # a gate option without the gate: never let it read as an audit that passed
            raise pytest.UsageError(
                f"--{given[0].replace('_', '-')} needs --kvsafety: nothing would be audited"
            )
        return
    config.stash[STATE] = state = ControllerState()
    gate_config = _gate_config(config)
    if config.getoption("kvsafety_compare_fail") and not config.getoption("kvsafety_compare"):
        raise pytest.UsageError("--kvsafety-compare-fail needs --kvsafety-compare=PATH: there is no baseline")
    if config.getoption("kvsafety_compare"):
        baseline_report(config)  # a missing or unusable baseline stops the run now
    from ..engine import GateSession, ProgressFile, SharedStore, cuda_count, pick_device
    from ..models import ModelError, check_model, log_progress

    for model in gate_config.models:
        try:
            check_model(model)
        except ModelError as e:
            raise pytest.UsageError(f"kvsafety: models: {e}") from None
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        _check_report_folder(gate_config.report)
        state.worker_gpus = plan_worker_gpus(config, gate_config)
    elif "kvsafety_cuda_visible_devices" in workerinput:
        # before anything in this process touches CUDA (vLLM reads it when its engine starts)
        os.environ["CUDA_VISIBLE_DEVICES"] = workerinput["kvsafety_cuda_visible_devices"]
    if workerinput is not None and "kvsafety_store" in workerinput:
        store_dir = Path(workerinput["kvsafety_store"])
        worker_index: int | None = int(str(workerinput.get("workerid", "gw0")).removeprefix("gw"))
    else:
        store_dir = Path(tempfile.mkdtemp(prefix="kvsafety-"))
        state.owned_store = store_dir
        worker_index = None
    device = pick_device(
        gate_config.device, worker_index=worker_index, cuda_count=cuda_count(gate_config.device)
    )
    store = SharedStore(store_dir)
    progress = ProgressFile(store)
    log: Log = _uncaptured(config, log_progress)
    if worker_index is not None:
        log = progress.writer(f"gw{worker_index}")
    elif config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None):
        state.progress = progress
        progress.tail(log_progress)
    try:
        gate = GateSession(
            gate_config,
            store,
            device=device,
            log=log,
            worker_index=worker_index,
            on_run=lambda run: config.hook.pytest_kvsafety_run_finished(run=run, config=config),
        )
    except ValueError as e:  # prompt set or judge: one line, before any model loads
        raise pytest.UsageError(f"kvsafety: {e}") from None
    config.stash[GATE] = gate
    if workerinput is None:  # the sole process or the xdist controller keeps the file current
        config.pluginmanager.register(ReportWriter(gate), "kvsafety-report-writer")


def _check_report_folder(report: Path) -> None:
    """A report that cannot be written is a usage error now, not a lost result after the audit."""
    from ..report import report_path_problem

    problem = report_path_problem(report)
    if problem is not None:
        raise pytest.UsageError(f"kvsafety: {problem}; pass --kvsafety-report=PATH somewhere writable")


def _uncaptured(config: pytest.Config, log: Log) -> Log:
    """``log`` with pytest's output capture suspended: progress shows while a test runs."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        return log

    def write(message: str) -> None:
        with capman.global_and_fixture_disabled():
            log(message)

    return write


def _gate_config(config: pytest.Config) -> Any:
    from ..config import ConfigError, load_pyproject_table, resolve_config

    try:
        return resolve_config(
            load_pyproject_table(config.rootpath / "pyproject.toml"),
            overrides_from(vars(config.option), prefix="kvsafety-"),
            rootdir=config.rootpath,
        )
    except ConfigError as e:
        raise pytest.UsageError(f"kvsafety: {e}") from None
