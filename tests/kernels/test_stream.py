"""QuantizedStream: the flush rule (KIVI residual, per-channel token groups), frozen static grids,
outlier channels, true byte counts and non-finite detection with positions."""

from __future__ import annotations

import pytest
import torch

from kvsafety_tests.kernels import NonFiniteError, QuantizedStream, dequantize, quantize
from kvsafety_tests.spec import Granularity, IntScheme, NoQuant, parse_spec

B, H, D = 2, 3, 64


def kv(t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, t, D, generator=g).to(torch.bfloat16)


def ref(x: torch.Tensor, scheme: IntScheme) -> torch.Tensor:
    return dequantize(quantize(x, scheme))


def test_kivi_residual_window_is_exact_and_flushes_as_the_reference_says() -> None:
    spec = parse_spec("kivi2")
    key, value = spec.kv.key, spec.kv.value
    assert isinstance(key, IntScheme) and isinstance(value, IntScheme)
    keys, values = QuantizedStream(key, spec.window(0)), QuantizedStream(value, spec.window(0))
    x = kv(300)
    keys.append(x[:, :, :200])
    values.append(x[:, :, :200])
    assert (keys.n_quantized, keys.n_tokens) == (128, 200)
    out = keys.dequantized()
    assert torch.equal(out[:, :, 128:], x[:, :, 128:200])  # the residual window is exact
    assert torch.equal(out[:, :, :128], ref(x[:, :, :128], key))  # keys per channel, groups of 32 tokens
    assert torch.equal(values.dequantized()[:, :, :128], ref(x[:, :, :128], value))  # values per token
    for t in range(200, 300):  # decode one token at a time
        keys.append(x[:, :, t : t + 1])
        assert keys.n_quantized == (128 if t + 1 < 256 else 256)
    out = keys.dequantized()
    assert torch.equal(out[:, :, 128:256], ref(x[:, :, 128:256], key))  # left the window as one chunk
    assert torch.equal(out[:, :, 256:], x[:, :, 256:300])


def test_per_channel_without_residual_waits_for_whole_token_groups() -> None:
    scheme = IntScheme(2, False, Granularity.CHANNEL, 32)
    stream = QuantizedStream(scheme, window=32)
    x = kv(64, seed=1)
    stream.append(x[:, :, :40])
    assert stream.n_quantized == 32  # 8 tokens wait: one lone token per channel would be min = max
    for t in range(40, 63):
        stream.append(x[:, :, t : t + 1])
        assert stream.n_quantized == 32
    stream.append(x[:, :, 63:64])
    assert stream.n_quantized == 64
    assert torch.equal(
        stream.dequantized(), torch.cat([ref(x[:, :, :32], scheme), ref(x[:, :, 32:], scheme)], -2)
    )


def test_window_must_hold_whole_token_groups() -> None:
    with pytest.raises(ValueError, match="window 48 must be a positive multiple of the token group 32"):
        QuantizedStream(IntScheme(2, False, Granularity.CHANNEL, 32), window=48)


def test_per_token_flushes_every_token_and_matches_one_shot_quantization() -> None:
    scheme = IntScheme(4)
    stream = QuantizedStream(scheme)
    x = kv(20, seed=2)
    stream.append(x[:, :, :13])
    for t in range(13, 20):
        stream.append(x[:, :, t : t + 1])
    assert stream.n_quantized == 20 and stream.tail is not None and stream.tail.shape[-2] == 0
    assert torch.equal(stream.dequantized(), ref(x, scheme))  # per-token: chunking changes nothing


def test_static_per_tensor_grid_is_frozen_after_the_first_chunk() -> None:
    scheme = IntScheme(8, True, Granularity.TENSOR)
    stream = QuantizedStream(scheme)
    x = kv(10, seed=3)
    stream.append(x[:, :, :5])
    stream.append(x[:, :, 5:] * 4)  # out of the frozen range: saturates instead of rescaling
    assert torch.equal(stream.chunks[0].scale, stream.chunks[1].scale)
    top = float(stream.chunks[0].scale.float()) * 127
    assert float(stream.dequantized().float().abs().max()) <= top + 1e-6


def test_fp8_amax_scale_is_calibrated_once() -> None:
    spec = parse_spec("fp8_e4m3-amax_head")
    stream = QuantizedStream(spec.kv.key)
    stream.append(kv(4, seed=4))
    stream.append(kv(4, seed=5) * 100)
    assert stream.chunks[0].scale.shape == (B * H,)
    assert torch.equal(stream.chunks[0].scale, stream.chunks[1].scale)


def test_outlier_channels_are_kept_exact_and_out_of_the_scale() -> None:
    x = kv(16, seed=6)
    x[:, :, :, 5] *= 300  # a massive outlier channel, as RoPE'd keys have
    x[:, :, :, 40] += 200
    plain, kept = QuantizedStream(IntScheme(4)), QuantizedStream(IntScheme(4, outliers=2))
    plain.append(x)
    kept.append(x)
    assert kept.outlier_index is not None and kept.outlier_index.tolist() == [[[5, 40]] * H] * B
    out = kept.dequantized()
    assert torch.equal(out[..., [5, 40]], x[..., [5, 40]])
    others = [c for c in range(D) if c not in (5, 40)]
    err_kept = (out[..., others].float() - x[..., others].float()).abs().max()
    err_plain = (plain.dequantized()[..., others].float() - x[..., others].float()).abs().max()
    assert float(err_kept) < float(err_plain) / 20  # the outliers no longer set everyone's step
    # bytes: codes + bf16 scale/zero per token + the two kept channels in 16-bit + int16 indices
    per_token = D // 2 + 4 + 2 * 2
    assert kept.nbytes == B * H * 16 * per_token + B * H * 2 * 2


def test_unquantized_stream_is_the_input() -> None:
    stream = QuantizedStream(NoQuant())
    x = kv(7, seed=7)
    stream.append(x[:, :, :4])
    stream.append(x[:, :, 4:])
    assert torch.equal(stream.dequantized(), x) and stream.n_quantized == 0
    assert stream.nbytes == x.numel() * 2


@pytest.mark.parametrize(
    ("spec", "max_ratio"),
    [("int8", 0.52), ("int4-g64", 0.29), ("int4-sym-g64", 0.27), ("int2", 0.16), ("fp8_e4m3", 0.501)],
)
def test_true_bytes_per_token(spec: str, max_ratio: float) -> None:
    s = parse_spec(spec).kv.key
    stream = QuantizedStream(s)
    x = torch.randn(1, 8, 256, 128, dtype=torch.bfloat16)
    stream.append(x)
    ratio = stream.nbytes / (x.numel() * 2)
    assert ratio <= max_ratio


def test_non_finite_kv_is_reported_with_layer_and_position() -> None:
    stream = QuantizedStream(IntScheme(4), where="layer 3 keys")
    x = kv(8, seed=8).to(torch.float16)
    x[1, 2, 5, 7] = float("inf")
    with pytest.raises(NonFiniteError) as info:
        stream.append(x)
    msg = str(info.value)
    assert "layer 3 keys" in msg and "batch=1, head=2, token=5, channel=7" in msg and "inf" in msg
    assert "\n" not in msg
    assert stream.n_tokens == 0  # nothing half-written


def test_nan_waiting_in_a_residual_window_is_caught_on_arrival() -> None:
    stream = QuantizedStream(IntScheme(4), window=128)
    x = kv(4, seed=9)
    x[0, 0, 2, 1] = float("nan")
    with pytest.raises(
        NonFiniteError, match="non-finite value nan at \\(batch=0, head=0, token=2, channel=1\\)"
    ):
        stream.append(x)


def test_quantize_alone_refuses_outlier_schemes() -> None:
    """out<K> needs the stream (it keeps the channels); the kernels alone would quantize them all."""
    with pytest.raises(ValueError, match="outlier channels are kept by QuantizedStream"):
        quantize(kv(4), IntScheme(4, outliers=2))
