"""The prompt model: one request (``Prompt``), the prompts of one audit (``PromptSet``), and the error
every prompt loader raises (``PromptError``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ..errors import KvSafetyError

__all__ = [
    "KINDS",
    "LABELS",
    "UNCATEGORIZED",
    "Kind",
    "Label",
    "Prompt",
    "PromptError",
    "PromptSet",
]

Kind: TypeAlias = Literal["harmful", "harmless", "calibration"]
Label: TypeAlias = Literal["harmful", "harmless"]

KINDS: tuple[str, ...] = ("harmful", "harmless", "calibration")
LABELS: tuple[str, ...] = ("harmful", "harmless")
UNCATEGORIZED = "uncategorized"


class PromptError(KvSafetyError):
    """A prompt set name, file or option is invalid.

    The message is one line: the bad value and what is valid (or the command that fixes it).
    """


@dataclass(frozen=True)
class Prompt:
    """One request sent to the model.

    ``kind`` says which part of the audit uses it: ``harmful`` and ``harmless`` prompts are
    evaluated, ``calibration`` prompts feed PCR only. ``label`` is whether the request is harmful;
    it equals ``kind`` for evaluation prompts and is required for calibration prompts.
    ``source`` names the set it came from (``builtin``, ``advbench``, a file's stem, ...).
    """

    id: str
    text: str
    kind: Kind
    category: str = UNCATEGORIZED
    source: str = "builtin"
    label: Label | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise PromptError(f"prompt id must be non-empty (text {self.text[:40]!r})")
        if not self.text.strip():
            raise PromptError(f"prompt {self.id!r} has empty text")
        if self.kind not in KINDS:
            raise PromptError(f"prompt {self.id!r}: kind {self.kind!r} unknown; valid: {', '.join(KINDS)}")
        if self.kind == "calibration":
            if self.label not in LABELS:
                raise PromptError(
                    f"calibration prompt {self.id!r} needs label harmful or harmless, got {self.label!r}"
                )
        elif self.label is None:
            object.__setattr__(self, "label", self.kind)
        elif self.label != self.kind:
            raise PromptError(f"prompt {self.id!r}: label {self.label!r} contradicts kind {self.kind!r}")


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one audit, with their provenance.

    ``notes`` record how the set was assembled (pairing with builtin prompts, long context), for
    the report. Ids are unique: per-prompt verdicts are keyed by id across arms and workers.
    """

    name: str
    prompts: tuple[Prompt, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "notes", tuple(self.notes))
        if not self.prompts:
            raise PromptError(f"prompt set {self.name!r} is empty; it needs at least one prompt")
        dups = [pid for pid, n in Counter(p.id for p in self.prompts).items() if n > 1]
        if dups:
            shown = ", ".join(repr(d) for d in dups[:5]) + (
                f" (+{len(dups) - 5} more)" if len(dups) > 5 else ""
            )
            raise PromptError(f"prompt set {self.name!r} has duplicate ids {shown}; ids must be unique")

    @property
    def harmful(self) -> tuple[Prompt, ...]:
        """The harmful evaluation prompts (H in docs/metrics.md)."""
        return tuple(p for p in self.prompts if p.kind == "harmful")

    @property
    def harmless(self) -> tuple[Prompt, ...]:
        """The harmless evaluation prompts (B in docs/metrics.md), for the over-refusal flip rate."""
        return tuple(p for p in self.prompts if p.kind == "harmless")

    @property
    def calibration(self) -> tuple[Prompt, ...]:
        """PCR's calibration prompts (each with a label), disjoint from the evaluation prompts."""
        return tuple(p for p in self.prompts if p.kind == "calibration")

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories of the evaluation prompts, sorted."""
        return tuple(sorted({p.category for p in self.prompts if p.kind != "calibration"}))

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)
