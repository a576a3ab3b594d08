"""Why the gate fails, typed: each violation says what kind of check failed, for which run, on what.

Code that acts on a violation (a test item, the compare step) reads its fields, never its text.
``str(violation)`` is the one line shown to people: the terminal, the Markdown view, and the
report's ``violations`` list, which stays a list of strings (docs/report.md); the audit turns its
violations into those lines when it builds the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["VIOLATION_KINDS", "Violation", "ViolationKind"]

ViolationKind: TypeAlias = Literal["threshold", "coverage", "compare", "missing", "error"]
#: ``Violation.kind``, each a kind of check the gate makes (see ``Violation.kind``).
VIOLATION_KINDS: tuple[str, ...] = ("threshold", "coverage", "compare", "missing", "error")


@dataclass(frozen=True, kw_only=True)
class Violation:
    """One failed check of one run: a threshold, the cache's coverage, or a compare against a baseline."""

    #: threshold: a gated threshold failed, could not be measured, or was undecided;
    #: coverage: the cache was (almost) not quantized when the answer began, so the run measured nothing;
    #: compare: a ``--kvsafety-compare`` check found the run worse than its baseline run (or unmeasured);
    #: missing: a baseline run this report does not have (the release audits less than the baseline);
    #: error: the run errored, so nothing about it could be compared.
    kind: ViolationKind
    #: The run's model, as the report names it.
    model: str
    #: The run's quantizer spec, as the report names it (e.g. ``int4-g64-r32``).
    quantizer: str
    #: The run's prompt set, where the check matched runs by it (compare); None for a run's own checks.
    prompt_set: str | None = None
    #: The measured value or compared field (``conditional_flip_rate``, ``quantized_fraction``);
    #: None when the whole run is concerned (missing, error).
    metric: str | None = None
    #: The check that failed, in the words that configure it: a threshold's name
    #: (``max_conditional_flip``) or a compare check (``refusal_drop:2pp``); None for coverage,
    #: missing and error, which are always checked.
    check: str | None = None
    #: The one line shown to people, ``str(violation)``.
    message: str

    def __post_init__(self) -> None:
        if self.kind not in VIOLATION_KINDS:
            raise ValueError(f"violation kind {self.kind!r}; valid: {', '.join(VIOLATION_KINDS)}")
        if not self.message:
            raise ValueError(f"{self.kind} violation of {self.model} / {self.quantizer} has no message")

    def __str__(self) -> str:
        return self.message
