"""The report: kept current while the run goes, written at its end, and the gate's verdict.

``ReportWriter`` rewrites the report (status incomplete) whenever a run finishes, so a run killed
outright still leaves every finished run on disk. ``pytest_sessionfinish`` writes the final
report, its views (plots, flip review page, GitHub step summary) and the compare result, and turns
a gate that did not pass into a failing run; ``pytest_terminal_summary`` prints them;
``pytest_unconfigure`` removes the store folder the controller owns.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .options import baseline_report
from .state import GATE, STATE, ControllerState

if TYPE_CHECKING:
    from ..engine import GateSession
    from ..report import Report

__all__ = ["ReportWriter", "pytest_sessionfinish", "pytest_terminal_summary", "pytest_unconfigure"]


class ReportWriter:
    """Rewrites the report (status incomplete) whenever a run finishes, in any process: a run that
    is killed outright (no sessionfinish) still leaves every finished run on disk."""

    def __init__(self, gate: GateSession) -> None:
        self.gate = gate
        self.written = 0

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        known = self.gate.collect_stored_runs()
        if known > self.written:
            from ..report import write_report

            write_report(self.gate.config.report, self.gate.report(in_progress=True))
            self.written = known


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    gate = config.stash.get(GATE, None)
    if gate is None or config.option.collectonly:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes the report
        workeroutput["kvsafety"] = gate.worker_output()
        return
    state = config.stash[STATE]
    if state.progress is not None:
        state.progress.stop()
    problems = list(state.problems)
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        problems.append("the run was interrupted")
    gate.collect_stored_runs()  # runs a worker finished before it died are in the store, not its output
    report = gate.report(problems=problems)
    state.report = report
    from ..report import write_report

    try:
        path = write_report(gate.config.report, report)
    except OSError as e:  # fail closed, with the reason, not an internal error
        state.write_error = f"kvsafety: cannot write the report to {gate.config.report}: {e}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    _write_views(config, report, path.parent, state)
    if config.getoption("kvsafety_compare"):
        from ..gate.compare import compare_reports

        result = compare_reports(
            report, baseline_report(config), config.getoption("kvsafety_compare_fail") or ()
        )
        state.compare_failures, state.compare_warnings = result.failures, result.warnings
    if (not report.gate.passed or state.compare_failures) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _write_views(config: pytest.Config, report: Report, folder: Path, state: ControllerState) -> None:
    from ..report.views import ViewError, append_step_summary, write_plots

    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        append_step_summary(report, summary)
    try:
        state.plots = write_plots(report, folder)
    except ViewError as e:
        config.issue_config_time_warning(pytest.PytestWarning(f"kvsafety: no plots: {e}"), stacklevel=2)
    from ..report.flip_review import write_beside_report

    state.flip_review = write_beside_report(report, folder, option="--kvsafety-store-completions")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.report is None:
        return
    tr = terminalreporter
    if state.write_error is not None:
        tr.section("kvsafety")
        tr.write_line(state.write_error, red=True, bold=True)
        tr.write_line("kvsafety gate: FAILED (no report was written)", red=True, bold=True)
        return
    tr.section("kvsafety")
    from ..report.views import terminal_table

    for line in terminal_table(state.report):
        tr.write_line(line)
    for line in state.compare_warnings:
        tr.write_line(f"compare warning: {line}", yellow=True)
    for violation in state.compare_failures:
        tr.write_line(f"compare FAILED: {violation}", red=True, bold=True)
    if config.getoption("kvsafety_compare"):
        verdict = "FAILED" if state.compare_failures else "passed"
        tr.write_line(f"kvsafety compare against {config.getoption('kvsafety_compare')}: {verdict}")
    gate = config.stash[GATE]
    tr.write_line(f"kvsafety report: {gate.config.report}")
    for plot in state.plots:
        tr.write_line(f"kvsafety plot: {plot}")
    if state.flip_review:
        tr.write_line(f"kvsafety {state.flip_review}")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    if state.progress is not None:
        state.progress.stop()
    if state.owned_store is not None:
        shutil.rmtree(state.owned_store, ignore_errors=True)
        state.owned_store = None
