"""``python -m kvsafety_tests``: the same audit as ``pytest --kvsafety``, without pytest.

It takes the keys of the settings table (settings.py) as ``--KEY`` options and reads
``[tool.kvsafety]`` from the project's pyproject.toml, like the plugin; the options win.

Exit codes: 0 gate passed, 1 gate failed on a threshold, 2 bad usage (a report path that cannot
be written included), 3 operational error (a run errored: its verdict is error; or the audit could
not finish: the report says incomplete, or could not be written), 4 nothing measured.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, find_pyproject, load_pyproject_table, resolve_config
from .settings import GateConfig, add_options, overrides_from

__all__ = ["EXIT_ERROR", "EXIT_FAILED", "EXIT_NOTHING", "EXIT_PASSED", "EXIT_USAGE", "build_parser", "main"]

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR, EXIT_NOTHING = 0, 1, 2, 3, 4
_PROG = "python -m kvsafety_tests"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=_PROG,
        description="Audit models' refusals under KV-cache quantizers and write the JSON report. Takes "
        "the keys of [tool.kvsafety] (read from the project's pyproject.toml) as options; the options win.",
    )
    add_options(p.add_argument, prefix="")
    p.add_argument(
        "--pyproject",
        default=None,
        metavar="PATH",
        help="the pyproject.toml whose [tool.kvsafety] table applies (default: the nearest one at or "
        "above the working directory)",
    )
    return p


def _config(args: argparse.Namespace) -> GateConfig:
    if args.pyproject is not None:
        pyproject: Path | None = Path(args.pyproject)
        if not pyproject.is_file():  # type: ignore[union-attr]
            raise ConfigError(f"--pyproject {args.pyproject!r} is not a file")
    else:
        pyproject = find_pyproject(Path.cwd())
    table = load_pyproject_table(pyproject) if pyproject is not None else {}
    rootdir = pyproject.parent if pyproject is not None else Path.cwd()
    return resolve_config(table, overrides_from(vars(args), prefix=""), rootdir=rootdir, prefix="")


def _error(message: str) -> None:
    print(f"{_PROG}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    from .report import report_path_problem

    problem = report_path_problem(config.report)
    if problem is not None:
        _error(f"{problem}; pass --report PATH somewhere writable")
        return EXIT_USAGE
    from .engine import GateSession, SharedStore, cuda_count, pick_device
    from .models import check_model

    try:  # what can be checked without the model is usage, before any model loads
        for model in config.models:
            check_model(model)
        device = pick_device(config.device, worker_index=None, cuda_count=cuda_count(config.device))
        with tempfile.TemporaryDirectory(prefix="kvsafety-") as store:
            gate = GateSession(config, SharedStore(store), device=device)  # loads prompts and judge
            return _audit(gate, config)
    except ValueError as e:
        _error(str(e))
        return EXIT_USAGE


def _audit(gate: Any, config: GateConfig, *, on_run: Callable[[Any], None] | None = None) -> int:
    """Every (model, quantizer) in order, the report rewritten after each run (a crash leaves
    what was done, status incomplete). ``on_run``: called with each run once the report on disk
    holds it (the CLI's counterpart of the plugin's ``pytest_kvsafety_run_finished`` hook)."""
    from .report import to_markdown, write_report

    path = config.report
    gate.expected.update(config.combos())
    try:
        write_report(path, gate.report(in_progress=True))
        for model, quantizer in config.combos():
            run = gate.run(model, quantizer)
            write_report(path, gate.report(in_progress=True))
            if on_run is not None:
                on_run(run)
        report = gate.report()
        write_report(path, report)
    except OSError as e:  # the report could not be written (disk full, folder gone)
        _error(f"cannot write the report to {path}: {e}")
        return EXIT_ERROR
    except BaseException as e:  # Ctrl-C, out of memory in an fp arm, ...: never exit 1 ("failed")
        reason = "the run was interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError):
            write_report(path, gate.report(problems=[f"audit stopped: {reason}"]))
        if isinstance(e, KeyboardInterrupt):
            print(f"interrupted: the report at {path} says incomplete", file=sys.stderr)
        else:
            _error(f"the audit stopped: {reason}; the report at {path} says incomplete")
        return EXIT_ERROR
    print(to_markdown(report))
    for run in report.runs:  # one line per run that measured nothing, like the plugin's error items
        if run.verdict == "error":
            _error(f"{run.model} / {run.quantizer}: {run.error}")
    from .report.flip_review import write_beside_report

    print(write_beside_report(report, path.parent, option="--store-completions"), file=sys.stderr)
    if not report.runs:
        return EXIT_NOTHING
    if report.gate.errors:
        return EXIT_ERROR
    return EXIT_PASSED if report.gate.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
