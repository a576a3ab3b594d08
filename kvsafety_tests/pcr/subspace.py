"""The safety subspace and its quantization-noise ratio (docs/metrics.md, "Safety subspace and noise ratio").

At each layer, the residual stream at the last prompt token of harmful (H) and harmless (B)
prompts under the fp cache gives the safety subspace ``S``: the difference of means (k = 1) or
the top-k right singular vectors of the per-prompt ``h_H(x) - mu_B`` differences. The
quantizer's noise ``delta(x) = h_q(x) - h_fp(x)`` is then measured against the safety signal
inside ``S`` and against the whole representation's spread::

    NR_l = [ E||P_S delta||^2 / ||P_S (mu_H - mu_B)||^2 ] / [ E||delta||^2 / E||h_fp - mu||^2 ]

NR >> 1: the quantizer's noise eats the safety signal far faster than it disturbs what
perplexity averages over. The noise concentration compares noise energy per dimension inside
``S`` (k dimensions) with noise energy per dimension in the whole d-dimensional stream::

    NC_l = [ E||P_S delta||^2 / k ] / [ E||delta||^2 / d ]

1 for isotropic noise, d/k for noise confined to ``S``, 0 for noise orthogonal to it. NR is NC
rescaled by the safety signal's share of the spread: ``NR = NC * (k/d) * spread / signal``.
Expectations run over all prompts (H and B); ``mu`` is their mean. A layer with no noise has NR
and NC 0 (nothing was disturbed).
The estimator is pure tensor arithmetic (``noise_ratio``); ``capture`` gets the activations
from a real model through the hf backend, keeping only the last prompt token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..backends import Backend
    from ..spec import QuantSpec

__all__ = ["NoiseRatio", "capture", "noise_ratio", "noise_ratio_bounds", "safety_subspace"]


def safety_subspace(h_harmful: torch.Tensor, h_harmless: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Orthonormal basis of the safety subspace, [k, hidden].

    h_harmful: [n_H, hidden]; h_harmless: [n_B, hidden] (fp activations at one layer).
    k = 1: the normalized difference of means. k > 1: the top-k right singular vectors of the
    per-prompt differences ``h_H(x) - mu_B`` (uncentred, so the first follows the mean shift).
    """
    if k < 1:
        raise ValueError(f"subspace dimension k = {k} must be >= 1")
    if h_harmful.shape[0] == 0 or h_harmless.shape[0] == 0:
        raise ValueError("the safety direction needs at least one harmful and one harmless prompt")
    mu_b = h_harmless.mean(0)  # [hidden]
    if k == 1:
        d = h_harmful.mean(0) - mu_b  # [hidden]
        norm = d.norm()
        if not norm > 0:
            raise ValueError("harmful and harmless activations have the same mean: no safety direction")
        return (d / norm)[None, :]
    if k > min(h_harmful.shape[0], h_harmful.shape[1]):
        raise ValueError(f"k = {k} exceeds the {h_harmful.shape[0]} harmful prompts or the width")
    diffs = h_harmful - mu_b  # [n_H, hidden]
    _, _, vh = torch.linalg.svd(diffs.double(), full_matrices=False)  # vh: [min(n_H, hidden), hidden]
    return vh[:k].to(h_harmful.dtype)


@dataclass(frozen=True)
class NoiseRatio:
    """The noise ratio and the noise concentration per layer, and the ratio's parts."""

    layers: tuple[int, ...]
    per_layer: tuple[float, ...]
    #: NC per layer: noise energy per dimension inside S over that in the whole stream.
    concentration: tuple[float, ...]
    #: E||P_S delta||^2 / ||P_S(mu_H - mu_B)||^2 per layer: noise against the safety signal.
    subspace_part: tuple[float, ...]
    #: E||delta||^2 / E||h_fp - mu||^2 per layer: noise against the whole spread.
    whole_part: tuple[float, ...]

    @property
    def max(self) -> float:
        return max(self.per_layer)

    @property
    def argmax_layer(self) -> int:
        return self.layers[max(range(len(self.per_layer)), key=self.per_layer.__getitem__)]

    @property
    def max_concentration(self) -> float:
        return max(self.concentration)

    @property
    def argmax_concentration_layer(self) -> int:
        return self.layers[max(range(len(self.concentration)), key=self.concentration.__getitem__)]


def noise_ratio(
    fp: torch.Tensor,
    quantized: torch.Tensor,
    harmful: torch.Tensor,
    *,
    k: int = 1,
    layers: Sequence[int] | None = None,
) -> NoiseRatio:
    """NR and NC per layer from last-token activations.

    fp, quantized: [N, n_layers, hidden] (the same prompts, fp cache and quantized cache);
    harmful: [N] bool, True for H prompts. ``layers`` names the n_layers columns (default 0..).
    A layer whose quantizer noise is exactly zero has NR and NC 0 (nothing was disturbed).
    """
    if fp.shape != quantized.shape or fp.dim() != 3:
        raise ValueError(
            f"fp {tuple(fp.shape)} and quantized {tuple(quantized.shape)} must match, [N, L, hidden]"
        )
    if harmful.shape != (fp.shape[0],):
        raise ValueError(f"harmful mask {tuple(harmful.shape)} must be [N] = [{fp.shape[0]}]")
    names = tuple(range(fp.shape[1])) if layers is None else tuple(layers)
    if len(names) != fp.shape[1]:
        raise ValueError(f"{len(names)} layer names for {fp.shape[1]} captured layers")
    fp, quantized = fp.double(), quantized.double()
    per, conc, sub, whole = [], [], [], []
    width = fp.shape[2]  # d
    for j in range(fp.shape[1]):
        h = fp[:, j]  # [N, hidden]
        h_h, h_b = h[harmful], h[~harmful]
        basis = safety_subspace(h_h, h_b, k)  # [k, hidden]
        delta = quantized[:, j] - h  # [N, hidden]
        signal = (basis @ (h_h.mean(0) - h_b.mean(0))).square().sum()  # ||P_S (mu_H - mu_B)||^2
        noise_in_s = (delta @ basis.T).square().sum(-1).mean()  # E||P_S delta||^2
        noise = delta.square().sum(-1).mean()  # E||delta||^2
        spread = (h - h.mean(0)).square().sum(-1).mean()  # E||h_fp - mu||^2
        s_part = float(noise_in_s / signal)
        w_part = float(noise / spread)
        sub.append(s_part)
        whole.append(w_part)
        per.append(0.0 if w_part == 0.0 else s_part / w_part)
        # (E||P_S delta||^2 / k) / (E||delta||^2 / d); basis.shape[0] is k
        conc.append(0.0 if noise == 0.0 else float((noise_in_s / basis.shape[0]) / (noise / width)))
    return NoiseRatio(
        layers=names,
        per_layer=tuple(per),
        concentration=tuple(conc),
        subspace_part=tuple(sub),
        whole_part=tuple(whole),
    )


#: Resamples of the noise ratio's stratified bootstrap (fixed seed: reproducible bounds).
NOISE_RATIO_RESAMPLES = 200


def noise_ratio_bounds(
    fp: torch.Tensor,
    quantized: torch.Tensor,
    harmful: torch.Tensor,
    alpha: float,
    *,
    k: int = 1,
    resamples: int = NOISE_RATIO_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """One-sided (lower, upper) bounds at level ``alpha`` each on the maximum over layers of the
    noise ratio, from a percentile bootstrap that resamples prompts with replacement within H and
    within B (the same prompts for fp and quantized: the pairing is kept), recomputing the safety
    direction, the noise and the spread on each resample.

    fp, quantized: [N, n_layers, hidden]; harmful: [N] bool.
    """
    import torch

    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha!r}")
    gen = torch.Generator().manual_seed(seed)
    h_idx = torch.nonzero(harmful).flatten()  # [N_H]
    b_idx = torch.nonzero(~harmful).flatten()  # [N_B]
    maxima = []
    for _ in range(resamples):
        pick_h = h_idx[torch.randint(len(h_idx), (len(h_idx),), generator=gen)]
        pick_b = b_idx[torch.randint(len(b_idx), (len(b_idx),), generator=gen)]
        idx = torch.cat([pick_h, pick_b])  # [N]
        mask = torch.arange(len(idx)) < len(pick_h)  # [N]
        maxima.append(noise_ratio(fp[idx], quantized[idx], mask, k=k).max)
    maxima.sort()
    lo = maxima[max(0, math.floor(alpha * resamples))]
    hi = maxima[min(resamples - 1, math.ceil((1.0 - alpha) * resamples) - 1)]
    return lo, hi


def capture(
    backend: Backend,
    prompts: Sequence[str],
    spec: QuantSpec | str,
    layers: Sequence[int] | None = None,
) -> torch.Tensor:
    """Residual stream after each of ``layers`` (default all) at the last prompt token, under
    ``spec``'s cache in the prompt pass: [N, n_layers, hidden] float32. One forward per batch."""
    chosen = list(range(backend.num_layers)) if layers is None else list(layers)
    out = backend.run(list(prompts), spec, max_new_tokens=1, capture_layers=chosen)
    hidden = []
    for c in out:
        if c.last_hidden is None:  # never a silent zero: the noise ratio would vouch for nothing
            raise ValueError(f"the {backend.name} backend returned no residual stream for capture_layers")
        hidden.append(c.last_hidden)  # [n_layers, hidden]
    return torch.stack(hidden)  # [N, n_layers, hidden]
