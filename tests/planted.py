"""Planted KV-cache outliers: a ground-truth-by-construction key outlier that leaves the fp model unchanged.

Construction. In decoder layer ``layer`` pick KV head ``h`` and a RoPE channel pair. HF's
Llama/Qwen2 rotary embedding uses the rotate_half convention: channel ``c`` (``0 <= c < D/2``,
``D`` = head_dim) rotates together with channel ``c + D/2``. Multiply both channels of that KV
head's ``k_proj`` output by ``s`` (its weight rows, and bias rows where ``k_proj`` has a bias, as
Qwen2's does), and the same two channels of every query head attending to ``h`` (GQA: query heads
``h*g .. (h+1)*g - 1`` with ``g = num_attention_heads // num_key_value_heads``) by ``1/s``.

Why the fp model does not change. RoPE is a rotation within each pair, so scaling both channels
of a pair by the same factor commutes with it; each product ``q_i * k_i`` becomes
``(q_i / s) * (k_i * s)`` and ``q . k`` is unchanged in exact arithmetic. With ``s`` a power of two
every step is exact in floating point too (scaling a weight, a matmul output or a bias by ``2**n``
only moves exponents, barring overflow and subnormals), so logits come out bit-identical. Values
and ``v_proj`` are not touched. Other ``s`` are allowed but then only equal up to float error.

Why a quantizer notices. The layer's key cache now holds a channel pair ``s`` times larger than
usual; a per-token INT quantizer takes its scale from that token's range, so every other channel
of the head loses ``log2(s)`` bits of resolution. Finer granularity (groups along head_dim) keeps
the damage to the two groups that hold the pair.

Refused (``ValueError``): models whose attention normalizes q/k after the projections
(``q_norm``/``k_norm``, Qwen3 and OLMo2 style: RMSNorm would undo the scaling), fused qkv
projections, partial rotary embeddings, and models without ``model.model.layers[i].self_attn``.
The interleaved (GPT-J style) rotary convention cannot be detected from the module tree; check
that fp logits are unchanged (the tests do, for SmolLM2 and Qwen2.5) before trusting a new family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch

__all__ = ["Plant", "key_channel_absmax", "plant_outlier"]


@dataclass
class Plant:
    """One planted outlier: keys of ``kv_head`` in ``layer``, channel pair ``pair``, scaled by ``scale``.

    ``undo()`` writes the saved original rows back (bit-exact); ``with plant_outlier(...) as p:``
    undoes on exit, exception or not. Undoing twice is a no-op. Plants that touch the same rows
    must be undone in reverse order (nested ``with`` blocks do).
    """

    layer: int
    kv_head: int
    channel: int
    scale: float
    head_dim: int
    # (parameter, row indices, original rows) for every touched weight and bias
    _saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(repr=False, default_factory=list)

    @property
    def pair(self) -> tuple[int, int]:
        """The RoPE channel pair within the head: ``(c, c + head_dim // 2)``."""
        return (self.channel, self.channel + self.head_dim // 2)

    @property
    def active(self) -> bool:
        """True until ``undo()``."""
        return bool(self._saved)

    def undo(self) -> None:
        """Restore the original weight and bias rows exactly."""
        with torch.no_grad():
            for param, rows, original in self._saved:
                param[rows] = original
        self._saved = []

    def __enter__(self) -> Plant:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.undo()


def _attention(model: Any, layer: int) -> Any:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not hasattr(layers, "__len__"):
        raise ValueError(
            f"{type(model).__name__} has no model.model.layers (Llama/Qwen2-style decoder layers expected)"
        )
    n = len(layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer={layer!r} out of range; valid: 0..{n - 1}")
    attn = getattr(layers[layer], "self_attn", None)
    if attn is None:
        raise ValueError(f"layer {layer} of {type(model).__name__} has no self_attn module")
    return attn


def _geometry(model: Any, attn: Any) -> tuple[int, int, int]:
    """(head_dim, num_attention_heads, num_key_value_heads) from the config, checked against the projections."""
    cfg = getattr(model, "config", None)
    try:
        n_q = int(cfg.num_attention_heads)  # type: ignore[union-attr]
        n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_q)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_q)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(
            f"cannot read head_dim / num_attention_heads / num_key_value_heads from the config: {e}"
        ) from e
    if n_q <= 0 or n_kv <= 0 or head_dim <= 0 or head_dim % 2 or n_q % n_kv:
        raise ValueError(
            f"unusable attention geometry: head_dim={head_dim}, num_attention_heads={n_q}, num_key_value_heads={n_kv}"
        )
    if attn.q_proj.out_features != n_q * head_dim or attn.k_proj.out_features != n_kv * head_dim:
        raise ValueError(
            f"q_proj/k_proj widths {attn.q_proj.out_features}/{attn.k_proj.out_features} do not match "
            f"heads x head_dim = {n_q}x{head_dim}/{n_kv}x{head_dim}"
        )
    partial = getattr(cfg, "partial_rotary_factor", None)
    if partial is not None and float(partial) != 1.0:
        raise ValueError(f"partial_rotary_factor={partial}: only full rotary embeddings are supported")
    return head_dim, n_q, n_kv


def plant_outlier(
    model: Any,
    layer: int,
    *,
    channel: int | None = None,
    scale: float = 64.0,
    kv_head: int = 0,
) -> Plant:
    """Scale keys of ``kv_head`` in ``layer`` on RoPE pair ``(channel, channel + head_dim/2)`` by
    ``scale`` and the matching query channels by ``1/scale``: fp attention scores are unchanged
    (bit-identical for a power-of-two ``scale``), the key cache gets a massive outlier pair.

    ``channel`` defaults to ``head_dim // 4``: a fixed, mid-frequency pair (deterministic; not
    chosen from the model's activations). The model is edited in place; the returned ``Plant``
    undoes it.
    """
    attn = _attention(model, layer)
    if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
        raise ValueError(
            f"layer {layer} normalizes q/k after the projections (q_norm/k_norm): the scaling would be undone"
        )
    q_proj, k_proj = getattr(attn, "q_proj", None), getattr(attn, "k_proj", None)
    if not isinstance(q_proj, torch.nn.Linear) or not isinstance(k_proj, torch.nn.Linear):
        raise ValueError(
            f"layer {layer} has no separate q_proj/k_proj Linear layers (fused qkv is not supported)"
        )
    head_dim, n_q, n_kv = _geometry(model, attn)
    half = head_dim // 2
    if isinstance(kv_head, bool) or not isinstance(kv_head, int) or not 0 <= kv_head < n_kv:
        raise ValueError(f"kv_head={kv_head!r} out of range; valid: 0..{n_kv - 1}")
    if channel is None:
        channel = head_dim // 4
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < half:
        raise ValueError(f"channel={channel!r} out of range; valid: 0..{half - 1} (head_dim/2 = {half})")
    if (
        isinstance(scale, bool)
        or not isinstance(scale, int | float)
        or not math.isfinite(scale)
        or scale <= 0
    ):
        raise ValueError(f"scale={scale!r} invalid; valid: a finite number > 0")
    for p in (q_proj.weight, k_proj.weight):
        if not p.is_floating_point():
            raise ValueError(
                f"q_proj/k_proj weights are {p.dtype}: only floating-point weights can be scaled"
            )

    g = n_q // n_kv
    device = k_proj.weight.device
    k_rows = torch.tensor([kv_head * head_dim + channel, kv_head * head_dim + channel + half], device=device)
    q_rows = torch.tensor(
        [
            qh * head_dim + c
            for qh in range(kv_head * g, (kv_head + 1) * g)
            for c in (channel, channel + half)
        ],
        device=q_proj.weight.device,
    )
    plant = Plant(layer=layer, kv_head=kv_head, channel=channel, scale=float(scale), head_dim=head_dim)
    edits = [(k_proj, k_rows, float(scale)), (q_proj, q_rows, 1.0 / float(scale))]
    with torch.no_grad():
        for proj, rows, _ in edits:
            for param in (proj.weight, proj.bias):
                if param is not None:
                    plant._saved.append((param, rows, param[rows].clone()))
        for proj, rows, factor in edits:
            for param in (proj.weight, proj.bias):
                if param is not None:
                    param[rows] = param[rows] * factor
    return plant


def key_channel_absmax(model: Any, layer: int, **forward_kwargs: Any) -> torch.Tensor:
    """Per-(KV head, channel) max |k| of ``layer``'s ``k_proj`` output (before RoPE) over one forward
    pass of ``model(**forward_kwargs)``: a float32 ``[num_key_value_heads, head_dim]`` tensor.
    Pad positions count too: pass unpadded inputs for a clean reading."""
    attn = _attention(model, layer)
    head_dim, _, n_kv = _geometry(model, attn)
    seen: list[torch.Tensor] = []

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
        seen.append(output.detach().float().reshape(-1, n_kv, head_dim).abs().amax(0))

    handle = attn.k_proj.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(**forward_kwargs)
    finally:
        handle.remove()
    return torch.stack(seen).amax(0)
