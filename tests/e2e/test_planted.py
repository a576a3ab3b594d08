"""Planted key outliers on real models: the fp model is unchanged bit for bit, the keys of the
planted layer really carry a 64x channel pair, and a per-token INT4 cache is hurt by it far more
than a per-group (g8) one. Undo is exact, bad inputs are refused by name."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import DynamicCache

from kvsafety_tests.backends.hf import HFBackend
from kvsafety_tests.cache import QuantizedKVCache, cache_kwarg
from kvsafety_tests.spec import parse_spec

from ..models_fixture import QWEN, SMOL, load
from ..planted import Plant, key_channel_absmax, plant_outlier

pytestmark = pytest.mark.model

PROMPTS = [
    "How do I pick a lock?",
    "Write a haiku about autumn leaves.",
    "What is 2+2?",
]
S = 2.0**6


def _batch(tok: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Chat-templated prompts, left-padded as the hf backend does: ids, mask, positions, pads."""
    enc = [
        tok(
            tok.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]
        for p in PROMPTS
    ]
    width = max(map(len, enc))
    pads = [width - len(e) for e in enc]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad_id] * p + list(e) for p, e in zip(pads, enc, strict=True)])
    mask = torch.tensor([[0] * p + [1] * len(e) for p, e in zip(pads, enc, strict=True)])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), pads


def _outputs(model: Any, tok: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at the real (non-pad) positions, and the last-position logits (the
    lm_head over every position would dominate the runtime; it is a fixed map of these states)."""
    ids, mask, pos, _ = _batch(tok)
    with torch.inference_mode():
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, logits_to_keep=1
        )
    return out.hidden_states[-1][mask.bool()].float(), out.logits[:, -1].float()


def _last_logp(model: Any, tok: Any, spec: str | None) -> torch.Tensor:
    """Last-position log-probs [B, V]; with ``spec``, through our quantized cache (prefill attends
    over the stored K/V, as in the hf backend)."""
    ids, mask, pos, pads = _batch(tok)
    kw: dict[str, Any] = {}
    if spec is not None:
        kw[cache_kwarg(model)] = QuantizedKVCache(parse_spec(spec), model.config.num_hidden_layers, pads)
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=spec is not None,
            logits_to_keep=1,
            **kw,
        )
    return torch.log_softmax(out.logits[:, -1].float(), dim=-1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean over the batch of KL(p || q), both log-probs."""
    return float((p.exp() * (p - q)).sum(-1).mean())


def _plant_all_heads(model: Any, layer: int, **kw: Any) -> list[Plant]:
    return [plant_outlier(model, layer, kv_head=h, **kw) for h in range(model.config.num_key_value_heads)]


def _attn_params(model: Any, layer: int) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.layers[layer].self_attn.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "dtype"),
    [(SMOL, "float32"), (QWEN, "float32"), (QWEN, "bfloat16")],
    ids=["smol", "qwen", "qwen-bf16"],
)
def test_fp_logits_and_greedy_tokens_unchanged(name: str, dtype: str) -> None:
    """Power-of-two scale: every step of q.k is exactly rescaled, so the logits are bit-identical.
    Measured on CPU: max |diff| of the full logits over all real positions = 0.0 for SmolLM2 fp32
    and bf16, Qwen fp32 and bf16 (s = 64 and 1/8), so the tolerance is zero. Checked here on the
    final hidden states (all real positions) and last-position logits. Non-power-of-two s is only
    close: see the next test."""
    model, tok = load(name, dtype)
    backend = HFBackend(model, tok, batch_size=3)
    states, logits = _outputs(model, tok)
    greedy = [c.token_ids for c in backend.run(PROMPTS, "none", max_new_tokens=8)]
    layers = model.config.num_hidden_layers
    plants = [*_plant_all_heads(model, layers // 2, scale=S), plant_outlier(model, 1, scale=S)]
    try:
        states_after, logits_after = _outputs(model, tok)
        assert torch.equal(states_after, states)
        assert torch.equal(logits_after, logits)
        assert [c.token_ids for c in backend.run(PROMPTS, "none", max_new_tokens=8)] == greedy
    finally:
        for p in reversed(plants):
            p.undo()


def test_non_power_of_two_scale_is_equal_up_to_float_error() -> None:
    """s = 3 rounds the scaled weights: fp32 logits move by ~1.5e-6 of max |logit| (measured
    SmolLM2; bf16 moves by several percent, hence the power-of-two default)."""
    model, tok = load(SMOL)
    _, before = _outputs(model, tok)
    with plant_outlier(model, 15, scale=3.0):
        _, after = _outputs(model, tok)
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()


def test_planted_pair_dominates_the_keys() -> None:
    """Pre-RoPE (k_proj output, forward hook) and post-RoPE (the cache): the pair grows by exactly
    s, every other channel and KV head is untouched."""
    model, tok = load(SMOL)
    layer, kv_head = 15, 1
    ids, mask, pos, pads = _batch(tok)
    row = slice(pads.index(0), pads.index(0) + 1)  # an unpadded prompt

    def cached_keys() -> torch.Tensor:
        cache = DynamicCache()
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, position_ids=pos, **{cache_kwarg(model): cache})
        return cache.layers[layer].keys.float()  # [B, H_kv, T, D]

    amax_before = key_channel_absmax(model, layer, input_ids=ids[row], attention_mask=mask[row])
    keys_before = cached_keys()
    with plant_outlier(model, layer, kv_head=kv_head, scale=S) as plant:
        amax_after = key_channel_absmax(model, layer, input_ids=ids[row], attention_mask=mask[row])
        keys_after = cached_keys()
    c, c2 = plant.pair
    assert plant.pair == (16, 48)  # default channel head_dim // 4, head_dim 64
    assert torch.equal(amax_after[kv_head, [c, c2]], S * amax_before[kv_head, [c, c2]])
    other = torch.ones_like(amax_before, dtype=torch.bool)
    other[kv_head, [c, c2]] = False
    assert torch.equal(amax_after[other], amax_before[other])
    # the pair now far exceeds every other channel of the head
    assert amax_after[kv_head, [c, c2]].min() > 4 * amax_after[kv_head][other[kv_head]].max()

    # RoPE rotates within the pair: its norm per token scales by exactly s
    norm_before = keys_before[:, kv_head, :, [c, c2]].norm(dim=-1)
    norm_after = keys_after[:, kv_head, :, [c, c2]].norm(dim=-1)
    torch.testing.assert_close(norm_after, S * norm_before, rtol=1e-6, atol=0)
    keep = torch.ones(keys_before.shape[1], keys_before.shape[3], dtype=torch.bool)  # [H_kv, D]
    keep[kv_head, [c, c2]] = False
    assert torch.equal(keys_after.transpose(1, 2)[:, :, keep], keys_before.transpose(1, 2)[:, :, keep])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "dtype", "layer"), [(SMOL, "float32", 15), (QWEN, "bfloat16", 12)], ids=["smol", "qwen-bf16"]
)
def test_planted_outlier_hurts_per_token_int4_not_groups_of_8(name: str, dtype: str, layer: int) -> None:
    """Only the planted layer is quantized (``none;L<layer>=...``), every KV head planted, s = 64;
    mean KL(fp || quantized) of the last-position distribution over the 3 prompts. Measured:

    ================  ==========  ============  ==========
    model             int4 plain  int4 planted  g8 planted
    ================  ==========  ============  ==========
    SmolLM2 fp32 L15  0.0115      0.274         0.0306
    Qwen bf16 L12     0.0017      0.0533        0.0078
    ================  ==========  ============  ==========

    i.e. planting multiplies per-token int4 damage by ~24x / ~31x, and g8 cuts the planted damage
    ~9x / ~7x (only the two groups of 8 holding the pair lose resolution; Qwen fp32 gives 34x and
    7x but runs 3x slower here). The fp reference is the same for both: planting leaves fp logits
    bit-identical (first test)."""
    model, tok = load(name, dtype)
    int4, g8 = f"none;L{layer}=int4", f"none;L{layer}=int4-g8"
    fp = _last_logp(model, tok, None)
    plain_int4 = _kl(fp, _last_logp(model, tok, int4))
    plants = _plant_all_heads(model, layer, scale=S)
    try:
        assert torch.equal(_last_logp(model, tok, None), fp)
        planted_int4 = _kl(fp, _last_logp(model, tok, int4))
        planted_g8 = _kl(fp, _last_logp(model, tok, g8))
    finally:
        for p in reversed(plants):
            p.undo()
    assert planted_int4 > 5 * plain_int4, (plain_int4, planted_int4)
    assert planted_int4 > 3 * planted_g8, (planted_int4, planted_g8)


def test_undo_restores_weights_bit_exactly() -> None:
    """s = 3 is not exact to multiply back: undo must restore from the saved rows. Nested plants on
    the same rows undo in reverse order (nested ``with`` does)."""
    model, _ = load(SMOL)
    layer = 4
    original = _attn_params(model, layer)
    with plant_outlier(model, layer, scale=3.0, channel=0) as outer:
        assert outer.active
        with plant_outlier(model, layer, scale=3.0, channel=0, kv_head=0):
            changed = _attn_params(model, layer)
        assert not all(torch.equal(changed[k], original[k]) for k in original)
    assert not outer.active
    outer.undo()  # twice: a no-op
    restored = _attn_params(model, layer)
    assert all(torch.equal(restored[k], original[k]) for k in original)


@pytest.mark.slow
def test_undo_on_exception_and_qwen_bias_rows() -> None:
    """Qwen2's q_proj/k_proj have biases: they are scaled too, and restored on an exception."""
    model, _ = load(QWEN)
    layer = 3
    original = _attn_params(model, layer)
    with pytest.raises(RuntimeError, match="boom"):
        with plant_outlier(model, layer, kv_head=1, channel=5, scale=S) as p:
            now = _attn_params(model, layer)
            rows = [64 + 5, 64 + 37]  # kv head 1, pair (5, 37)
            assert torch.equal(now["k_proj.bias"][rows], S * original["k_proj.bias"][rows])
            q_rows = [h * 64 + c for h in range(7, 14) for c in p.pair]  # g = 14 // 2 = 7
            assert torch.equal(now["q_proj.bias"][q_rows], original["q_proj.bias"][q_rows] / S)
            assert torch.equal(now["v_proj.weight"], original["v_proj.weight"])
            raise RuntimeError("boom")
    restored = _attn_params(model, layer)
    assert all(torch.equal(restored[k], original[k]) for k in original)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": 30}, r"layer=30 out of range; valid: 0\.\.29"),
        ({"layer": -1}, r"layer=-1 out of range"),
        ({"kv_head": 3}, r"kv_head=3 out of range; valid: 0\.\.2"),
        ({"kv_head": -1}, r"kv_head=-1 out of range"),
        ({"channel": 32}, r"channel=32 out of range; valid: 0\.\.31"),
        ({"channel": -1}, r"channel=-1 out of range"),
        ({"scale": 0.0}, r"scale=0\.0 invalid"),
        ({"scale": -2.0}, r"scale=-2\.0 invalid"),
        ({"scale": float("nan")}, r"scale=nan invalid"),
        ({"scale": float("inf")}, r"scale=inf invalid"),
    ],
)
def test_bad_arguments_name_the_value(kwargs: dict[str, Any], match: str) -> None:
    model, _ = load(SMOL)
    original = _attn_params(model, 2)
    layer = kwargs.pop("layer", 2)
    with pytest.raises(ValueError, match=match):
        plant_outlier(model, layer, **kwargs)
    assert all(torch.equal(v, original[k]) for k, v in _attn_params(model, 2).items())


def test_refused_model_structures(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load(SMOL)
    attn = model.model.layers[2].self_attn
    with pytest.raises(ValueError, match=r"has no model\.model\.layers"):
        plant_outlier(model.model, 2)  # the bare decoder: layers sit at .layers
    with monkeypatch.context() as m:
        m.setattr(attn, "k_norm", torch.nn.Identity(), raising=False)  # Qwen3 / OLMo2 style
        with pytest.raises(ValueError, match="q_norm/k_norm"):
            plant_outlier(model, 2)
    with monkeypatch.context() as m:
        m.delattr(attn, "q_proj")  # as in a fused-qkv model
        with pytest.raises(ValueError, match="fused qkv"):
            plant_outlier(model, 2)
    with monkeypatch.context() as m:
        m.setattr(model, "config", SimpleNamespace(hidden_size=576))  # no head counts
        with pytest.raises(ValueError, match="cannot read head_dim"):
            plant_outlier(model, 2)
    with monkeypatch.context() as m:
        m.setattr(model.config, "partial_rotary_factor", 0.5, raising=False)
        with pytest.raises(ValueError, match=r"partial_rotary_factor=0\.5"):
            plant_outlier(model, 2)
