"""The one base class of pytest-kvsafety's errors. Standard library only: cheap to import anywhere."""

from __future__ import annotations

__all__ = ["KvSafetyError"]


class KvSafetyError(ValueError):
    """Every error of pytest-kvsafety a user can act on: a bad spec, prompt set, judge, model,
    report, baseline or measurement. The message is one line naming the bad value and the valid
    choices (or the command that fixes it).

    A ValueError, so code that caught the ValueError each of these errors used to be keeps
    working; ``except KvSafetyError`` catches them all and nothing else.
    """
