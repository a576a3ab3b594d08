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

from kvsafety_tests.gate.bounds import Method, bound_for_limit, clopper_pearson_bound

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
