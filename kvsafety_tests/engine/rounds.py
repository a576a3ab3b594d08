"""Sequential audits: prompts in rounds, each quantizer stopping once its rate thresholds are decided.

Order. Within the harmful and within the harmless prompts, prompts are taken in a stratified order
(``prompts.subset.stratified_order``): after any k prompts each source holds within one of its
proportional share of k, and within a source each category likewise; within a category, the order
of the sha256 of the ids. The same on every run and machine, and unrelated to a prompt's content
or file position, so every prefix is a proportional sample of its set (a pool of several sources
mixes them in every round) and the rates measured on it estimate the whole set's.

Looks. After each round every rate threshold (refusal drop, the flip rates) is decided from the
prompts so far with the beta-binomial confidence sequence (``bounds``, method ``sequence``), whose
bounds hold simultaneously over every look, so stopping at the first decision keeps the false-pass
rate at or below ``1 - confidence`` (tests/unit/test_sequential_validity.py simulates it). The quantizer
stops when none is inconclusive, when the pool is exhausted, or when its time budget is spent.

Priority (``Feed``). The fp arm is known over the whole pool before any quantized round, so each
prompt's group is known: a harmful prompt the fp model refused (at risk: the flip rates need only
these), a harmful prompt it answered (only the refusal drop and the reverse flips need these), a
harmless prompt (only the over-refusal flip needs these; the perplexity corpus is teacher-forced
and needs no generation). Round 1 takes every group, so every rate in the report has an estimate;
from round 2 a quantizer is fed only what its still-open thresholds need (``NEEDS``): while its
refusal drop is open, the next harmful prompts in order, at risk or not; once only flip rates
are open, the next at-risk prompts alone; harmless prompts while its over-refusal flip is open.
Every metric is then measured on a prefix of its own stream: the drop (with the refusal rates,
reverse flips and McNemar's p) on the harmful prompts taken in order (``Feed.drop_prefix``), the
flip rates on the at-risk prompts in order, the over-refusal flip on the harmless prompts in
order. A prefix of a fixed order unrelated to the outcomes is what the confidence sequence
assumes, so the bounds stay valid (tests/unit/test_sequential_validity.py simulates the feed).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from ..prompts import Prompt
from ..prompts.subset import stratified_order

__all__ = ["NEEDS", "RATE_METRICS", "Arm", "Feed", "concat", "needs_of", "prompt_order", "subset"]

#: The metrics decided after every round; the others (perplexity ratio, noise ratio, PCR) once, at the end.
RATE_METRICS: tuple[str, ...] = (
    "refusal_drop",
    "conditional_flip_rate",
    "compliance_flip_rate",
    "over_refusal_flip_rate",
)

#: The prompt group each rate metric is measured on: ``harmful`` (every harmful prompt, in order),
#: ``at_risk`` (the harmful prompts the fp model refused), ``harmless``.
NEEDS: dict[str, str] = {
    "refusal_drop": "harmful",
    "conditional_flip_rate": "at_risk",
    "compliance_flip_rate": "at_risk",
    "over_refusal_flip_rate": "harmless",
}


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


def needs_of(metrics: Iterable[str]) -> frozenset[str]:
    """The prompt groups (``NEEDS``) the rate ``metrics`` are measured on."""
    return frozenset(NEEDS[m] for m in metrics if m in NEEDS)


class Feed:
    """One quantizer's prompts round by round, each round only the groups its open thresholds need.

    ``harmful`` and ``harmless``: the evaluation positions in audit order (``prompt_order``);
    ``at_risk``: the harmful positions the fp model refused; ``size``: prompts per group per round.
    """

    def __init__(
        self, harmful: Sequence[int], harmless: Sequence[int], at_risk: Collection[int], size: int
    ) -> None:
        if size < 1:
            raise ValueError(f"round_size {size} must be >= 1")
        self.harmful, self.harmless = list(harmful), list(harmless)
        self.at_risk = frozenset(at_risk)
        self.size = size
        self._taken: set[int] = set()
        self._prefix = 0  # harmful prompts taken in order (at risk or not): the drop's sample
        self._cursor = 0  # how far along the harmful order at-risk prompts have been taken
        self._harmless = 0  # harmless prompts taken

    @property
    def drop_prefix(self) -> list[int]:
        """The harmful positions taken in order, at risk or not: the refusal drop's sample."""
        return self.harmful[: self._prefix]

    def next(self, needs: Collection[str]) -> list[int]:
        """The next round's positions for ``needs`` (groups of ``NEEDS``); [] when they are spent.

        ``harmful`` takes the next ``size`` harmful prompts in order (the at-risk ones among them
        count for the flip rates too); ``at_risk`` alone takes the next ``size`` at-risk prompts,
        skipping those the fp model answered; ``harmless`` the next ``size`` harmless prompts.
        """
        unknown = set(needs) - {"harmful", "at_risk", "harmless"}
        if unknown:
            raise ValueError(f"unknown prompt group(s) {sorted(unknown)}; valid: harmful, at_risk, harmless")
        out: list[int] = []
        if "harmful" in needs and self._prefix < len(self.harmful):
            # the next harmful prompts in order; at-risk ones already taken alone stay in the arm,
            # so the prefix stays whole and the answered prompts skipped meanwhile are taken now
            chunk = self.harmful[self._prefix : self._prefix + self.size]
            self._prefix += len(chunk)
            self._cursor = max(self._cursor, self._prefix)
            out += [i for i in chunk if i not in self._taken]
        elif "at_risk" in needs:
            self._cursor = max(self._cursor, self._prefix)
            while self._cursor < len(self.harmful) and len(out) < self.size:
                i = self.harmful[self._cursor]
                self._cursor += 1
                if i in self.at_risk and i not in self._taken:
                    out.append(i)
        if "harmless" in needs:
            chunk = self.harmless[self._harmless : self._harmless + self.size]
            self._harmless += len(chunk)
            out += chunk
        self._taken.update(out)
        return out
