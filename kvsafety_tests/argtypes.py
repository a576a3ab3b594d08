"""argparse ``type=`` functions shared by ``pytest --kvsafety`` and ``python -m kvsafety_tests``.

Bad values fail on the command line with one line naming them, before any model loads. Cheap to
import (the pytest plugin imports it in every run): nothing beyond the spec parser.
"""

from __future__ import annotations

import argparse

from .spec import SpecError, parse_spec

__all__ = ["confidence_arg", "fraction_arg", "inconclusive_arg", "positive_int_arg", "spec_arg"]

#: Mirrors gate.INCONCLUSIVE_POLICIES (kept here so the plugin's options import nothing of the gate).
INCONCLUSIVE_CHOICES: tuple[str, ...] = ("fail", "warn")


def spec_arg(text: str) -> str:
    """A quantizer spec, returned in its canonical form."""
    try:
        return str(parse_spec(text))
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


def fraction_arg(text: str) -> float:
    """A number in [0, 1]."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"{x:g} must be a fraction in [0, 1] (0.07 = 7%)")
    return x


def confidence_arg(text: str) -> float:
    """A confidence level in [0.5, 1)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.5 <= x < 1.0:
        raise argparse.ArgumentTypeError(f"{x:g} must be a confidence in [0.5, 1) (e.g. 0.95)")
    return x


def inconclusive_arg(text: str) -> str:
    """What an inconclusive threshold does: fail or warn."""
    if text not in INCONCLUSIVE_CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; valid: {', '.join(INCONCLUSIVE_CHOICES)}")
    return text
