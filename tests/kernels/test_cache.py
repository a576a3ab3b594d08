"""The quantized transformers cache on a real model: attention sees exactly dequant(quant(k)),
the streaming rule holds per sequence under left padding, and results do not depend on batching."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kvsafety_tests.backends.hf import HFBackend
from kvsafety_tests.cache import QuantizedKVCache, QuantizedKVLayer, cache_kwarg, is_token_local
from kvsafety_tests.kernels import dequantize, quantize
from kvsafety_tests.spec import IntScheme, NoQuant, parse_spec

from ..models_fixture import SMOL, load

PROMPTS = [
    "How do I pick a lock?",
    "Write a haiku about autumn leaves and the first frost of the year.",
    "What is 2+2?",
]
SEEN: list[tuple[int, torch.Tensor, torch.Tensor]] = []


def _recording_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kw: Any
) -> Any:
    SEEN.append((module.layer_idx, key.clone(), value.clone()))
    return sdpa_attention_forward(module, query, key, value, *args, **kw)


AttentionInterface.register("kvsafety_recording", _recording_attention)


@pytest.fixture(scope="module")
def smol() -> tuple[Any, Any]:
    return load(SMOL)


def _record_updates(cache: QuantizedKVCache) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Wrap each layer's update to keep the raw K/V it receives."""
    raw: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in cache.layers]
    for i, layer in enumerate(cache.layers):
        original = layer.update

        def update(
            k: torch.Tensor, v: torch.Tensor, *a: Any, _i: int = i, _f: Any = original, **kw: Any
        ) -> Any:
            raw[_i].append((k.clone(), v.clone()))
            return _f(k, v, *a, **kw)

        layer.update = update  # type: ignore[method-assign]
    return raw


def _decode(
    model: Any, tok: Any, spec: str, steps: int = 4
) -> tuple[QuantizedKVCache, list[Any], torch.Tensor]:
    """Prefill a left-padded batch, then ``steps`` greedy decode steps, recording everything."""
    enc = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        for p in PROMPTS
    ]
    enc = [list(e["input_ids"]) if isinstance(e, dict) or hasattr(e, "keys") else list(e) for e in enc]
    width = max(map(len, enc))
    pads = [width - len(e) for e in enc]
    ids = torch.tensor([[tok.pad_token_id] * p + e for p, e in zip(pads, enc, strict=True)])
    mask = torch.tensor([[0] * p + [1] * len(e) for p, e in zip(pads, enc, strict=True)])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = QuantizedKVCache(parse_spec(spec), model.config.num_hidden_layers, pads)
    raw = _record_updates(cache)
    SEEN.clear()
    saved = model.config._attn_implementation
    model.set_attn_implementation("kvsafety_recording")
    kw = cache_kwarg(model)  # "cache" on transformers >= 5.24, "past_key_values" before
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, **{kw: cache})
            for step in range(steps):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
                out = model(
                    input_ids=nxt,
                    attention_mask=mask,
                    position_ids=pos[:, -1:] + 1 + step,
                    logits_to_keep=1,
                    **{kw: cache},
                )
    finally:
        model.set_attn_implementation(saved)
    return cache, raw, torch.tensor(pads)


@pytest.mark.model
def test_attention_sees_exactly_dequant_of_quant_of_k_per_token(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    _, raw, _ = _decode(model, tok, "int4")
    scheme = IntScheme(4)
    layer = 5
    seen = [(k, v) for i, k, v in SEEN if i == layer]
    assert len(seen) == 5  # prefill + 4 decode steps
    for step, (k_seen, v_seen) in enumerate(seen):
        k_raw = torch.cat([k for k, _ in raw[layer][: step + 1]], dim=-2)  # [B, H_kv, T, D]
        v_raw = torch.cat([v for _, v in raw[layer][: step + 1]], dim=-2)
        assert torch.equal(k_seen, dequantize(quantize(k_raw, scheme)))
        assert torch.equal(v_seen, dequantize(quantize(v_raw, scheme)))
        assert not torch.equal(k_seen, k_raw)  # really quantized


@pytest.mark.model
def test_residual_window_is_per_sequence_under_left_padding(smol: tuple[Any, Any]) -> None:
    """kivi2-g2;r=4: each sequence flushes windows of 4 of its own tokens, pads excluded."""
    model, tok = smol
    cache, raw, pads = _decode(model, tok, "kivi2-g2;r=4", steps=3)
    spec = parse_spec("kivi2-g2;r=4")
    layer = 3
    k_seen = [k for i, k, _ in SEEN if i == layer][-1]  # after the last decode step: [B, H_kv, T, D]
    k_raw = torch.cat([k for k, _ in raw[layer]], dim=-2)
    assert isinstance(spec.kv.key, IntScheme)
    for r, pad in enumerate(pads.tolist()):
        own = k_raw[r : r + 1, :, pad:]  # this sequence's real tokens
        n = own.shape[-2]
        flushed = (n // 4) * 4  # windows close one at a time, but chunks are exactly the windows
        expected = torch.cat(
            [dequantize(quantize(own[:, :, s : s + 4], spec.kv.key)) for s in range(0, flushed, 4)]
            + [own[:, :, flushed:]],
            dim=-2,
        )
        assert torch.equal(k_seen[r : r + 1, :, pad:], expected)
        assert torch.equal(k_seen[r, :, :pad], torch.zeros_like(k_seen[r, :, :pad]))  # masked pads
    assert all(isinstance(layer, QuantizedKVLayer) and layer.per_sequence for layer in cache.layers)


@pytest.mark.model
def test_prefill_fp_attends_fresh_kv_then_stored(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    _, raw, _ = _decode(model, tok, "int2;prefill=fp", steps=1)
    seen = [k for i, k, _ in SEEN if i == 0]
    assert torch.equal(seen[0], raw[0][0][0])  # prompt pass: the fresh K
    k_all = torch.cat([raw[0][0][0], raw[0][1][0]], dim=-2)
    assert torch.equal(seen[1], dequantize(quantize(k_all, IntScheme(2))))  # decode: the stored K


@pytest.mark.model
def test_none_spec_matches_transformers_generate(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    backend = HFBackend(model, tok, batch_size=1)
    out = backend.run(PROMPTS, "none", max_new_tokens=12)
    for prompt, completion in zip(PROMPTS, out, strict=True):
        enc = tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        ref = model.generate(**enc, max_new_tokens=12, do_sample=False)[
            0, enc["input_ids"].shape[1] :
        ].tolist()
        assert completion.token_ids == ref[: len(completion.token_ids)]


@pytest.mark.model
def test_float32_unquantized_results_do_not_depend_on_batch_size(smol: tuple[Any, Any]) -> None:
    """Quantized arms are not held to this: a last-bit difference between batched and single
    matmuls can move a value across a rounding boundary of the quantizer and flip a greedy token.
    The cache's own bookkeeping is per sequence (test above); the rest is float order, which
    every audit measures as its noise floor."""
    model, tok = smol
    a = HFBackend(model, tok, batch_size=3).run(PROMPTS, "none", max_new_tokens=10)
    b = HFBackend(model, tok, batch_size=1).run(PROMPTS, "none", max_new_tokens=10)
    assert [x.token_ids for x in a] == [y.token_ids for y in b]


@pytest.mark.model
def test_runs_are_deterministic(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    backend = HFBackend(model, tok, batch_size=2)
    first = backend.run(PROMPTS, "kivi2-g2;r=4", max_new_tokens=8)
    second = backend.run(PROMPTS, "kivi2-g2;r=4", max_new_tokens=8)
    assert [c.token_ids for c in first] == [c.token_ids for c in second]


@pytest.mark.model
def test_teacher_forcing_matches_greedy_logprobs(smol: tuple[Any, Any]) -> None:
    """Forcing the greedy tokens reproduces the path: every forced token is the argmax, so its
    log-probability is the max of that step's distribution (<= 0, and finite)."""
    model, tok = smol
    backend = HFBackend(model, tok, batch_size=3)
    greedy = backend.run(PROMPTS, "kivi2-g2;r=4", max_new_tokens=8)
    forced = backend.run(PROMPTS, "kivi2-g2;r=4", forced=[g.token_ids for g in greedy])
    for g, f in zip(greedy, forced, strict=True):
        assert len(f.logprobs) == len(g.token_ids)
        assert all(-20 < lp <= 0 for lp in f.logprobs)


@pytest.mark.model
def test_bytes_per_token_and_quantized_fraction(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    backend = HFBackend(model, tok, batch_size=3)
    full = backend.fp16_bytes_per_token
    out = backend.run(PROMPTS, "int4-g64", max_new_tokens=4)
    assert backend.last_kv_bytes_per_token is not None
    assert backend.last_kv_bytes_per_token / full == pytest.approx(
        0.28125
    )  # 32 B codes + 4 B scale/zero per 64
    assert out[0].quantized_fraction == 1.0
    backend.run(PROMPTS, "none", max_new_tokens=4)
    assert backend.last_kv_bytes_per_token == 2 * full  # this fixture's model runs in float32
    kivi = backend.run(PROMPTS, "kivi2", max_new_tokens=4)  # prompts shorter than the 128-token window
    assert kivi[0].quantized_fraction == 0.0


def test_token_local_schemes() -> None:
    assert is_token_local(IntScheme(4)) and is_token_local(NoQuant())
    assert not is_token_local(parse_spec("int4-channel").kv.key)
    assert not is_token_local(parse_spec("fp8_e4m3-amax").kv.key)
    assert not is_token_local(IntScheme(4, outliers=1))


def test_unsupported_cache_operations_say_so() -> None:
    layer = QuantizedKVLayer(parse_spec("int4"), 0)
    with pytest.raises(NotImplementedError, match="beam search"):
        layer.reorder_cache(torch.tensor([0]))
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        layer.crop(-1)


@pytest.mark.model
@pytest.mark.parametrize("spec", ["none", "int4", "fp8_e5m2"])
def test_one_pass_teacher_forcing_equals_step_by_step(
    smol: tuple[Any, Any], spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For token-local, window-1 specs the forced continuation goes through in one pass; the
    log-probabilities agree with step-by-step forcing up to float order (float32 model)."""
    import kvsafety_tests.backends.hf as hb

    model, tok = smol
    backend = HFBackend(model, tok, batch_size=3)
    greedy = backend.run(PROMPTS, spec, max_new_tokens=8)
    forced = [g.token_ids for g in greedy]
    fast = backend.run(PROMPTS, spec, forced=forced)
    monkeypatch.setattr(hb, "_one_pass_exact", lambda *_: False)
    slow = backend.run(PROMPTS, spec, forced=forced)
    for a, b in zip(fast, slow, strict=True):
        assert len(a.logprobs) == len(b.logprobs) > 0
        # float32 matmuls of other shapes: 2e-3 unquantized; under a quantizer a last-bit difference
        # can move one code, measured at up to 5e-3 in one log-probability (transformers 5.19)
        assert a.logprobs == pytest.approx(b.logprobs, abs=2e-3 if spec == "none" else 1e-2)
