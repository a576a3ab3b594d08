"""The entry point: ``load_prompts`` resolves a set name (``SET_NAMES``), or several (their union),
and applies pairing with the builtin prompts, the stratified ``limit`` and long context."""

from __future__ import annotations

from collections.abc import Sequence

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
    seed: int | None = None,
    context_words: int | None = None,
    column: str | None = None,
    category_column: str | None = None,
    kind: FileKind | None = None,
    label_column: str | None = None,
    pair_builtin: bool = True,
) -> PromptSet:
    """Load a prompt set by name (see ``SET_NAMES``), or several: their union, named ``a+b``.

    ``limit``: at most this many harmful and at most this many harmless prompts, a deterministic
    stratified subset (``stratified_subset``: by category; for a union by source and category, so
    each set keeps its share); calibration prompts are never cut, PCR needs all 20. ``seed``: the
    pseudo-random order the subset draws from (``id_rank``; None is the project's fixed order).
    ``context_words``: make every prompt its long variant (``NAME-long`` does this with
    ``DEFAULT_CONTEXT_WORDS``; in a union, one long set makes every prompt long). ``column``,
    ``category_column``, ``kind``, ``label_column``: only for file sets, they override the
    format's defaults (``FileFormat``). ``pair_builtin``: add the builtin harmless and calibration
    prompts when the set (or union) has none. Every prompt keeps its ``source``; in a union, a
    prompt whose text an earlier set already holds is kept once (the first set's).
    """
    _check_limit(limit)
    names = [name] if isinstance(name, str) else list(dict.fromkeys(name))
    if not names:
        raise PromptError(f"no prompt set given; valid: {', '.join(SET_NAMES)}")
    parts = [
        _read_set(n, column=column, category_column=category_column, kind=kind, label_column=label_column)
        for n in names
    ]
    prompts = _union([prompts for _, prompts, _ in parts])
    shown = " + ".join(names)
    notes: list[str] = []
    if len(parts) > 1:
        notes.append(f"union of {', '.join(names)}: {len(prompts)} distinct prompts")
    if pair_builtin:
        for k in ("harmless", "calibration"):
            if not any(p.kind == k for p in prompts):
                prompts += [p for p in _builtin_prompts() if p.kind == k]
                notes.append(f"{k} prompts: builtin ({shown} has none)")
    if limit is not None:
        by = "category" if len(parts) == 1 else "source and category"
        kept = {
            p.id
            for k in ("harmful", "harmless")
            for p in stratified_subset(
                [p for p in prompts if p.kind == k],
                limit,
                group=(lambda p: p.category) if len(parts) == 1 else (lambda p: f"{p.source}/{p.category}"),
                seed=seed,
            )
        }
        prompts = [p for p in prompts if p.kind == "calibration" or p.id in kept]
        drawn = "" if not seed else f", drawn with prompt_seed {seed}"
        notes.append(
            f"limit {limit}: a subset of the harmful and of the harmless prompts stratified by {by}{drawn}"
        )
    prompt_set = PromptSet("+".join(base for base, _, _ in parts), tuple(prompts), tuple(notes))
    if context_words is None and any(long for _, _, long in parts):
        context_words = DEFAULT_CONTEXT_WORDS
    if context_words is not None:
        prompt_set = with_long_context(prompt_set, context_words=context_words)
    return prompt_set


def _union(parts: Sequence[list[Prompt]]) -> list[Prompt]:
    """The prompts of every part in order; a later part's prompt whose id, or kind and text, an
    earlier part already holds is left out (duplicates within one set are that set's own)."""
    out: list[Prompt] = list(parts[0])
    for part in parts[1:]:
        ids = {p.id for p in out}
        texts = {(p.kind, p.text) for p in out}
        out += [p for p in part if p.id not in ids and (p.kind, p.text) not in texts]
    return out


def _read_set(
    name: str,
    *,
    column: str | None = None,
    category_column: str | None = None,
    kind: FileKind | None = None,
    label_column: str | None = None,
) -> tuple[str, list[Prompt], bool]:
    """(base name, the set's own prompts, whether it was asked for as ``NAME-long``). ``column``,
    ``category_column``, ``kind``, ``label_column``: only for file sets, they override the
    format's defaults (``FileFormat``)."""
    overrides = {
        "column": column,
        "category_column": category_column,
        "kind": kind,
        "label_column": label_column,
    }
    prefix, sep, path = name.partition(":")
    if sep and prefix in FILE_FORMATS:
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
        return name, read_prompt_file(path, fmt, source=None if prefix == "file" else prefix), False
    base = name.removesuffix(LONG_SUFFIX)
    if base not in _NAMED_SETS:
        raise PromptError(f"unknown prompt set {name!r}; valid: {', '.join(SET_NAMES)}")
    given = [k for k, v in overrides.items() if v is not None]
    if given:
        raise PromptError(
            f"{'= and '.join(given)}= is for file sets only "
            f"({', '.join(p + ':PATH' for p in FILE_FORMATS)}); {name!r} is a named set"
        )
    prompts = list(_builtin_prompts()) if base == "builtin" else _BENCHMARK_LOADERS[base]()
    return base, prompts, base != name
