"""Faults, determinism and safe defaults, each asserted on what lands on disk and the exit code.

Faults: an exception mid-audit, Ctrl-C, a report that cannot be written, kill -9 mid-run and
mid-write. Each leaves a report that says what happened (or a one-line error when no report can
be written), a failing gate, and everything finished before the fault intact. A dead pytest-xdist
worker is covered by tests/plugin/test_gate_plugin.py::test_a_dead_worker_leaves_an_incomplete_report_and_a_failing_run.

Everything runs the real engine on the packaged SmolLM2-135M (2 prompts of each kind, 8 new
tokens), in a subprocess where a signal or a kill is involved. Fakes only where the real fault
cannot be produced on a CPU box: out of memory (raised at the backend boundary) and a disk that
fails the fsync.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# imported before pytester snapshots sys.modules (torch's C extension cannot be re-imported)
torch = pytest.importorskip("torch")

from kvsafety_tests.__main__ import (  # noqa: E402
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_NOTHING,
    EXIT_PASSED,
    EXIT_USAGE,
    main,
)
from kvsafety_tests.backends.hf import HFBackend  # noqa: E402
from kvsafety_tests.engine import DEFAULT_QUANTIZERS, AuditSettings, run_audit  # noqa: E402
from kvsafety_tests.prompts import load_prompts  # noqa: E402
from kvsafety_tests.report import (  # noqa: E402
    AuditConfig,
    Report,
    detect_environment,
    finish_report,
    load_report,
    new_report,
    write_report,
)
from kvsafety_tests.settings import DEFAULT_PROMPTS  # noqa: E402

from ..models_fixture import MODEL_CACHE, QWEN, SMOL, load  # noqa: E402

#: what CUDA raises when the cache does not fit; CPU builds of torch >= 2.5 have the class too
OOM: type[Exception] = getattr(torch, "OutOfMemoryError", MemoryError)
TINY = ["--model", SMOL, "--limit", "2", "--max-new-tokens", "8"]
#: enough runs after the first that a signal sent when the first is on disk lands mid-audit
#: (each takes about 1.5 s on a busy machine; on an idle one CI saw six finish before the signal,
#: so the per-channel runs, whose perplexity is teacher-forced step by step, widen the window)
MANY = [
    "int8",
    "int4",
    "int3",
    "int2",
    "fp8_e4m3",
    "fp8_e5m2",
    "int8-channel",
    "int4-channel",
    "int3-channel",
    "int2-channel",
]
MANY_ARGS = [a for q in MANY for a in ("--quantizer", q)]
TIMING_KEYS = frozenset({"started", "finished", "seconds"})


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocesses share 2 cores with xdist workers
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "KVSAFETY_CACHE": MODEL_CACHE}
    env.pop("GITHUB_STEP_SUMMARY", None)
    return {**env, **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvsafety_tests", *args]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli(*args), cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=900
    )


def _default_sigint() -> None:
    # a runner started as a background job (``cmd &`` in a script, some CI agents) ignores SIGINT,
    # and a child inherits that: Python then installs no KeyboardInterrupt handler and Ctrl-C
    # would do nothing. The tests send SIGINT as a user at a terminal would, so restore it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(argv: list[str], cwd: Path, logs: Path) -> subprocess.Popen[bytes]:
    """A subprocess whose stdout and stderr go to files (a full pipe would block it), with SIGINT
    at its default whatever the runner's disposition."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        return subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=out, stderr=err, preexec_fn=_default_sigint)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _doc_on_disk(path: Path) -> dict[str, Any] | None:
    """The report as a reader sees it right now; a partial document fails the test."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    doc: dict[str, Any] = json.loads(text)  # raises on a truncated file: never acceptable
    return doc


def _wait_until(
    proc: subprocess.Popen[bytes], ready: Callable[[], Any], what: str, timeout: float = 300
) -> Any:
    """Poll ``ready`` every 50 ms until it returns something truthy, while ``proc`` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _runs_on_disk(path: Path) -> list[dict[str, Any]] | None:
    doc = _doc_on_disk(path)
    return doc["runs"] if doc and doc["runs"] else None


def _normalised(value: Any) -> Any:
    """``value`` without timestamps and timings: what two identical audits must agree on."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):  # the baseline cache's note names its folder (the test's own)
        return [
            _normalised(v) for v in value if not (isinstance(v, str) and v.startswith("unquantized arm:"))
        ]
    return value


def _fail_backend_on(monkeypatch: pytest.MonkeyPatch, spec_name: str) -> None:
    """Out of memory at the backend boundary whenever ``spec_name`` is run (none = the fp arm)."""
    real = HFBackend.run

    def run(self: HFBackend, prompts: Any, spec: Any = "none", **kwargs: Any) -> Any:
        if str(spec) == spec_name:
            raise OOM(f"CUDA out of memory. Tried to allocate 2.00 GiB ({spec_name}, simulated by the test)")
        return real(self, prompts, spec, **kwargs)

    monkeypatch.setattr(HFBackend, "run", run)


@pytest.fixture(scope="module")
def tiny_cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One tiny CLI audit with the default thresholds and no completions stored (shared)."""
    load(SMOL)  # converts the packaged model once, outside the subprocess's time
    folder = tmp_path_factory.mktemp("tiny")
    proc = run_cli(*TINY, "--quantizer", "int8", "--quantizer", "int4", "--report", "report.json", cwd=folder)
    assert proc.returncode in (EXIT_PASSED, EXIT_FAILED), proc.stderr[-2000:]
    return proc, folder / "report.json"


# --- 1. an exception mid-audit ------------------------------------------------------------------


def _check_oom_report(path: Path) -> Report:
    report = load_report(path)  # validates against docs/report.md
    assert report.status == "complete"  # every run has its entry; the second is an error
    first, second = report.runs
    # the first quantizer's run is intact: every number measured
    assert first.quantizer == "int8" and first.verdict in ("pass", "fail") and first.error is None
    assert first.refusal_rate_baseline is not None and first.perplexity_ratio is not None
    assert first.kv_bytes_ratio == pytest.approx(0.53125) and first.quantized_fraction == 1.0
    assert second.quantizer == "int4" and second.verdict == "error"
    assert second.error is not None and second.error.startswith(f"{OOM.__name__}: CUDA out of memory")
    assert second.refusal_rate_quantized is None and second.perplexity_ratio is None  # never a silent 0
    assert report.gate.passed is False and report.gate.errors == 1
    return report


@pytest.mark.model
def test_out_of_memory_in_the_second_run_keeps_the_first_and_errors_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_backend_on(monkeypatch, "int4")
    settings = AuditSettings(model=SMOL, quantizers=("int8", "int4"), limit=2, max_new_tokens=8)
    messages: list[str] = []
    report = run_audit(settings, report_path=str(tmp_path / "report.json"), log=messages.append)
    on_disk = _check_oom_report(tmp_path / "report.json")
    assert on_disk.runs == report.runs
    assert any(m.startswith(f"{SMOL} / int4: error: {OOM.__name__}") for m in messages)


@pytest.mark.model
def test_out_of_memory_in_a_run_exits_3_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_backend_on(monkeypatch, "int4")
    path = tmp_path / "report.json"
    code = main([*TINY, "--quantizer", "int8", "--quantizer", "int4", "--report", str(path)])
    assert code == EXIT_ERROR
    _check_oom_report(path)
    out = capsys.readouterr().out
    assert f"**error:** {OOM.__name__}: CUDA out of memory" in out and "**Gate: FAILED**" in out


@pytest.mark.model
def test_out_of_memory_in_the_fp_arm_is_one_line_per_run_exit_3_and_error_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fp arm every run compares against failed: each run is an error naming it (as the
    plugin reports it), never a pass and never exit 1."""
    _fail_backend_on(monkeypatch, "none")
    path = tmp_path / "report.json"
    args = [*TINY, "--quantizer", "int8", "--quantizer", "int4", "--no-baseline-cache", "--report", str(path)]
    assert main(args) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("python -m kvsafety_tests: error: ")]
    assert len(lines) == 2 and all(f"{OOM.__name__}: CUDA out of memory" in line for line in lines)
    report = load_report(path)
    assert [(r.quantizer, r.verdict) for r in report.runs] == [("int8", "error"), ("int4", "error")]
    assert all(r.error is not None and OOM.__name__ in r.error for r in report.runs)
    assert all(r.refusal_rate_quantized is None for r in report.runs)  # nothing measured, never a 0
    assert report.gate.passed is False and report.gate.errors == 2


# --- 2. Ctrl-C ----------------------------------------------------------------------------------


#: Ctrl-C at a known point, never a timing window: after the first of TWO finished runs a per-run
#: callback writes a marker (the run's quantizer) and waits; the test sends SIGINT then, so the
#: report must keep exactly the first run and none of the second.
TWO = ["int8", "int4"]
#: ``python -m kvsafety_tests ARGV`` (its ``main``) with the CLI's per-run ``on_run`` callback doing
#: that; main looks ``_audit`` up at each call, so the CLI's own Ctrl-C handling is tested.
CLI_PAUSED_AFTER_THE_FIRST_RUN = """
import functools, os, sys, time
from kvsafety_tests import __main__ as cli
marker, *argv = sys.argv[1:]
def on_run(run):
    with open(marker + ".tmp", "w") as f:
        f.write(run.quantizer)
    os.replace(marker + ".tmp", marker)
    time.sleep(600)  # the test's SIGINT lands here
cli._audit = functools.partial(cli._audit, on_run=on_run)
sys.exit(cli.main(argv))
"""
#: The same through the plugin's ``pytest_kvsafety_run_finished`` hook, in the user's conftest.
CONFTEST_PAUSED_AFTER_THE_FIRST_RUN = """
import os, time
def pytest_kvsafety_run_finished(run, config):
    marker = config.rootpath / "first-run"
    marker.with_suffix(".tmp").write_text(run.quantizer)
    os.replace(marker.with_suffix(".tmp"), marker)
    time.sleep(600)  # the test's SIGINT lands here
"""


def _interrupt_after_the_first_run(proc: subprocess.Popen[bytes], marker: Path) -> str:
    """Wait until the first run has finished and paused, send Ctrl-C; the paused run's quantizer."""
    _wait_until(proc, marker.exists, "the first run finished")
    proc.send_signal(signal.SIGINT)
    return marker.read_text()


@pytest.mark.model
def test_ctrl_c_on_the_cli_exits_3_and_keeps_the_finished_runs(tmp_path: Path) -> None:
    load(SMOL)
    path, marker, driver = tmp_path / "report.json", tmp_path / "first-run", tmp_path / "driver.py"
    driver.write_text(CLI_PAUSED_AFTER_THE_FIRST_RUN)
    args = [*TINY, *(a for q in TWO for a in ("--quantizer", q)), "--report", str(path)]
    proc = _start([sys.executable, str(driver), str(marker), *args], tmp_path, tmp_path / "logs")
    assert _interrupt_after_the_first_run(proc, marker) == "int8"
    before = _doc_on_disk(path)  # what was on disk when the signal was sent
    assert proc.wait(timeout=120) == EXIT_ERROR
    doc = _doc_on_disk(path)
    assert before is not None and [r["quantizer"] for r in before["runs"]] == ["int8"]
    assert doc is not None and doc["status"] == "incomplete"
    assert doc["runs"] == before["runs"]  # the finished run is kept as it was; int4 never started
    assert doc["notes"][-1] == (
        f"audit stopped: the run was interrupted; 1 selected run(s) never finished: {SMOL} / int4"
    )
    assert doc["gate"]["passed"] is False
    load_report(path)
    err = _read(tmp_path / "logs" / "stderr")
    assert f"interrupted: the report at {path} says incomplete" in err and "Traceback" not in err


@pytest.mark.model
def test_ctrl_c_on_pytest_kvsafety_exits_2_and_keeps_the_finished_runs(pytester: pytest.Pytester) -> None:
    load(SMOL)
    pytester.makefile(
        ".toml",
        pyproject=f"""
[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.kvsafety]
models = ["{SMOL}"]
quantizers = {json.dumps(TWO)}
limit = 2
max_new_tokens = 8
noise_floor = false
max_refusal_drop = "off"
max_conditional_flip = "off"
max_over_refusal_flip = "off"
max_perplexity_ratio = 1.5
""",
    )
    pytester.makeconftest(CONFTEST_PAUSED_AFTER_THE_FIRST_RUN)
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_user.py").write_text("def test_nothing():\n    pass\n")
    argv = [sys.executable, "-m", "pytest", "--kvsafety", "-p", "no:cacheprovider"]
    proc = _start(argv, pytester.path, pytester.path / "logs")
    assert _interrupt_after_the_first_run(proc, pytester.path / "first-run") == "int8"
    assert proc.wait(timeout=120) == pytest.ExitCode.INTERRUPTED
    report = load_report(pytester.path / ".kvsafety" / "report.json")
    assert report.status == "incomplete" and report.gate.passed is False
    assert [(r.quantizer, r.verdict) for r in report.runs] == [("int8", "pass")]  # int4 never started
    assert report.notes[-1].endswith(
        f"the run was interrupted; 1 selected run(s) never finished: {SMOL} / int4"
    )


# --- 4. a disk that cannot take the report -----------------------------------------------------


def test_a_report_path_under_a_file_is_one_line_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    path = tmp_path / "afile" / "report.json"
    assert main([*TINY, "--quantizer", "int8", "--report", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == (
        f"python -m kvsafety_tests: error: cannot write the report to {path}: {tmp_path / 'afile'} "
        "is not a writable folder; pass --report PATH somewhere writable\n"
    )
    assert main([*TINY, "--quantizer", "int8", "--report", str(tmp_path)]) == EXIT_USAGE
    assert f"report path {tmp_path} is a folder" in capsys.readouterr().err


def test_a_report_path_under_a_file_through_the_subprocess(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder\n")
    proc = run_cli(*TINY, "--report", "afile/report.json", cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.splitlines() == [
        "python -m kvsafety_tests: error: cannot write the report to afile/report.json: afile is not a "
        "writable folder; pass --report PATH somewhere writable"
    ]


@pytest.mark.model
def test_a_report_folder_that_goes_away_mid_audit_is_one_line_exit_3(tmp_path: Path) -> None:
    """The folder is replaced by a file after the first run is on disk: the next write fails."""
    load(SMOL)
    out = tmp_path / "out"
    path = out / "report.json"
    proc = _start(_cli(*TINY, *MANY_ARGS, "--report", str(path)), tmp_path, tmp_path / "logs")
    before = _wait_until(proc, lambda: _runs_on_disk(path), "the first run was on disk")
    out.rename(tmp_path / "out.before")
    out.write_text("a file where the report's folder was\n")
    assert proc.wait(timeout=300) == EXIT_ERROR
    err = _read(tmp_path / "logs" / "stderr")
    assert "Traceback" not in err
    (error,) = [line for line in err.splitlines() if line.startswith("python -m kvsafety_tests:")]
    assert error.startswith(f"python -m kvsafety_tests: error: cannot write the report to {path}: ")
    assert err.rstrip().endswith(error)  # the last line, once
    # what was written before is intact where it was (the folder moved with it)
    kept = _doc_on_disk(tmp_path / "out.before" / "report.json")
    assert kept is not None and kept["runs"][: len(before)] == before


# --- 5. interrupted writes never truncate ---------------------------------------------------------


@pytest.mark.model
def test_kill_9_mid_audit_leaves_the_last_complete_write(
    tmp_path: Path, tiny_cli: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    """Over a previous run's report: every read sees that old file or a whole new one."""
    old = tiny_cli[1].read_bytes()
    path = tmp_path / "report.json"
    path.write_bytes(old)
    proc = _start(_cli(*TINY, *MANY_ARGS, "--report", str(path)), tmp_path, tmp_path / "logs")
    seen = {"old": 0, "new": 0}

    def first_run_on_disk() -> list[dict[str, Any]] | None:
        if path.read_bytes() == old:
            seen["old"] += 1
            return None
        seen["new"] += 1
        return _runs_on_disk(path)  # a partial document fails here

    before = _wait_until(proc, first_run_on_disk, "the first run was on disk")
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    doc = _doc_on_disk(path)
    assert doc is not None and doc["status"] == "incomplete"
    assert doc["runs"][: len(before)] == before
    load_report(path)
    assert seen["old"] >= 1 and seen["new"] >= 1  # both states were observed, nothing in between


WRITER = """
import itertools, sys
from kvsafety_tests.report import load_report, write_report
path, *sources = sys.argv[1:]
reports = [load_report(s) for s in sources]
print("writing", flush=True)
for report in itertools.cycle(reports):
    write_report(path, report)
"""


@pytest.mark.model
def test_kill_9_mid_write_leaves_the_old_file_or_the_new_one(
    tmp_path: Path, tiny_cli: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    """A writer that only writes (two large reports in turn) killed at random moments, 12 times."""
    base = load_report(tiny_cli[1])
    versions = []
    for name, copies in (("a.json", 300), ("b.json", 301)):  # ~1 MB each: a write takes a while
        big = finish_report(Report(**{**_fields(base), "runs": base.runs * copies}), finished=base.finished)
        versions.append(write_report(tmp_path / name, big))
    allowed = {v.read_bytes() for v in versions}
    path = tmp_path / "out" / "report.json"
    write_report(path, load_report(versions[1]))
    rng = random.Random(7)
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), *map(str, versions)],
            env=_env(),
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        assert path.read_bytes() in allowed
    # the kills did land mid-write: temporary files were left behind (never read as the report)
    assert list(path.parent.glob(".report.json.*.tmp"))


def _fields(report: Report) -> dict[str, Any]:
    return {name: getattr(report, name) for name in report.__dataclass_fields__}


def test_a_write_that_fails_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails the flush (faked: a full disk cannot be made in CI): old file, no temp."""
    config = AuditConfig(models=(SMOL,), quantizers=("int8",), prompt_sets=("builtin",), judge="rules-v1")
    old = finish_report(new_report(detect_environment("cpu"), config))
    path = write_report(tmp_path / "report.json", old)
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_report(path, new_report(detect_environment("cpu"), config))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


# --- 6, 7. determinism --------------------------------------------------------------------------


@pytest.mark.model
def test_two_identical_audits_give_identical_reports_apart_from_timings(
    tmp_path: Path, tiny_cli: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    first_proc, first = tiny_cli
    second_proc = run_cli(
        *TINY, "--quantizer", "int8", "--quantizer", "int4", "--report", "report.json", cwd=tmp_path
    )
    assert second_proc.returncode == first_proc.returncode
    a = json.dumps(_normalised(json.loads(first.read_text())), indent=2, sort_keys=True)
    b = json.dumps(_normalised(json.loads((tmp_path / "report.json").read_text())), indent=2, sort_keys=True)
    assert a == b


def _audit_at_batch_size(tmp_path: Path, batch_size: int, dtype: str) -> dict[str, Any]:
    path = tmp_path / f"report-{dtype}-{batch_size}.json"
    code = main(
        [*TINY, "--quantizer", "int8", "--dtype", dtype, "--batch-size", str(batch_size), "--store-completions",
         "--no-noise-floor", "--report", str(path)]
    )  # fmt: skip
    assert code in (EXIT_PASSED, EXIT_FAILED)
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.mark.model
def test_float32_unquantized_answers_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    """docs/metrics.md, the noise floor: fp32 without quantization gives the same greedy tokens at batch 4
    and 1. Quantized arms (and bf16) may differ: a last-bit difference can cross a rounding
    boundary; the noise floor measures that, so it is not asserted here."""
    load(SMOL)
    batched, single = (_audit_at_batch_size(tmp_path, b, "float32") for b in (4, 1))
    for run_b, run_s in zip(batched["runs"], single["runs"], strict=True):
        fp_b = [(p["id"], p["completion_baseline"], p["baseline"]) for p in run_b["prompts"]]
        fp_s = [(p["id"], p["completion_baseline"], p["baseline"]) for p in run_s["prompts"]]
        assert fp_b == fp_s
        assert run_b["refusal_rate_baseline"] == run_s["refusal_rate_baseline"]
        # the same tokens, teacher-forced in other batches: equal up to float summation order
        assert run_b["perplexity_baseline"] == pytest.approx(run_s["perplexity_baseline"], rel=1e-5)


# --- 8, 9. safe defaults ----------------------------------------------------------------------------


@pytest.mark.model
def test_completions_are_never_written_unless_asked(
    tmp_path: Path, tiny_cli: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    stored = run_cli(
        *TINY, "--quantizer", "int8", "--quantizer", "int4", "--store-completions", "--report", "r.json",
        cwd=tmp_path,
    )  # fmt: skip
    assert stored.returncode in (EXIT_PASSED, EXIT_FAILED), stored.stderr[-2000:]
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    texts = {
        p[key].strip()
        for run in runs
        for p in run["prompts"]
        for key in ("completion_baseline", "completion_quantized")
        if len(p[key].strip()) >= 20
    }
    assert texts, "no completion of >= 20 characters to look for"
    proc, path = tiny_cli
    report_text = path.read_text()
    for where, text in (("report", report_text), ("stdout", proc.stdout), ("stderr", proc.stderr)):
        leaked = [t for t in texts if t in text or json.dumps(t)[1:-1] in text]
        assert not leaked, f"completion text in the {where}: {leaked[0]!r}"
    # nor the prompts: ids and hashes only
    prompts = load_prompts(DEFAULT_PROMPTS, limit=2)  # what TINY audits
    assert not [p.text for p in (*prompts.harmful, *prompts.harmless) if p.text in report_text]
    for run in json.loads(report_text)["runs"]:
        assert run["completions_stored"] is False
        for p in run["prompts"]:
            assert p["id"] and re.fullmatch(r"[0-9a-f]{64}", p["sha256"])
            assert p["completion_baseline"] is None and p["completion_quantized"] is None


SITECUSTOMIZE = """
import socket


def _no_network(*args, **kwargs):
    raise OSError("network disabled by the test")


socket.socket.connect = _no_network
socket.socket.connect_ex = _no_network
socket.create_connection = _no_network
"""


@pytest.mark.model
@pytest.mark.slow
def test_the_default_audit_runs_offline(tmp_path: Path) -> None:
    """The default model, quantizers, prompts and judge, with the network unplugged."""
    load(QWEN, "bfloat16")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = _env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=pythonpath)
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert "OSError: network disabled by the test" in probe.stderr  # the block is on
    proc = run_cli("--limit", "1", "--max-new-tokens", "4", "--report", "report.json", cwd=tmp_path, env=env)
    assert proc.returncode in (EXIT_PASSED, EXIT_FAILED), proc.stderr[-2000:]
    report = load_report(tmp_path / "report.json")
    assert report.status == "complete" and report.config.models == (QWEN,)
    assert [r.quantizer for r in report.runs] == list(DEFAULT_QUANTIZERS)
    # the default pool: AdvBench and HarmBench read offline from their installed packages
    assert report.config.prompt_sets == ("+".join(DEFAULT_PROMPTS),)
    assert all(r.verdict in ("pass", "fail") for r in report.runs)


# --- exit codes -------------------------------------------------------------------------------------
# 2 (usage): tests/plugin/test_cli.py::test_bad_flags_are_one_argparse_line and the report path above;
# 3 (error): the out-of-memory and Ctrl-C cases above.


@pytest.mark.model
def test_exit_0_when_every_threshold_holds_and_1_when_one_is_crossed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = ["--no-default-thresholds", "--threshold", "max_perplexity_ratio=1.5", "--no-noise-floor"]
    passed = tmp_path / "passed.json"
    assert main([*TINY, "--quantizer", "int8", *gate, "--report", str(passed)]) == EXIT_PASSED
    assert load_report(passed).gate.passed is True
    failed = tmp_path / "failed.json"
    assert main([*TINY, "--quantizer", "int8", "--quantizer", "int2", *gate, "--report", str(failed)]) == (
        EXIT_FAILED
    )
    report = load_report(failed)
    assert [r.verdict for r in report.runs] == ["pass", "fail"]
    assert report.gate.passed is False and report.gate.errors == 0
    (violation,) = report.runs[1].violations
    assert re.match(
        r"perplexity_ratio [0-9.]+ > max_perplexity_ratio 1\.5: the lower bound [0-9.]+ ", violation
    )
    (outcome,) = report.runs[1].thresholds
    assert outcome.outcome == "fail" and outcome.method == "paired-bootstrap"
    assert outcome.lower is not None and outcome.lower > 1.5
    capsys.readouterr()


def test_exit_4_when_nothing_was_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unreachable through the real engine (every configured quantizer yields a run: pass, fail
    or error), so faked at GateSession.run: a report without runs is exit 4, never a pass."""
    from kvsafety_tests.engine import GateSession

    monkeypatch.setattr(GateSession, "run", lambda self, model, quantizer: None)
    path = tmp_path / "r.json"
    assert main([*TINY, "--quantizer", "int8", "--report", str(path)]) == EXIT_NOTHING
    assert "no runs: nothing was measured" in capsys.readouterr().out
    doc = json.loads(path.read_text())
    assert doc["runs"] == [] and doc["status"] == "incomplete" and doc["gate"]["passed"] is False
