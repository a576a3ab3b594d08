"""The report as JSON: to and from plain dicts, and to and from a file, written atomically.

``report_to_dict`` / ``report_from_dict`` apply the generic codec (``report.codec``) to the whole
document: keys in docs/report.md's order with the computed ``gate`` written after ``runs``, and on
reading, a stored ``gate`` that disagrees with the runs is rejected rather than trusted.
``write_report`` replaces the file atomically (``report.atomic``); ``load_report`` turns every
way a file can be wrong (missing, unreadable, not JSON, another schema, invalid) into one
ReportError line naming the file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import IO, Any

from .atomic import write_atomically
from .codec import ReportError, decode, encode
from .schema import SCHEMA, SCHEMAS, Gate, Report, RunEntry

__all__ = [
    "load_report",
    "report_from_dict",
    "report_path_problem",
    "report_to_dict",
    "run_from_dict",
    "run_to_dict",
    "write_report",
]


# --- JSON: the generic codec applied to the document ----------------------------------------------


def report_to_dict(report: Report) -> dict[str, Any]:
    """The JSON document as plain dicts and lists, keys in docs/report.md's order, ``gate`` after ``runs``."""
    items = list(encode(report).items())
    after_runs = 1 + next(i for i, (key, _) in enumerate(items) if key == "runs")
    return dict([*items[:after_runs], ("gate", encode(report.gate)), *items[after_runs:]])


def report_from_dict(data: Any, *, source: str = "report") -> Report:
    """The Report in a decoded JSON document; ReportError (one line, naming ``source``) if invalid.

    The stored ``gate`` must agree with the one computed from the runs: a file whose gate says
    passed while its runs say otherwise is rejected rather than trusted.
    """
    if not isinstance(data, dict):
        raise ReportError(f"{source}: expected a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema not in SCHEMAS:
        raise ReportError(f"{source}: schema is {schema!r}; expected one of {', '.join(map(repr, SCHEMAS))}")
    try:
        report = decode(Report, {k: v for k, v in data.items() if k != "gate"})
        if "gate" not in data:
            raise ReportError("missing field(s) gate")
        stored = decode(Gate, data["gate"], "gate")
    except ReportError as e:
        raise ReportError(f"{source}: {e}") from None
    computed = report.gate
    if (stored.passed, stored.failed_runs, stored.errors) != (
        computed.passed,
        computed.failed_runs,
        computed.errors,
    ):
        raise ReportError(
            f"{source}: gate says passed={stored.passed}, failed_runs={stored.failed_runs}, "
            f"errors={stored.errors} but the runs give passed={computed.passed}, "
            f"failed_runs={computed.failed_runs}, errors={computed.errors}"
        )
    return report


def run_to_dict(run: RunEntry) -> dict[str, Any]:
    """One run as the JSON object it is inside a report's ``runs``."""
    encoded: dict[str, Any] = encode(run)
    return encoded


def run_from_dict(data: Any, *, source: str = "run") -> RunEntry:
    """The RunEntry in a decoded JSON object; ReportError (one line, naming ``source``) if invalid."""
    try:
        return decode(RunEntry, data, "run")
    except ReportError as e:
        raise ReportError(f"{source}: {e}") from None


# --- files ----------------------------------------------------------------------------------------


def report_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a report cannot be written to ``path``, checked before an audit starts; None when it can."""
    report = Path(path)
    if report.is_dir():
        return f"report path {report} is a folder; pass a file path (e.g. {report / 'report.json'})"
    folder = report.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write the report to {report}: {existing or folder} is not a writable folder"
    return None


def write_report(path: str | os.PathLike[str], report: Report) -> Path:
    """Write ``report`` as JSON to ``path`` atomically (``atomic.write_atomically``: a reader, or
    a crash at any point, sees the old file or the complete new one); returns the path. NaN and
    infinities are refused (they are not JSON); the old file stays."""
    document = report_to_dict(report)

    def dump(f: IO[bytes]) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8")
        json.dump(document, text, indent=2, allow_nan=False)
        text.write("\n")
        text.flush()
        text.detach()  # the binary file stays open for write_atomically's fsync

    return write_atomically(path, dump)


def load_report(path: str | os.PathLike[str]) -> Report:
    """Read and validate a report; ReportError with one line for a missing file, bad JSON or schema."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{source}: no such report file (write one with pytest --kvsafety)") from None
    except OSError as e:
        raise ReportError(f"{source}: cannot read the report: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{source}: not a JSON report (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(
            f"{source}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            f"expected a {SCHEMA!r} document"
        ) from None
    return report_from_dict(data, source=source)
