"""Deterministic, category-stratified subsets of a prompt list (the ``limit`` of ``load_prompts``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from .model import Prompt, PromptError

__all__ = ["id_rank", "stratified_subset"]


def _check_limit(limit: object) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PromptError(f"limit={limit!r} invalid; valid: a positive integer, or None for every prompt")


def id_rank(prompt_id: str) -> str:
    """A prompt's place in the project's fixed pseudo-random order: the sha256 of its id (the same
    on every run and machine, unrelated to the prompt's text or file position)."""
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
        i for c, idx in groups.items() for i in sorted(idx, key=lambda i: id_rank(prompts[i].id))[: quota[c]]
    }
    return tuple(p for i, p in enumerate(prompts) if i in chosen)
