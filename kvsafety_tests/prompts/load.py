"""The entry point: ``load_prompts`` resolves a set name (``SET_NAMES``), or several (their union),
and applies pairing with the builtin prompts, the stratified ``limit`` and long context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .benchmarks import _BENCHMARK_LOADERS, BENCHMARKS
from .builtin import _builtin_prompts
from .context import DEFAULT_CONTEXT_WORDS, LONG_SUFFIX, with_long_context
from .files import FILE_FORMATS, FileFormat, FileKind, read_prompt_file
from .model import Prompt, PromptError, PromptSet
from .subset import _check_limit, stratified_subset

__all__ = ["SET_NAMES", "load_prompts"]

_NAMED_SETS: tuple[str, ...] = ("builtin", *BENCHMARKS)
SET_NAMES: tuple[str, ...] = (
    *_NAMED_SETS,
    *(n + LONG_SUFFIX for n in _NAMED_SETS),
    *(f"{prefix}:PATH" for prefix in FILE_FORMATS),
)


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
