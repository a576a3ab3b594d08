"""Each named judge's accuracy, measured on the frozen test split of the labelled set v3.

These are the figures the report carries beside the judge's name (docs/report.md) and
docs/results/judge-accuracy.md publishes; ``python -m kvsafety_tests.judge --evaluate`` reproduces
them, and the tests recompute the rule judges' from the frozen split (a change to the rules that
loses accuracy fails there). A judge not listed here (a local classifier, a retrained head) has no
measurement and is reported as unmeasured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..stats import wilson_interval
from .labelled import LABELLED_SET_V3_TEST_FILE, Interval, JudgeScores
from .protocol import CASCADE_JUDGE, EMBEDDING_JUDGE, LABELS, PROBE_JUDGE, RULES_JUDGE, RULES_JUDGE_V2

__all__ = ["MEASURED_ACCURACY", "TEST_SPLIT_SHA256", "JudgeAccuracy", "measured_accuracy"]

#: sha256 of the canonical test split ``judge_labelled_v3_test.jsonl`` (docs/judge-labelling.md).
TEST_SPLIT_SHA256 = "45f8c17518cd1562b8fa9722f2cfac3212d5dac09b23c6c24ac7df926ec08d80"


@dataclass(frozen=True, kw_only=True)
class JudgeAccuracy:
    """A judge's counts on the frozen test split: how many of ``n`` distinct texts it labelled
    right (three labels, and refused vs not), and per label how many of ``support`` it recalled.
    The rates and their Wilson 95% intervals are derived from the counts."""

    judge: str
    n: int
    correct: int
    refusal_correct: int
    support: Mapping[str, int]
    recalled: Mapping[str, int]
    #: The labelled set and split the counts are on, with the split's sha256.
    labelled_set: str = field(
        default=f"{LABELLED_SET_V3_TEST_FILE} (set v3's test split), sha256 {TEST_SPLIT_SHA256[:16]}"
    )

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def refusal_accuracy(self) -> float:
        return self.refusal_correct / self.n

    @property
    def recall(self) -> dict[str, float]:
        return {a: self.recalled[a] / self.support[a] for a in LABELS}

    @property
    def accuracy_interval(self) -> Interval | None:
        return wilson_interval(self.correct, self.n)

    @property
    def refusal_accuracy_interval(self) -> Interval | None:
        return wilson_interval(self.refusal_correct, self.n)

    @property
    def recall_interval(self) -> dict[str, Interval | None]:
        return {a: wilson_interval(self.recalled[a], self.support[a]) for a in LABELS}

    @classmethod
    def from_scores(cls, scores: JudgeScores) -> JudgeAccuracy:
        """The counts of ``scores`` (an ``evaluate_judge`` result on the test split)."""
        return cls(
            judge=scores.judge,
            n=scores.n,
            correct=scores.correct,
            refusal_correct=scores.refusal_correct,
            support=dict(scores.support),
            recalled={a: scores.confusion[a][a] for a in LABELS},
        )


def _measured(
    judge: str, n: int, correct: int, refusal_correct: int, recalled: tuple[int, int, int]
) -> JudgeAccuracy:
    support = dict(zip(LABELS, _TEST_SUPPORT, strict=True))
    return JudgeAccuracy(
        judge=judge,
        n=n,
        correct=correct,
        refusal_correct=refusal_correct,
        support=support,
        recalled=dict(zip(LABELS, recalled, strict=True)),
    )


# Set v3's test split: 439 distinct texts, refused 107, complied 207, incoherent 125. Measured once,
# after every judge here was frozen (docs/results/judge-accuracy.md).
_TEST_SUPPORT = (107, 207, 125)

#: Judge name -> its accuracy on the frozen test split (recalled: refused, complied, incoherent).
MEASURED_ACCURACY: dict[str, JudgeAccuracy] = {
    a.judge: a
    for a in (
        _measured(RULES_JUDGE_V2, 439, 329, 389, (61, 199, 69)),
        _measured(RULES_JUDGE, 439, 300, 365, (39, 196, 65)),
        _measured(PROBE_JUDGE, 439, 359, 396, (80, 181, 98)),
        _measured(CASCADE_JUDGE, 439, 340, 390, (67, 191, 82)),
        _measured(EMBEDDING_JUDGE, 439, 262, 339, (10, 178, 74)),
    )
}


def measured_accuracy(judge: str) -> JudgeAccuracy | None:
    """The test-split accuracy of the judge named ``judge``; None when it has no measurement."""
    return MEASURED_ACCURACY.get(judge)
