"""What the plugin adds to pytest in every run: its marker, its hooks and its options.

The options are the settings table's (``kvsafety_tests.settings``, prefixed ``--kvsafety-``)
plus ``--kvsafety`` itself and the compare options. Bad values fail on the command line
(``argparse.ArgumentTypeError``), before any model loads.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import pytest

from ..settings import add_options

if TYPE_CHECKING:
    from ..report import Report

__all__ = ["MARKERS", "baseline_report", "pytest_addhooks", "pytest_addoption"]

#: The one marker this plugin registers, in every run (a user's own markers, gpu or slow, are theirs).
MARKERS: dict[str, str] = {
    "kvsafety": "a KV-cache safety audit test (collected or written against the kv_* fixtures)",
}


def _compare_fail_arg(text: str) -> Any:
    from ..gate.compare import CompareError, parse_compare_check

    try:
        return parse_compare_check(text)
    except CompareError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvsafety", "KV-cache quantization safety gate (pytest-kvsafety)")
    add = group.addoption
    add(
        "--kvsafety",
        action="store_true",
        default=False,
        help="run the KV-cache safety audit and gate on its thresholds (default: off)",
    )
    add_options(add, prefix="kvsafety-")
    add(
        "--kvsafety-compare",
        default=None,
        metavar="PATH",
        help="a saved report.json to compare this run against (a previous release's)",
    )
    add(
        "--kvsafety-compare-fail",
        action="append",
        type=_compare_fail_arg,
        default=None,
        metavar="FIELD:LIMIT",
        help="fail when FIELD got worse than in the --kvsafety-compare report by more than LIMIT: "
        "refusal_drop:2pp (points), perplexity_ratio:5%% (relative), perplexity_ratio:0.02 (absolute)",
    )


def baseline_report(config: pytest.Config) -> Report:
    """The report ``--kvsafety-compare`` names; a missing or unusable one is a ``UsageError``."""
    from ..gate.compare import CompareError, load_baseline

    try:
        return load_baseline(config.getoption("kvsafety_compare"))
    except CompareError as e:
        raise pytest.UsageError(str(e)) from None
