"""The pytest11 entry point: options, markers, fixtures and the hooks that wire the gate together.

Cheap by design: without ``--kvsafety`` importing this module (which pytest does in every run
where the package is installed) imports nothing heavier than the spec parser, and the plugin adds
no test. With ``--kvsafety`` the configuration is read and checked in ``pytest_configure`` (a bad
value is a ``UsageError`` before any model loads), the session object computes the audits, and
``pytest_sessionfinish`` writes the report and turns a gate that did not pass into a failing run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .settings import add_options, overrides_from

if TYPE_CHECKING:
    from .gate.violation import Violation
    from .report import Report, RunEntry
    from .session import GateSession, Log, ProgressFile

__all__ = ["MARKERS"]

#: The one marker this plugin registers, in every run (a user's own markers, gpu or slow, are theirs).
MARKERS: dict[str, str] = {
    "kvsafety": "a KV-cache safety audit test (collected or written against the kv_* fixtures)",
}
_GATE: pytest.StashKey[GateSession] = pytest.StashKey()
_STATE: pytest.StashKey[_State] = pytest.StashKey()
_COMBO = "_kv_combo"


class _State:
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


# --- options ----------------------------------------------------------------------------------------


def _compare_fail_arg(text: str) -> Any:
    from .gate.compare import CompareError, parse_compare_check

    try:
        return parse_compare_check(text)
    except CompareError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvsafety", "KV-cache quantization safety gate (pytest-kvsafety)")
    add = group.addoption
    add(
        "--kvsafety",
        action="store_true",
        default=False,
        help="run the KV-cache safety audit and gate on its thresholds (default: off)",
    )
    add_options(add, prefix="kvsafety-")
    add(
        "--kvsafety-compare",
        default=None,
        metavar="PATH",
        help="a saved report.json to compare this run against (a previous release's)",
    )
    add(
        "--kvsafety-compare-fail",
        action="append",
        type=_compare_fail_arg,
        default=None,
        metavar="FIELD:LIMIT",
        help="fail when FIELD got worse than in the --kvsafety-compare report by more than LIMIT: "
        "refusal_drop:2pp (points), perplexity_ratio:5%% (relative), perplexity_ratio:0.02 (absolute)",
    )


# --- configuration ----------------------------------------------------------------------------------


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
    config.stash[_STATE] = state = _State()
    gate_config = _gate_config(config)
    if config.getoption("kvsafety_compare_fail") and not config.getoption("kvsafety_compare"):
        raise pytest.UsageError("--kvsafety-compare-fail needs --kvsafety-compare=PATH: there is no baseline")
    if config.getoption("kvsafety_compare"):
        _load_baseline(config)  # a missing or unusable baseline stops the run now
    from .models import ModelError, check_model, log_progress
    from .session import GateSession, ProgressFile, SharedStore, pick_device

    for model in gate_config.models:
        try:
            check_model(model)
        except ModelError as e:
            raise pytest.UsageError(f"kvsafety: models: {e}") from None
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        _check_report_folder(gate_config.report)
        state.worker_gpus = _plan_worker_gpus(config, gate_config)
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
        gate_config.device, worker_index=worker_index, cuda_count=_cuda_count(gate_config.device)
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
    config.stash[_GATE] = gate
    if workerinput is None:  # the sole process or the xdist controller keeps the file current
        config.pluginmanager.register(_ReportWriter(gate), "kvsafety-report-writer")


class _ReportWriter:
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
            from .report import write_report

            write_report(self.gate.config.report, self.gate.report(in_progress=True))
            self.written = known


def _check_report_folder(report: Path) -> None:
    """A report that cannot be written is a usage error now, not a lost result after the audit."""
    from .report import report_path_problem

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
    from .config import ConfigError, load_pyproject_table, resolve_config

    try:
        return resolve_config(
            load_pyproject_table(config.rootpath / "pyproject.toml"),
            overrides_from(vars(config.option), prefix="kvsafety-"),
            rootdir=config.rootpath,
        )
    except ConfigError as e:
        raise pytest.UsageError(f"kvsafety: {e}") from None


def _load_baseline(config: pytest.Config) -> Report:
    from .gate.compare import CompareError, load_baseline

    try:
        return load_baseline(config.getoption("kvsafety_compare"))
    except CompareError as e:
        raise pytest.UsageError(str(e)) from None


def _plan_worker_gpus(config: pytest.Config, gate_config: Any) -> dict[int, list[str]]:
    """vllm on GPUs with pytest-xdist: each worker's own block of tensor_parallel_size GPUs (vLLM
    engines take most of a GPU's memory, so workers never share). The hf backend places workers
    by ``pick_device`` instead; CPU runs pin nothing."""
    from .session import visible_gpus, worker_gpus

    workers = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    if gate_config.backend != "vllm" or not workers or gate_config.device not in ("cuda", "auto"):
        return {}
    visible = visible_gpus(os.environ, _cuda_count(gate_config.device))
    if not visible and gate_config.device == "auto":
        return {}  # auto on a machine without GPUs: vLLM's CPU platform
    try:
        return {
            i: worker_gpus(i, int(workers), gate_config.tensor_parallel_size, visible)
            for i in range(int(workers))
        }
    except ValueError as e:
        raise pytest.UsageError(f"kvsafety: {e}") from None


def _cuda_count(device: str) -> int:
    if not device.startswith(("cuda", "auto")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    if state.progress is not None:
        state.progress.stop()
    if state.owned_store is not None:
        shutil.rmtree(state.owned_store, ignore_errors=True)
        state.owned_store = None


# --- pytest-xdist -----------------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Controller: every worker shares the controller's store folder, and (vllm on GPUs) gets its
    own GPUs as CUDA_VISIBLE_DEVICES."""
    state = node.config.stash.get(_STATE, None)
    if state is not None and state.owned_store is not None:
        node.workerinput["kvsafety_store"] = str(state.owned_store)
    if state is not None and state.worker_gpus:
        index = int(str(node.workerinput.get("workerid", "gw0")).removeprefix("gw"))
        node.workerinput["kvsafety_cuda_visible_devices"] = ",".join(state.worker_gpus[index])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """Controller: collect a worker's runs; a worker that died makes the report incomplete."""
    gate = node.config.stash.get(_GATE, None)
    if gate is None:
        return
    output = getattr(node, "workeroutput", None) or {}
    data = output.get("kvsafety")
    worker = getattr(getattr(node, "gateway", None), "id", "worker")
    if data is not None:
        gate.merge(data["runs"], data["expected"], source=f"worker {worker}")
    if error is not None or data is None:
        node.config.stash[_STATE].problems.append(f"worker {worker} died ({error or 'no results sent'})")


# --- collection -------------------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _COMBO not in metafunc.fixturenames:
        return
    gate = metafunc.config.stash.get(_GATE, None)
    if gate is None:
        return  # without --kvsafety the kv_* fixtures skip
    combos = gate.config.combos()
    metafunc.parametrize(_COMBO, combos, ids=[f"{m}-{q}" for m, q in combos])


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so those select our items too
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    gate = config.stash.get(_GATE, None)
    if gate is None:
        return  # without --kvsafety the plugin leaves every item as it found it
    from .items import gate_items

    items.extend(gate_items(session, gate))
    for item in items:
        if _combo_of(item) is not None and item.get_closest_marker("kvsafety") is None:
            item.add_marker(pytest.mark.kvsafety)


def pytest_collection_finish(session: pytest.Session) -> None:
    gate = session.config.stash.get(_GATE, None)
    if gate is None:
        return
    for item in session.items:
        combo = _combo_of(item)
        if combo is not None:
            gate.expected.add(combo)


def _combo_of(item: pytest.Item) -> tuple[str, str] | None:
    from .items import GateItem

    if isinstance(item, GateItem):
        return item.combo
    callspec = getattr(item, "callspec", None)
    if callspec is not None and _COMBO in callspec.params:
        model, quantizer = callspec.params[_COMBO]
        return (model, quantizer)
    return None


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def _kv_combo(request: pytest.FixtureRequest) -> tuple[str, str]:
    if request.config.stash.get(_GATE, None) is None:
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
    from .spec import nominal_bits, parse_spec

    return nominal_bits(parse_spec(_kv_combo[1]))


@pytest.fixture
def kv_audit(request: pytest.FixtureRequest, _kv_combo: tuple[str, str]) -> RunEntry:
    """The audited run of (kv_model, kv_quantizer): a ``RunEntry`` with every REPORT.md field,
    computed once per pytest run however many tests ask for it."""
    gate = request.config.stash[_GATE]
    return gate.run(*_kv_combo)


# --- the end of the run -------------------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    gate = config.stash.get(_GATE, None)
    if gate is None or config.option.collectonly:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller writes the report
        workeroutput["kvsafety"] = gate.worker_output()
        return
    state = config.stash[_STATE]
    if state.progress is not None:
        state.progress.stop()
    problems = list(state.problems)
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        problems.append("the run was interrupted")
    gate.collect_stored_runs()  # runs a worker finished before it died are in the store, not its output
    report = gate.report(problems=problems)
    state.report = report
    from .report import write_report

    try:
        path = write_report(gate.config.report, report)
    except OSError as e:  # fail closed, with the reason, not an internal error
        state.write_error = f"kvsafety: cannot write the report to {gate.config.report}: {e}"
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    _write_views(config, report, path.parent, state)
    if config.getoption("kvsafety_compare"):
        from .gate.compare import compare_reports

        result = compare_reports(
            report, _load_baseline(config), config.getoption("kvsafety_compare_fail") or ()
        )
        state.compare_failures, state.compare_warnings = result.failures, result.warnings
    if (not report.gate.passed or state.compare_failures) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _write_views(config: pytest.Config, report: Report, folder: Path, state: _State) -> None:
    from .report.views import ViewError, append_step_summary, write_plots

    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        append_step_summary(report, summary)
    try:
        state.plots = write_plots(report, folder)
    except ViewError as e:
        config.issue_config_time_warning(pytest.PytestWarning(f"kvsafety: no plots: {e}"), stacklevel=2)
    from .report.flip_review import write_beside_report

    state.flip_review = write_beside_report(report, folder, option="--kvsafety-store-completions")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or state.report is None:
        return
    tr = terminalreporter
    if state.write_error is not None:
        tr.section("kvsafety")
        tr.write_line(state.write_error, red=True, bold=True)
        tr.write_line("kvsafety gate: FAILED (no report was written)", red=True, bold=True)
        return
    tr.section("kvsafety")
    from .report.views import terminal_table

    for line in terminal_table(state.report):
        tr.write_line(line)
    for line in state.compare_warnings:
        tr.write_line(f"compare warning: {line}", yellow=True)
    for violation in state.compare_failures:
        tr.write_line(f"compare FAILED: {violation}", red=True, bold=True)
    if config.getoption("kvsafety_compare"):
        verdict = "FAILED" if state.compare_failures else "passed"
        tr.write_line(f"kvsafety compare against {config.getoption('kvsafety_compare')}: {verdict}")
    gate = config.stash[_GATE]
    tr.write_line(f"kvsafety report: {gate.config.report}")
    for plot in state.plots:
        tr.write_line(f"kvsafety plot: {plot}")
    if state.flip_review:
        tr.write_line(f"kvsafety {state.flip_review}")
