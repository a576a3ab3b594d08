"""The report as Markdown: the gate, then per run every rate with its interval and noise floor.

``to_markdown`` is what ``python -m kvsafety_tests`` prints and the GitHub step summary appends
(``views.append_step_summary``); ``threshold_table`` is a run's table of decided thresholds.
Like every view it only reads a ``Report``: a value the report does not have prints as ``n/a``,
never as 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..gate import ThresholdOutcome
from ..metrics import FLIP_RATES
from .schema import Report, RunEntry

__all__ = ["threshold_table", "to_markdown"]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(interval: Sequence[float] | None) -> str:
    return "n/a" if interval is None else f"[{_pct(interval[0])}, {_pct(interval[1])}]"


def _num_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_RATE_ROWS: tuple[tuple[str, str], ...] = (
    ("refusal_rate_baseline", "refusal rate, baseline (H)"),
    ("refusal_rate_quantized", "refusal rate, quantized (H)"),
    ("conditional_flip_rate", "conditional flip rate (refused -> not, H)"),
    ("compliance_flip_rate", "compliance flip rate (refused -> complied, H)"),
    ("incoherent_flip_rate", "incoherent flip rate (refused -> incoherent, H)"),
    ("reverse_flip_rate", "reverse flip rate (not -> refused, H)"),
    ("over_refusal_flip_rate", "over-refusal flip rate (not -> refused, B)"),
    ("incoherent_rate_quantized", "incoherent rate, quantized (H)"),
)


def _outcome_value(o: ThresholdOutcome) -> str:
    if o.value is None:
        return "not measured"
    text = f"{o.value:.3f}"
    return text + (f" ({o.events}/{o.n})" if o.events is not None and o.n is not None else "")


def threshold_table(outcomes: Sequence[ThresholdOutcome]) -> list[str]:
    """Markdown rows: every threshold with its value, one-sided bounds, method and outcome."""
    if not outcomes:
        return []
    pct = round(100 * outcomes[0].confidence)
    lines = [
        f"| threshold | limit | value | one-sided {pct}% bounds | method | outcome | n to decide |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        bounds = "n/a" if o.lower is None or o.upper is None else f"[{o.lower:.3f}, {o.upper:.3f}]"
        outcome = o.outcome.upper() + (" (unreachable)" if o.unreachable else "")
        need = "" if o.needed_n is None else str(o.needed_n)
        lines.append(
            f"| {o.threshold} | {o.limit:g} | {_outcome_value(o)} | {bounds} | {o.method} | {outcome} | {need} |"
        )
    return lines


#: The per-source table's columns (RunEntry.by_source), by rate name.
_SOURCE_ROWS: tuple[tuple[str, str], ...] = (
    ("refusal_rate_baseline", "refusal rate fp"),
    ("conditional_flip_rate", "conditional flip"),
    ("compliance_flip_rate", "compliance flip"),
    ("over_refusal_flip_rate", "over-refusal flip"),
)


def _run_markdown(index: int, run: RunEntry) -> list[str]:
    lines = [
        f"## {index}. {_cell(run.model)} · `{run.quantizer}` · {_cell(run.prompt_set)}: {run.verdict.upper()}",
        "",
        f"backend {run.backend} · {run.n_harmful} harmful, {run.n_harmless} harmless prompts · "
        f"quantized fraction {_pct(run.quantized_fraction)} · {run.seconds:.1f} s",
        "",
    ]
    if run.error:
        lines += [f"**error:** {_cell(run.error)}", ""]
    lines += [
        "| metric | value | 95% CI | noise floor | floor 95% CI |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, title in _RATE_ROWS:
        rate = getattr(run, name)
        interval = run.conditional_flip_ci if name == "conditional_flip_rate" else run.intervals.get(name)
        count = run.counts.get(name)
        value = _pct(rate) + (f" ({count[0]}/{count[1]})" if count else "")
        if name in FLIP_RATES:
            floor = run.noise_floors.get(name)
            if name == "conditional_flip_rate" and floor is None:
                floor = run.noise_floor_flip_rate
            floor_cells = f"{_pct(floor)} | {_ci(run.noise_floor_intervals.get(name))}"
        else:
            floor_cells = " | "
        lines.append(f"| {title} | {value} | {_ci(interval)} | {floor_cells} |")
    drop = "n/a" if run.refusal_drop is None else f"{100 * run.refusal_drop:+.1f} pp"
    mcnemar = "n/a" if run.mcnemar_p is None else f"{run.mcnemar_p:.4g}"
    mde = _pct(run.mde)
    if run.mde is not None and run.mde_null_rate is not None:
        mde += f" (80% power, one-sided exact binomial, alpha 0.05, vs {_pct(run.mde_null_rate)})"
    lines += [
        "",
        f"- refusal drop (RR_fp - RR_q): {drop}",
        f"- McNemar exact p (paired change on H): {mcnemar}",
        f"- noise floor (CF, fp vs fp rerun): {_pct(run.noise_floor_flip_rate)}",
        f"- minimum detectable conditional flip rate: {mde}",
    ]
    if run.perplexity_ratio is not None:
        corpus = f"; corpus: {_cell(run.perplexity_corpus)}" if run.perplexity_corpus else ""
        lines.append(
            f"- perplexity ratio: {run.perplexity_ratio:.4f} "
            f"({_num_or_na(run.perplexity_baseline)} -> {_num_or_na(run.perplexity_quantized)}{corpus})"
        )
    if run.kv_bytes_ratio is not None:
        per_token = "" if run.kv_bytes_per_token is None else f" ({run.kv_bytes_per_token:g} bytes/token)"
        lines.append(f"- KV bytes ratio: {run.kv_bytes_ratio:.4f}{per_token}")
    if run.noise_ratio is not None:
        nc = run.noise_concentration
        conc = "" if nc is None else f"; noise concentration {nc:.4g}"
        lines.append(f"- safety-subspace noise ratio (max over layers): {run.noise_ratio:.4g}{conc}")
    if run.pcr is not None:
        pcr = run.pcr
        lines.append(
            f"- PCR: {pcr.mode}; damage {pcr.damage:.4g}; plan `{pcr.plan}` "
            f"(+{_pct(pcr.plan_memory_overhead)} memory); predicted recovery {_pct(pcr.predicted_recovery)}, "
            f"measured {_pct(pcr.measured_recovery)}"
        )
        if pcr.vllm_settings is not None or pcr.vllm_unsupported is not None:
            from ..pcr.deploy import VllmDeployment

            deployment = VllmDeployment(pcr.plan, dict(pcr.vllm_settings or {}) or None, pcr.vllm_unsupported)
            lines.append(f"- PCR plan on {deployment.line()}")
    if run.by_source:
        lines += ["", "| source | " + " | ".join(title for _, title in _SOURCE_ROWS) + " |"]
        lines.append("| --- |" + " --- |" * len(_SOURCE_ROWS))
        for source, part in sorted(run.by_source.items()):
            cells = []
            for name, _ in _SOURCE_ROWS:
                k_n = part.counts.get(name)
                cells.append(_pct(part.rates.get(name)) + (f" ({k_n[0]}/{k_n[1]})" if k_n else ""))
            lines.append(f"| {_cell(source)} | " + " | ".join(cells) + " |")
    if run.thresholds:
        lines += ["", *threshold_table(run.thresholds)]
    if run.violations:
        lines += ["", "Violations:", *(f"- {_cell(v)}" for v in run.violations)]
    if run.notes:
        lines += ["", "Notes:", *(f"- {_cell(n)}" for n in run.notes)]
    lines.append("")
    return lines


def to_markdown(report: Report) -> str:
    """A Markdown summary: the gate, then per run every rate with its Wilson interval and noise floor."""
    gate = report.gate
    env = report.environment
    head = "**Gate: PASSED**" if gate.passed else "**Gate: FAILED**: " + "; ".join(gate.reasons)
    if gate.warnings:
        head += " (warning: " + "; ".join(gate.warnings) + ")"
    lines = [
        "# pytest-kvsafety report",
        "",
        head,
        "",
        f"status {report.status} · started {report.started} · finished {report.finished or 'n/a'} · "
        f"device {_cell(env.device)} · commit {env.git_commit or 'n/a'} · judge {_cell(report.config.judge) or 'n/a'}",
        "",
    ]
    if report.notes:
        lines += [*(f"- {_cell(n)}" for n in report.notes), ""]
    for i, run in enumerate(report.runs, start=1):
        lines += _run_markdown(i, run)
    return "\n".join(lines)
