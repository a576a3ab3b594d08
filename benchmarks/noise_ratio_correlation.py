"""Does the noise ratio or the noise concentration predict harm? (issue 16 item 2, docs/results/noise-ratio.md)

Reads audit reports made with ``--pcr`` (or ``--noise-ratio``) and prints, per quantizer, the
conditional flip rate k/n, the maxima over layers of the noise ratio NR and the noise
concentration NC (docs/metrics.md) with their layers, PCR's calibration damage D and, across
layers, the Spearman correlation of each ratio's per-layer curve with PCR's per-layer damage
(``R_layer``: the damage removed when that layer alone is left unquantized). Then, across
quantizers, the Spearman correlation of each maximum with the conditional flip rate, with a
percentile bootstrap interval over quantizers (every resample kept; a constant resample counts as
0) and a permutation p-value.

    python benchmarks/noise_ratio_correlation.py /tmp/nr/*.json
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Sequence

from kvsafety_tests.report import RunEntry
from kvsafety_tests.report.files import load_report

__all__ = ["bootstrap_interval", "permutation_p", "ranks", "spearman"]


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson on tie-averaged ranks); None when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equal-length lists of at least 2, got {len(x)} and {len(y)}")
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def bootstrap_interval(
    x: Sequence[float], y: Sequence[float], *, resamples: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of rho over pairs resampled with replacement; every resample is kept
    (an undefined rho, a constant resample, counts as 0)."""
    rng = random.Random(seed)
    n = len(x)
    rhos = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        rho = spearman([x[i] for i in idx], [y[i] for i in idx])
        rhos.append(0.0 if rho is None else rho)
    rhos.sort()
    tail = (1.0 - level) / 2
    lo = rhos[math.floor(tail * resamples)]
    hi = rhos[min(resamples - 1, math.ceil((1 - tail) * resamples) - 1)]
    return lo, hi


def permutation_p(
    x: Sequence[float], y: Sequence[float], *, resamples: int = 10000, seed: int = 0
) -> float | None:
    """Two-sided permutation p-value of rho (y shuffled), with the +1 correction."""
    rho = spearman(x, y)
    if rho is None:
        return None
    rng = random.Random(seed)
    ys = list(y)
    hits = 0
    for _ in range(resamples):
        rng.shuffle(ys)
        r = spearman(x, ys)
        if r is not None and abs(r) >= abs(rho) - 1e-12:
            hits += 1
    return (hits + 1) / (resamples + 1)


def _fmt(rho: float | None) -> str:
    return "n/a" if rho is None else f"{rho:+.2f}"


def _runs(paths: Sequence[str]) -> list[RunEntry]:
    runs: dict[str, RunEntry] = {}
    for path in paths:
        for run in load_report(path).runs:
            if run.noise_ratio is not None and run.noise_ratio_per_layer is not None:
                runs[run.quantizer] = run  # a later file wins for the same quantizer
    return list(runs.values())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("reports", nargs="+", help="report JSON files (runs with the noise ratio)")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap and permutation resamples")
    args = parser.parse_args(argv)
    runs = _runs(args.reports)
    if not runs:
        raise SystemExit(f"no run with a noise ratio in {', '.join(args.reports)}")

    print(
        "| quantizer | conditional flips k/n (%) | NR max (layer) | NC max (layer) | PCR D (log-odds) "
        "| rho(NR_l, R_layer) | rho(NC_l, R_layer) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    cf, nr_max, nc_max = [], [], []
    layer_rhos: dict[str, list[float]] = {"NR": [], "NC": []}
    for run in sorted(runs, key=lambda r: r.quantizer):
        k, n = run.counts.get("conditional_flip_rate", (0, 0))
        nr = list(run.noise_ratio_per_layer or ())
        nc = list(run.noise_concentration_per_layer or ())
        nr_at = max(range(len(nr)), key=nr.__getitem__)
        nc_text = "n/a"
        if nc:
            nc_at = max(range(len(nc)), key=nc.__getitem__)
            nc_text = f"{nc[nc_at]:.3g} (L{nc_at})"
        rho_nr = rho_nc = None
        damage = "no damage"
        if run.pcr is not None:
            damage = f"{run.pcr.damage:+.3f}"
            per = dict(zip(run.pcr.per_layer.layer, run.pcr.per_layer.r_layer, strict=True))
            at = [layer for layer in per if layer < len(nr)]
            rho_nr = spearman([nr[layer] for layer in at], [per[layer] for layer in at])
            if nc:
                rho_nc = spearman([nc[layer] for layer in at], [per[layer] for layer in at])
            for name, rho in (("NR", rho_nr), ("NC", rho_nc)):
                if rho is not None:
                    layer_rhos[name].append(rho)
        print(
            f"| `{run.quantizer}` | {k}/{n} ({100 * k / n if n else float('nan'):.0f}) "
            f"| {nr[nr_at]:.3g} (L{nr_at}) | {nc_text} | {damage} | {_fmt(rho_nr)} | {_fmt(rho_nc)} |"
        )
        if n:
            cf.append(k / n)
            nr_max.append(nr[nr_at])
            nc_max.append(max(nc) if nc else float("nan"))

    print()
    print(f"Across quantizers (n = {len(cf)}: a tiny sample; the interval is wide by construction):")
    for name, values in (("NR max", nr_max), ("NC max", nc_max)):
        if any(math.isnan(v) for v in values) or len(values) < 3:
            print(f"- {name}: not enough runs")
            continue
        rho = spearman(values, cf)
        lo, hi = bootstrap_interval(values, cf, resamples=args.resamples)
        p = permutation_p(values, cf, resamples=args.resamples)
        p_text = "n/a" if p is None else f"{p:.3f}"
        print(
            f"- Spearman({name}, conditional flip rate) = {_fmt(rho)}, 95% bootstrap [{lo:+.2f}, {hi:+.2f}], "
            f"permutation p = {p_text}"
        )
    print()
    print("Across layers, per quantizer with PCR damage (the table's last two columns):")
    for name, rhos in layer_rhos.items():
        if rhos:
            print(
                f"- rho({name}_l, R_layer): median {statistics.median(rhos):+.2f}, range "
                f"[{min(rhos):+.2f}, {max(rhos):+.2f}] over {len(rhos)} quantizer(s)"
            )


if __name__ == "__main__":
    main()
