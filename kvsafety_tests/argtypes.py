"""argparse ``type=`` functions shared by ``pytest --kvsafety`` and ``python -m kvsafety_tests``.

Bad values fail on the command line with one line naming them, before any model loads. Cheap to
import (the pytest plugin imports it in every run): nothing beyond the spec parser.
"""

from __future__ import annotations

import argparse

from .spec import SpecError, parse_spec

__all__ = ["fraction_arg", "positive_int_arg", "spec_arg"]


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
