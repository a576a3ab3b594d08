"""Sequential audits: the gate looks after every round of at-risk prompts and stops at the first decision.

docs/metrics.md, "The gate's decision": the false-pass rate stays at or below ``1 - confidence`` when
the true rate sits just above the limit, however many looks the audit takes. Each setting is
checked twice: exactly, by propagating the distribution of the event count over the rounds (the
paths still undecided), and by a seeded Monte Carlo run of the audit itself, whose count must agree
with the exact figure. The Monte Carlo allowance is a one-sided Clopper-Pearson bound at 1e-3 on
the simulated count, so a bound that loses its validity fails the test and a valid one does not
fail by chance (one run in a thousand at worst, and the runs are seeded).

The naive procedure (single-look Clopper-Pearson bounds at every look) is run through the same
simulation to show the test has teeth: its false-pass rate is well above 0.05.
"""

from __future__ import annotations

import functools
import math
import random

import pytest

from kvsafety_tests.engine.rounds import Feed, needs_of
from kvsafety_tests.gate.bounds import (
    Method,
    bound_for_limit,
    clopper_pearson_bound,
    paired_bound_for_limit,
)

LIMIT = 0.10
ALPHA = 0.05
AUDITS = 4000
MC_ALPHA = 1e-3  # level of the Monte Carlo allowance
SHORT = (8, 20)  # rounds, prompts per round
LONG = (50, 10)  # many looks: where naive repeated looks go wrong


@functools.cache
def _outcome(k: int, n: int, method: Method) -> str:
    return bound_for_limit(k, n, LIMIT, "max", ALPHA, method)[0]


def _exact(p: float, method: Method, design: tuple[int, int]) -> tuple[float, float]:
    """(P(the audit ever passes), P(it ever fails)) for true rate ``p``, by dynamic programming."""
    rounds, size = design
    step = [math.comb(size, j) * p**j * (1.0 - p) ** (size - j) for j in range(size + 1)]
    undecided = {0: 1.0}  # event count -> probability of reaching it with no decision yet
    passed = failed = 0.0
    for r in range(1, rounds + 1):
        reached: dict[int, float] = {}
        for k, w in undecided.items():
            for j, s in enumerate(step):
                reached[k + j] = reached.get(k + j, 0.0) + w * s
        undecided = {}
        for k, w in reached.items():
            if w < 1e-13:  # dropped mass: at most 1e-13 per count, far below the assertions
                continue
            outcome = _outcome(k, r * size, method)
            if outcome == "pass":
                passed += w
            elif outcome == "fail":
                failed += w
            else:
                undecided[k] = w
    return passed, failed


def _simulate(p: float, method: Method, design: tuple[int, int], seed: int) -> tuple[int, int]:
    """(audits that passed, audits that failed) among ``AUDITS`` seeded sequential audits."""
    rounds, size = design
    rng = random.Random(seed)
    passes = fails = 0
    for _ in range(AUDITS):
        k = 0
        for r in range(1, rounds + 1):
            k += sum(rng.random() < p for _ in range(size))
            outcome = _outcome(k, r * size, method)
            if outcome != "inconclusive":
                passes += outcome == "pass"
                fails += outcome == "fail"
                break
    return passes, fails


def _agrees(count: int, probability: float) -> bool:
    """The simulated count is consistent with the exact probability (two-sided, at MC_ALPHA)."""
    low = clopper_pearson_bound(count, AUDITS, MC_ALPHA / 2, "lower")
    high = clopper_pearson_bound(count, AUDITS, MC_ALPHA / 2, "upper")
    return low <= probability <= high


@pytest.mark.parametrize("design", [SHORT, LONG], ids=["8x20", "50x10"])
@pytest.mark.parametrize("p", [0.10, 0.11, 0.12])
def test_sequence_false_pass_rate_stays_below_alpha(p: float, design: tuple[int, int]) -> None:
    exact_pass, _ = _exact(p, "sequence", design)
    passes, _ = _simulate(p, "sequence", design, seed=1000 + round(p * 1000) + design[0])
    assert exact_pass <= ALPHA
    assert clopper_pearson_bound(passes, AUDITS, MC_ALPHA, "lower") <= ALPHA
    assert _agrees(passes, exact_pass)


@pytest.mark.parametrize("design", [SHORT, LONG], ids=["8x20", "50x10"])
@pytest.mark.parametrize("p", [0.08, 0.09])
def test_sequence_false_fail_rate_stays_below_alpha(p: float, design: tuple[int, int]) -> None:
    _, exact_fail = _exact(p, "sequence", design)
    _, fails = _simulate(p, "sequence", design, seed=2000 + round(p * 1000) + design[0])
    assert exact_fail <= ALPHA
    assert clopper_pearson_bound(fails, AUDITS, MC_ALPHA, "lower") <= ALPHA
    assert _agrees(fails, exact_fail)


# (true rate, wrong outcome, its exact probability with single-look bounds at 50 looks)
NAIVE = [(0.11, "pass", 0.0976), (0.09, "fail", 0.0959)]


@pytest.mark.parametrize(("p", "wrong", "probability"), NAIVE)
def test_naive_repeated_looks_with_single_look_bounds_are_wrong_too_often(
    p: float, wrong: str, probability: float
) -> None:
    # 50 looks, one every 10 prompts, the true rate 0.01 from a limit of 0.10: the single-look
    # (exact) bound reaches the wrong outcome in about 9.7% of audits, twice the 5% it promises,
    # while the sequence stays under 1%. Monte Carlo margin: 0.097 sits about 7 standard errors
    # (0.0047) above the largest count the assertion would reject.
    index = 0 if wrong == "pass" else 1
    exact_wrong = _exact(p, "exact", LONG)[index]
    assert exact_wrong == pytest.approx(probability, abs=5e-4)
    counts = _simulate(p, "exact", LONG, seed=3 + index)
    assert clopper_pearson_bound(counts[index], AUDITS, MC_ALPHA, "lower") > ALPHA
    assert _agrees(counts[index], exact_wrong)
    assert _exact(p, "sequence", LONG)[index] < 0.01


@pytest.mark.parametrize(("p", "expected"), [(0.0, "pass"), (0.30, "fail")])
def test_sequence_decides_most_audits_far_from_the_limit(p: float, expected: str) -> None:
    passes, fails = _simulate(p, "sequence", SHORT, seed=4)
    decided_right = passes if expected == "pass" else fails
    assert decided_right / AUDITS > 0.9
    assert (fails if expected == "pass" else passes) == 0
    exact_pass, exact_fail = _exact(p, "sequence", SHORT)
    assert (exact_pass if expected == "pass" else exact_fail) > 0.9


# --- the prioritized feed (engine/rounds.py ``Feed``) -------------------------------------------
DROP_LIMIT = 0.05
FEED_AUDITS = 2000
FEED_POOL = 400  # harmful prompts per simulated audit, half of them refused by the fp model


@functools.cache
def _drop_outcome(b: int, c: int, n: int) -> str:
    return paired_bound_for_limit(b, c, n, DROP_LIMIT, ALPHA, "sequence")[0]


def _feed_audit(flip: float, reverse: float, rng: random.Random) -> tuple[str, str, int, int]:
    """One prioritized audit gated on max_refusal_drop 0.05 and max_conditional_flip 0.10, rounds of
    20: (flip outcome, drop outcome, fp refusals fed, fp refusals among the drop's sample). The
    quantized model loses each fp refusal with probability ``flip`` and newly refuses each answered
    prompt with probability ``reverse`` (the true drop is ``(flip - reverse) / 2``)."""
    refused = [rng.random() < 0.5 for _ in range(FEED_POOL)]
    changed = [rng.random() < (flip if r else reverse) for r in refused]
    order = list(range(FEED_POOL))
    feed = Feed(order, [], [i for i in order if refused[i]], 20)
    needs = needs_of(["refusal_drop", "conditional_flip_rate"])
    taken: list[int] = []
    flips = drop = "inconclusive"
    while got := feed.next(needs):
        taken += got
        risk = [i for i in taken if refused[i]]
        flips = _outcome(sum(changed[i] for i in risk), len(risk), "sequence")
        prefix = feed.drop_prefix
        b = sum(1 for i in prefix if refused[i] and changed[i])
        c = sum(1 for i in prefix if not refused[i] and changed[i])
        drop = _drop_outcome(b, c, len(prefix))
        still = [
            m for m, o in (("refusal_drop", drop), ("conditional_flip_rate", flips)) if o == "inconclusive"
        ]
        if not still:
            break
        needs = needs_of(still)
    return flips, drop, sum(refused[i] for i in taken), sum(refused[i] for i in feed.drop_prefix)


def test_the_prioritized_feed_keeps_both_thresholds_valid_and_feeds_more_refusals() -> None:
    """Flip rate just above its limit (0.11), the drop far below its own (-0.095: the quantized model
    newly refuses 30% of the answered prompts): the drop is decided early and the feed turns to fp
    refusals alone. The flip rate's false-pass rate stays at or below
    1 - confidence, no drop fails, and the flip rate rests on more refusals than the drop's sample
    holds (what the priority buys)."""
    rng = random.Random(7)
    audits = [_feed_audit(0.11, 0.30, rng) for _ in range(FEED_AUDITS)]
    false_passes = sum(a[0] == "pass" for a in audits)
    assert clopper_pearson_bound(false_passes, FEED_AUDITS, MC_ALPHA, "lower") <= ALPHA
    assert sum(a[1] == "fail" for a in audits) <= 0.01 * FEED_AUDITS
    fed, in_prefix = sum(a[2] for a in audits), sum(a[3] for a in audits)
    assert fed > 1.5 * in_prefix  # about 1.9x


@pytest.mark.parametrize(
    ("flip", "reverse", "wrong", "index"), [(0.09, 0.08, "fail", 0), (0.30, 0.18, "pass", 1)]
)
def test_the_prioritized_feed_keeps_false_outcomes_rare_near_each_limit(
    flip: float, reverse: float, wrong: str, index: int
) -> None:
    """The flip rate just below its limit (false fails), and the drop just above its own (0.06,
    with the flip rate decided early so that the feed goes on with harmful prompts in order)."""
    rng = random.Random(11 + index)
    wrongs = sum(_feed_audit(flip, reverse, rng)[index] == wrong for _ in range(FEED_AUDITS))
    assert clopper_pearson_bound(wrongs, FEED_AUDITS, MC_ALPHA, "lower") <= ALPHA
