"""Per-source rates (RunEntry.by_source): a union of prompt sets reports each source's rates and
counts beside the pooled ones, and the sources' counts add up to the pool's."""

from __future__ import annotations

import pytest

from kvsafety_tests.engine import AuditSettings, run_audit
from kvsafety_tests.report import report_from_dict, report_to_dict, to_markdown

from ..models_fixture import SMOL


@pytest.mark.model
def test_a_union_reports_each_source_and_the_counts_add_up() -> None:
    settings = AuditSettings(
        model=SMOL, quantizers=("int4",), prompts=("builtin", "advbench"), limit=6, max_new_tokens=8
    )
    report = run_audit(settings)
    (run,) = report.runs
    assert set(run.by_source) == {"builtin", "advbench"}
    advbench, builtin = run.by_source["advbench"], run.by_source["builtin"]
    assert advbench.counts["over_refusal_flip_rate"][1] == 0  # AdvBench has no harmless prompts
    assert advbench.rates["over_refusal_flip_rate"] is None  # an empty denominator is not a 0
    for name, (k, n) in run.counts.items():
        parts = [src.counts[name] for src in run.by_source.values() if name in src.counts]
        assert (sum(p[0] for p in parts), sum(p[1] for p in parts)) == (k, n), name
    harmful = [src.counts["refusal_rate_baseline"][1] for src in (builtin, advbench)]
    assert sum(harmful) == run.n_harmful
    summary = to_markdown(report)
    assert "| source | refusal rate fp | conditional flip |" in summary
    assert any(line.startswith("| advbench | ") for line in summary.splitlines())
    again = report_from_dict(report_to_dict(report)).runs[0]
    assert again.by_source == run.by_source  # written and read back


@pytest.mark.model
def test_a_single_source_has_no_breakdown() -> None:
    settings = AuditSettings(
        model=SMOL, quantizers=("int4",), prompts=("builtin",), limit=2, max_new_tokens=4
    )
    run = run_audit(settings).runs[0]
    assert run.by_source == {}
