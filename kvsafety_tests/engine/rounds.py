"""Sequential audits: prompts in rounds, each quantizer stopping once its rate thresholds are decided.

Order. Within the harmful and within the harmless prompts, prompts are taken in a stratified order
(``prompts.subset.stratified_order``): after any k prompts each source holds within one of its
proportional share of k, and within a source each category likewise; within a category, the order
of the sha256 of the ids. The same on every run and machine, and unrelated to a prompt's content
or file position, so every prefix is a proportional sample of its set (a pool of several sources
mixes them in every round) and the rates measured on it estimate the whole set's.
Round k adds the next ``round_size`` harmful and ``round_size`` harmless prompts.

Looks. After each round every rate threshold (refusal drop, the flip rates) is decided from the
prompts so far with the beta-binomial confidence sequence (``bounds``, method ``sequence``), whose
bounds hold simultaneously over every look, so stopping at the first decision keeps the false-pass
rate at or below ``1 - confidence`` (tests/unit/test_sequential_validity.py simulates it). The quantizer
stops when none is inconclusive, when the pool is exhausted, or when its time budget is spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..prompts import Prompt
from ..prompts.subset import stratified_order

__all__ = ["RATE_METRICS", "Arm", "concat", "prompt_order", "rounds", "subset"]

#: The metrics decided after every round; the others (perplexity ratio, noise ratio, PCR) once, at the end.
RATE_METRICS: tuple[str, ...] = (
    "refusal_drop",
    "conditional_flip_rate",
    "compliance_flip_rate",
    "over_refusal_flip_rate",
)


@dataclass
class Arm:
    """One arm's generations over evaluation prompts (harmful then harmless, in ``index`` order).

    ``index``: positions in the audit's evaluation prompts (harmful first) that the lists hold,
    ascending; None means every evaluation prompt, in order.
    """

    spec: str
    texts: list[str]
    token_ids: list[list[int]]
    labels: list[str]
    refusal_scores: list[float]
    quantized_fraction: float | None
    kv_bytes_per_token: float | None
    seconds: float
    index: list[int] | None = field(default=None)

    def positions(self, total: int) -> list[int]:
        """The evaluation-prompt positions this arm holds, in list order."""
        return list(range(total)) if self.index is None else list(self.index)


def prompt_order(
    prompts: Sequence[Prompt], n_harmful: int, seed: int | None = None
) -> tuple[list[int], list[int]]:
    """(harmful positions, harmless positions) of the evaluation prompts (harmful first), each in
    the stratified order by source, then category, then sha256(id) (``seed``: ``prompt_seed``)."""
    harmful = list(stratified_order(prompts[:n_harmful], seed=seed))
    harmless = [n_harmful + i for i in stratified_order(prompts[n_harmful:], seed=seed)]
    return harmful, harmless


def rounds(harmful: Sequence[int], harmless: Sequence[int], size: int) -> list[list[int]]:
    """The positions each round adds: the next ``size`` harmful and ``size`` harmless prompts."""
    if size < 1:
        raise ValueError(f"round_size {size} must be >= 1")
    count = max(-(-len(harmful) // size), -(-len(harmless) // size))
    return [[*harmful[k * size : (k + 1) * size], *harmless[k * size : (k + 1) * size]] for k in range(count)]


def subset(arm: Arm, index: Sequence[int] | None) -> Arm:
    """``arm`` restricted to the evaluation-prompt positions ``index`` (None: all of it), in
    ``index``'s order; ValueError when the arm does not hold one of them."""
    if index is None:
        return arm
    where = (
        {i: i for i in index} if arm.index is None else {i: j for j, i in enumerate(arm.index)}
    )  # position -> list index
    missing = [i for i in index if i not in where]
    if missing:
        raise ValueError(f"the arm holds no evaluation prompt at position(s) {missing[:5]}")
    pick = [where[i] for i in index]
    return Arm(
        spec=arm.spec,
        texts=[arm.texts[j] for j in pick],
        token_ids=[arm.token_ids[j] for j in pick],
        labels=[arm.labels[j] for j in pick],
        refusal_scores=[arm.refusal_scores[j] for j in pick],
        quantized_fraction=arm.quantized_fraction,
        kv_bytes_per_token=arm.kv_bytes_per_token,
        seconds=arm.seconds,
        index=list(index),
    )


def concat(parts: Sequence[Arm]) -> Arm:
    """The rounds' arms as one, sorted by position (quantized fraction weighted by completions)."""
    rows = sorted(
        (i, p.texts[j], p.token_ids[j], p.labels[j], p.refusal_scores[j])
        for p in parts
        for j, i in enumerate(p.index or [])
    )
    weighted = [(p.quantized_fraction, len(p.texts)) for p in parts if p.quantized_fraction is not None]
    total = sum(n for _, n in weighted)
    return Arm(
        spec=parts[0].spec,
        texts=[r[1] for r in rows],
        token_ids=[r[2] for r in rows],
        labels=[r[3] for r in rows],
        refusal_scores=[r[4] for r in rows],
        quantized_fraction=sum(f * n for f, n in weighted) / total if total else None,
        kv_bytes_per_token=parts[-1].kv_bytes_per_token,
        seconds=sum(p.seconds for p in parts),
        index=[r[0] for r in rows],
    )
