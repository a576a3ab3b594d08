"""Human views of a Report: the end-of-run terminal table, the GitHub step summary, PNG plots.

The JSON report is the source of truth (docs/report.md); these functions only read a ``Report``.
Importing this module is cheap: matplotlib is imported inside ``write_plots``, when a plot is
asked for. A value the report does not have prints as ``n/a`` and is left out of a plot, never
shown as 0.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import KvSafetyError
from ..spec import Fp8Scheme, NoQuant, SpecError, nominal_bits, parse_spec
from .atomic import write_atomically
from .markdown import to_markdown
from .schema import Report, RunEntry

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "PhaseTransition",
    "PlotPoint",
    "ViewError",
    "append_step_summary",
    "gate_line",
    "phase_transition_lines",
    "phase_transitions",
    "plot_points",
    "terminal_table",
    "write_plots",
]


class ViewError(KvSafetyError, RuntimeError):
    """A view cannot be produced (e.g. matplotlib is missing). One line saying how to fix it.

    Still a RuntimeError too, as it was before KvSafetyError: ``except RuntimeError`` keeps working.
    """


# --- terminal table ------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _drop(value: float | None) -> str:
    # a difference of two percentages: percentage points
    return "n/a" if value is None else f"{100 * value:+.1f} pp"


def _flip(run: RunEntry) -> str:
    if run.conditional_flip_rate is None:
        return "n/a"
    ci = run.conditional_flip_ci
    ci_text = "n/a" if ci is None else f"{_pct(ci[0])}, {_pct(ci[1])}"
    return f"{_pct(run.conditional_flip_rate)} [{ci_text}]"


def _refusal(run: RunEntry) -> str:
    fp, q = run.refusal_rate_baseline, run.refusal_rate_quantized
    return "n/a" if fp is None and q is None else f"{_pct(fp)} -> {_pct(q)}"


def _outcomes(run: RunEntry) -> str:
    """``3 pass, 1 inconclusive``: how the run's thresholds were decided (``-`` when none were)."""
    if not run.thresholds:
        return "-"
    counts = {k: sum(1 for o in run.thresholds if o.outcome == k) for k in ("pass", "fail", "inconclusive")}
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def gate_line(report: Report) -> str:
    """The last line of the terminal view: ``kvsafety gate: PASSED`` or why it FAILED.

    An incomplete report names the reason recorded last in ``report.notes`` (where
    ``finish_report`` puts it). Follows ``report.gate``: never PASSED where the gate fails.
    """
    gate = report.gate
    if gate.passed:
        warned = f" with warnings: {'; '.join(gate.warnings)}" if gate.warnings else ""
        return f"kvsafety gate: PASSED{warned}"
    if report.status != "complete":
        reason = _one_line(report.notes[-1]) if report.notes else "no reason recorded"
        return f"kvsafety gate: FAILED (report {report.status}: {reason})"
    if not report.runs:
        return "kvsafety gate: FAILED (no runs: nothing was measured)"
    parts = [_plural(gate.failed_runs, "failed run")]
    if gate.inconclusive_runs:
        parts.append(f"{gate.inconclusive_runs} inconclusive (the sample cannot tell; fails closed)")
    parts.append(_plural(gate.errors, "error"))
    return f"kvsafety gate: FAILED ({', '.join(parts)})"


def terminal_table(report: Report) -> list[str]:
    """Lines for the end of a pytest run: one table row per run, the violations, the gate line.

    Columns: model, quantizer (and prompt set when the report has several), refusal rate
    fp -> quantized, refusal drop in percentage points, conditional flip rate with its 95% CI,
    perplexity ratio, KV bytes ratio, verdict. Under the table, one line per violation of a
    failing run and one per error of an errored run; last, ``gate_line(report)``.
    """
    with_set = len({run.prompt_set for run in report.runs}) > 1
    header = ["model", "quantizer"]
    if with_set:
        header.append("prompt set")
    header += [
        "refusal fp -> q",
        "drop",
        "cond. flip [95% CI]",
        "ppl ratio",
        "kv bytes",
        "thresholds",
        "verdict",
    ]
    rows: list[list[str]] = []
    for run in report.runs:
        row = [_one_line(run.model), _one_line(run.quantizer)]
        if with_set:
            row.append(_one_line(run.prompt_set))
        row += [
            _refusal(run),
            _drop(run.refusal_drop),
            _flip(run),
            _ratio(run.perplexity_ratio),
            _ratio(run.kv_bytes_ratio),
            _outcomes(run),
            run.verdict.upper(),
        ]
        rows.append(row)
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows]
    if not rows:
        lines.append("(no runs)")
    diagnosis = [_pcr_line(run) for run in report.runs if run.pcr is not None or run.noise_ratio is not None]
    if diagnosis:
        lines += ["", *diagnosis]
    transitions = phase_transition_lines(report)
    if transitions:
        lines += ["", "phase transitions (largest refusal drop between adjacent bit widths):", *transitions]
    problems: list[str] = []
    for run in report.runs:
        where = f"{_one_line(run.model)} / {_one_line(run.quantizer)} / {_one_line(run.prompt_set)}"
        if run.verdict in ("fail", "inconclusive"):
            undecided = {o.reason for o in run.thresholds if o.outcome == "inconclusive"}
            problems += [
                f"{'INCONCLUSIVE' if v in undecided else 'FAIL'} {where}: {_one_line(v)}"
                for v in run.violations
            ]
            if not run.violations:
                problems.append(f"{run.verdict.upper()} {where}: no violation recorded")
        elif run.verdict == "error":
            problems.append(f"ERROR {where}: {_one_line(run.error or 'no error message recorded')}")
    if problems:
        lines += ["", *problems]
    lines += ["", gate_line(report)]
    return lines


def _pcr_line(run: RunEntry) -> str:
    parts = [f"{_one_line(run.model)} / {_one_line(run.quantizer)}:"]
    if run.noise_ratio is not None:
        parts.append(f"noise ratio {run.noise_ratio:.3g};")
    pcr = run.pcr
    if pcr is None:
        parts.append("PCR: no damage to diagnose" if run.noise_ratio is not None else "")
    else:
        measured = "n/a" if pcr.measured_recovery is None else f"{pcr.measured_recovery:.2f}"
        predicted = "n/a" if pcr.predicted_recovery is None else f"{pcr.predicted_recovery:.2f}"
        parts.append(
            f"PCR {pcr.mode}, plan {pcr.plan} (+{pcr.plan_memory_overhead:.1%} memory), "
            f"recovery predicted {predicted}, measured {measured}"
        )
        if pcr.vllm_settings is not None:  # the plan as vLLM engine settings (pcr.deploy)
            vllm = pcr.vllm_settings
            skip = ",".join(vllm.get("kv_cache_dtype_skip_layers") or [])
            parts[-1] += f"; vLLM kv_cache_dtype={vllm.get('kv_cache_dtype')} skip layers [{skip}]"
    return " ".join(p for p in parts if p)


# --- GitHub step summary -------------------------------------------------------------------------


def append_step_summary(report: Report, path: str | os.PathLike[str]) -> None:
    """Append ``to_markdown(report)`` to ``path`` (GitHub's ``$GITHUB_STEP_SUMMARY``).

    The file is created if missing and never truncated: earlier steps' summaries stay above.
    """
    target = Path(path)
    text = to_markdown(report)
    if not text.endswith("\n"):
        text += "\n"
    with target.open("a+", encoding="utf-8") as f:
        # a previous writer's last line without its newline would run into our heading
        if f.tell() > 0:
            f.seek(f.tell() - 1)
            if f.read(1) != "\n":
                text = "\n" + text
        f.write(text)


# --- plots -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlotPoint:
    """One run as the phase-transition plot sees it."""

    model: str
    prompt_set: str
    #: The canonical spec string.
    quantizer: str
    #: The spec with its bit counts removed (``int4-channel`` -> ``int-channel``, ``kivi2`` -> ``kivi``):
    #: one line per family across bit widths.
    family: str
    #: ``nominal_bits`` of the spec: the x axis.
    bits: float
    refusal_rate_baseline: float | None
    refusal_rate_quantized: float | None
    perplexity_ratio: float | None
    #: fp8 formats and ``none`` have one bit width each: drawn as points, not lines.
    points_only: bool
    #: Interval bars: the quantized refusal rate's Wilson 95% interval, and the perplexity
    #: ratio's one-sided bounds from the gate (when it gated the ratio); None when unknown.
    refusal_rate_quantized_ci: tuple[float, float] | None = None
    perplexity_ratio_ci: tuple[float, float] | None = None


_BITS_RE = re.compile(r"(?<![A-Za-z0-9_])(int|kivi)\d+")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def plot_points(report: Report) -> dict[str, tuple[PlotPoint, ...]]:
    """The plottable runs by model, in the order the models first appear.

    Skipped: runs with verdict ``error``, runs whose quantizer does not parse (no bit width), and
    runs with neither a quantized refusal rate nor a perplexity ratio. A model left with no point
    is absent. A point may still lack one of its two values: that panel leaves it out.
    """
    out: dict[str, list[PlotPoint]] = {}
    for run in report.runs:
        if run.verdict == "error":
            continue
        rr_q, ppl = _finite(run.refusal_rate_quantized), _finite(run.perplexity_ratio)
        if rr_q is None and ppl is None:
            continue
        try:
            spec = parse_spec(run.quantizer)
        except SpecError:
            continue
        canonical = str(spec)
        kinds = (spec.kv.key, spec.kv.value)
        out.setdefault(run.model, []).append(
            PlotPoint(
                model=run.model,
                prompt_set=run.prompt_set,
                quantizer=canonical,
                family=_BITS_RE.sub(r"\1", canonical),
                bits=nominal_bits(spec),
                refusal_rate_baseline=_finite(run.refusal_rate_baseline),
                refusal_rate_quantized=rr_q,
                perplexity_ratio=ppl,
                points_only=all(isinstance(s, Fp8Scheme | NoQuant) for s in kinds),
                refusal_rate_quantized_ci=run.intervals.get("refusal_rate_quantized"),
                perplexity_ratio_ci=next(
                    (
                        (o.lower, o.upper)
                        for o in run.thresholds
                        if o.metric == "perplexity_ratio" and o.lower is not None and o.upper is not None
                    ),
                    None,
                ),
            )
        )
    return {model: tuple(points) for model, points in out.items()}


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", model)


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ViewError("kvsafety plots need matplotlib: pip install matplotlib") from None


def _draw_panel(
    ax: Axes,
    points: Sequence[PlotPoint],
    value: str,
    series_key: dict[PlotPoint, str],
    styles: dict[str, tuple[str, str, str]],
) -> None:
    series: dict[str, list[tuple[float, float, tuple[float, float] | None]]] = {}
    for p in points:
        y = getattr(p, value)
        if y is not None:
            ci = getattr(p, f"{value}_ci", None)
            series.setdefault(series_key[p], []).append((p.bits, y, ci))
    for key, xy in series.items():
        xy.sort(key=lambda t: t[0])
        color, marker, linestyle = styles[key]
        # interval bars on every point that has one (a point without stays a bare marker)
        below = [0.0 if ci is None else max(0.0, y - ci[0]) for _, y, ci in xy]
        above = [0.0 if ci is None else max(0.0, ci[1] - y) for _, y, ci in xy]
        ax.errorbar(
            [x for x, _, _ in xy],
            [y for _, y, _ in xy],
            yerr=[below, above],
            color=color,
            marker=marker,
            linestyle=linestyle,
            capsize=3,
            label=key,
        )


_POINT_MARKERS = ("D", "s", "^", "v", "P", "X")
_BASELINE_DASHES = ("--", "-.", ":")


def _render(model: str, points: Sequence[PlotPoint], target: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    prompt_sets = list(dict.fromkeys(p.prompt_set for p in points))
    several = len(prompt_sets) > 1
    series_key = {p: f"{p.family} ({p.prompt_set})" if several else p.family for p in points}
    bits = sorted({p.bits for p in points}, reverse=True)
    # one color (and marker) per series, the same in both panels
    styles: dict[str, tuple[str, str, str]] = {}
    for p in points:
        key = series_key[p]
        if key not in styles:
            n = len(styles)
            marker = _POINT_MARKERS[n % len(_POINT_MARKERS)] if p.points_only else "o"
            styles[key] = (f"C{n % 10}", marker, "none" if p.points_only else "-")

    # a Figure on its own Agg canvas: no pyplot, no global backend switch, nothing to close
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rr, ax_ppl = fig.subplots(1, 2)
    for i, prompt_set in enumerate(prompt_sets):
        baselines = [
            p.refusal_rate_baseline
            for p in points
            if p.prompt_set == prompt_set and p.refusal_rate_baseline is not None
        ]
        if baselines:
            label = f"fp baseline ({prompt_set})" if several else "fp baseline"
            dash = _BASELINE_DASHES[i % len(_BASELINE_DASHES)]
            ax_rr.axhline(sum(baselines) / len(baselines), linestyle=dash, color="0.4", label=label)
    _draw_panel(ax_rr, points, "refusal_rate_quantized", series_key, styles)
    ax_ppl.axhline(1.0, linestyle="--", color="0.4", label="fp (ratio 1)")
    _draw_panel(ax_ppl, points, "perplexity_ratio", series_key, styles)

    ratios = [p.perplexity_ratio for p in points if p.perplexity_ratio is not None]
    if ratios and max(ratios) > 5 * max(min(ratios), 1e-9):  # a broken scheme would flatten the rest
        ax_ppl.set_yscale("log")
    ax_rr.set_ylim(-0.02, 1.02)
    ax_rr.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_rr.set_ylabel("refusal rate on harmful prompts (quantized)")
    ax_ppl.set_ylabel(
        "perplexity ratio (quantized / fp)" + (", log scale" if ax_ppl.get_yscale() == "log" else "")
    )
    pad = max(0.5, 0.04 * (bits[0] - bits[-1]))
    for ax in (ax_rr, ax_ppl):
        ax.set_xticks(bits, [f"{b:g}" for b in bits])
        ax.set_xlim(bits[0] + pad, bits[-1] - pad)  # descending: compression grows to the right
        ax.set_xlabel("nominal bits per K/V element (fewer to the right)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"{model}: refusal and perplexity against KV-cache bits")

    write_atomically(target, lambda f: fig.savefig(f, format="png", dpi=100))


@dataclass(frozen=True)
class PhaseTransition:
    """The largest refusal drop between adjacent bit widths of one quantizer family."""

    model: str
    prompt_set: str
    family: str
    #: (higher, lower) nominal bits, and the canonical specs there.
    bits: tuple[float, float]
    quantizers: tuple[str, str]
    #: Quantized refusal rate at the higher width minus at the lower one.
    drop: float
    perplexity_ratios: tuple[float | None, float | None]


def phase_transitions(report: Report) -> list[PhaseTransition]:
    """Per (model, prompt set, family) with at least two bit widths: where refusals fall most
    between adjacent widths, with the perplexity ratio on both sides (the study's picture: a
    cliff in refusals where perplexity barely moves). Families in report order; a family whose
    refusal rate never falls between adjacent widths has no transition."""
    groups: dict[tuple[str, str, str], list[PlotPoint]] = {}
    for model, plotted in plot_points(report).items():
        for p in plotted:
            if not p.points_only and p.refusal_rate_quantized is not None:
                groups.setdefault((model, p.prompt_set, p.family), []).append(p)
    out = []
    for (model, prompt_set, family), members in groups.items():
        ladder = sorted(members, key=lambda p: -p.bits)
        if len(ladder) < 2:
            continue
        hi, lo = max(
            itertools.pairwise(ladder),
            key=lambda pair: (
                (pair[0].refusal_rate_quantized or 0.0) - (pair[1].refusal_rate_quantized or 0.0)
            ),
        )
        drop = (hi.refusal_rate_quantized or 0.0) - (lo.refusal_rate_quantized or 0.0)
        if drop <= 0:
            continue
        out.append(
            PhaseTransition(
                model=model,
                prompt_set=prompt_set,
                family=family,
                bits=(hi.bits, lo.bits),
                quantizers=(hi.quantizer, lo.quantizer),
                drop=drop,
                perplexity_ratios=(hi.perplexity_ratio, lo.perplexity_ratio),
            )
        )
    return out


def phase_transition_lines(report: Report) -> list[str]:
    """One Markdown line per family: where its refusal cliff is, and perplexity on both sides."""

    def ppl(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return [
        f"- {t.model} `{t.family}`: {t.bits[0]:g} -> {t.bits[1]:g} bits (`{t.quantizers[0]}` -> "
        f"`{t.quantizers[1]}`) refusals {-t.drop * 100:+.1f} pp; perplexity ratio "
        f"{ppl(t.perplexity_ratios[0])} -> {ppl(t.perplexity_ratios[1])}"
        for t in phase_transitions(report)
    ]


def _render_pcr(run: RunEntry, target: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    assert run.pcr is not None
    curves = run.pcr.per_layer
    fig = Figure(figsize=(9, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, values, marker in (
        ("R_layer (layer unquantized)", curves.r_layer, "o"),
        ("R_gran (finer granularity)", curves.r_gran, "s"),
        ("R_out (outlier channels in 16-bit)", curves.r_out, "^"),
    ):
        ax.plot(curves.layer, values, marker=marker, label=name)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.axhline(1.0, color="0.5", linestyle="--", linewidth=0.8, label="all calibration damage")
    ax.set_xlabel("layer")
    ax.set_ylabel("fraction of the calibration damage removed")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    predicted = run.pcr.predicted_recovery
    fig.suptitle(
        f"{run.model} / {run.quantizer}: PCR {run.pcr.mode}; plan {run.pcr.plan} "
        f"(+{run.pcr.plan_memory_overhead:.1%} memory, predicted recovery "
        + ("n/a" if predicted is None else f"{predicted:.2f}")
        + ")",
        fontsize="small",
    )
    write_atomically(target, lambda f: fig.savefig(f, format="png", dpi=100))


def write_plots(report: Report, folder: str | os.PathLike[str]) -> list[Path]:
    """Write one PNG per model, ``kvsafety-<model-slug>.png``, and return the paths written.

    Each figure has two panels against ``nominal_bits`` (descending: 16 on the left): the
    quantized refusal rate with the fp baseline dashed, and the perplexity ratio with 1.0 dashed;
    one line per quantizer family (fp8 formats and ``none`` as points). What ``plot_points``
    skips is not drawn; a model without a plottable run gets no file. The slug replaces every
    character outside ``[A-Za-z0-9._-]`` by ``-`` (``-2``, ``-3``... where two models collide).
    Each file is written to a temporary name and renamed, so a crash leaves no partial PNG.
    Raises ViewError when matplotlib is not installed.
    """
    _require_matplotlib()
    by_model = plot_points(report)
    if not by_model:
        return []
    out_dir = Path(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: set[str] = set()
    for model, points in by_model.items():
        slug = base = _slug(model)
        n = 1
        while slug in used:
            n += 1
            slug = f"{base}-{n}"
        used.add(slug)
        target = out_dir / f"kvsafety-{slug}.png"
        _render(model, points, target)
        written.append(target)
    for run in report.runs:  # PCR's evidence curves, one figure per diagnosed run
        if run.pcr is not None and run.pcr.per_layer.layer:
            target = out_dir / f"kvsafety-pcr-{_slug(run.model)}-{_slug(run.quantizer)}.png"
            _render_pcr(run, target)
            written.append(target)
    return written
