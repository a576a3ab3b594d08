"""Deterministic, stratified subsets of a prompt list (the ``limit`` of ``load_prompts``) and the
stratified order of a sequential audit's rounds (``stratified_order``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from fractions import Fraction

from .model import Prompt, PromptError

__all__ = ["id_rank", "stratified_order", "stratified_subset"]


def _check_limit(limit: object) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PromptError(f"limit={limit!r} invalid; valid: a positive integer, or None for every prompt")


def id_rank(prompt_id: str, seed: int | None = None) -> str:
    """A prompt's place in the project's fixed pseudo-random order: the sha256 of its id (the same
    on every run and machine, unrelated to the prompt's text or file position). ``seed`` (the
    ``prompt_seed`` setting) draws another such order: the sha256 of the seed and the id; no seed
    is the project's order."""
    key = prompt_id if not seed else f"{seed}\x00{prompt_id}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def stratified_subset(
    prompts: Sequence[Prompt],
    limit: int,
    group: Callable[[Prompt], str] = lambda p: p.category,
    *,
    seed: int | None = None,
) -> tuple[Prompt, ...]:
    """At most ``limit`` prompts, each category (``group``) represented in proportion to its size.

    Quotas by largest remainder (ties: larger category, then name); within a category the
    prompts first in ``id_rank`` order (``seed``: another such order). No RNG and no dependence
    on file order: the same ids and seed give the same subset on every run and machine. Returned
    in their original order.
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
        i
        for c, idx in groups.items()
        for i in sorted(idx, key=lambda i: id_rank(prompts[i].id, seed))[: quota[c]]
    }
    return tuple(p for i, p in enumerate(prompts) if i in chosen)


def _interleave(groups: dict[str, list[int]]) -> list[int]:
    """The groups' items in one sequence, each group's in its own order, such that after any k
    items every group holds within one of its proportional share k * size / total.

    Balinski and Young's quota method: at step k a group may take its next item only if it then
    holds no more than ``ceil(k * size / total)`` (upper quota); among those, the largest
    ``size / (taken + 1)`` goes first (ties: larger group, then name). It keeps the lower quota
    too, at every k, and never takes an item back (house monotone), which largest remainders,
    the rule of ``stratified_subset``, does not promise.
    """
    total = sum(len(items) for items in groups.values())
    taken = dict.fromkeys(groups, 0)
    out: list[int] = []
    for k in range(1, total + 1):
        eligible = [g for g, items in groups.items() if taken[g] * total < k * len(items)]
        g = min(eligible, key=lambda g: (-Fraction(len(groups[g]), taken[g] + 1), -len(groups[g]), g))
        out.append(groups[g][taken[g]])
        taken[g] += 1
    return out


def stratified_order(
    prompts: Sequence[Prompt],
    levels: Sequence[Callable[[Prompt], str]] = (lambda p: p.source, lambda p: p.category),
    *,
    seed: int | None = None,
) -> tuple[int, ...]:
    """Positions of ``prompts`` in an order whose every prefix is stratified, level by level:
    after any k prompts each group of the first level (default: the source) holds within one of
    its proportional share of k, and within a group its prefix is stratified the same way by the
    next level (default: the category). Within the last level, the order of ``id_rank`` (``seed``:
    another such order, the same strata).

    A sequential audit takes its rounds from this order (engine/rounds.py), so every round mixes
    the pool's sources and categories in proportion. No RNG and no dependence on file order.
    """
    if not levels:
        return tuple(sorted(range(len(prompts)), key=lambda i: id_rank(prompts[i].id, seed)))
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(levels[0](p), []).append(i)
    ordered = {
        g: [idx[j] for j in stratified_order([prompts[i] for i in idx], levels[1:], seed=seed)]
        for g, idx in groups.items()
    }
    return tuple(_interleave(ordered))
