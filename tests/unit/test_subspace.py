"""The safety-subspace noise ratio and noise concentration: the estimators against answers known
analytically, their report fields, and the residual capture on a real model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsafety_tests.pcr.subspace import capture, noise_ratio, safety_subspace
from kvsafety_tests.report import ReportError, RunEntry, run_from_dict, run_to_dict
from tests.models_fixture import SMOL, load


def _classes(
    n: int, d: int, a: float, tau: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp activations [n, d]: H at +a/2 u, B at -a/2 u, isotropic spread tau; u = e_0."""
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1.0
    harmful = torch.arange(n) < n // 2
    sign = torch.where(harmful, 0.5, -0.5).double()
    h = sign[:, None] * a * u + tau * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return h, harmful, u


@settings(max_examples=15, deadline=None)
@given(
    d=st.integers(4, 48),
    a=st.floats(2.0, 20.0),
    tau=st.floats(0.1, 2.0),
    sigma=st.floats(1e-3, 1.0),
    seed=st.integers(0, 2**16),
)
def test_isotropic_noise_matches_the_closed_forms(
    d: int, a: float, tau: float, sigma: float, seed: int
) -> None:
    # isotropic noise puts 1/d of its energy in the 1-D safety subspace:
    # NR = (sigma^2 / a^2) / (d sigma^2 / (d tau^2 + a^2 / 4)) = (d tau^2 + a^2 / 4) / (d a^2)
    gen = torch.Generator().manual_seed(seed)
    n = 6000
    h, harmful, _ = _classes(n, d, a, tau, gen)
    q = h + sigma * torch.randn(n, d, generator=gen, dtype=torch.float64)
    nr = noise_ratio(h[:, None, :], q[:, None, :], harmful)
    expected = (d * tau**2 + a**2 / 4) / (d * a**2)
    # sampling error: E||P_S delta||^2 from n draws of a chi-square(1), about sqrt(2/n) = 1.8%
    assert nr.per_layer[0] == pytest.approx(expected, rel=0.08)
    # and the noise concentration is 1, independent of a, tau and d (a formula without the /k or /d
    # scaling would give 1/d or d): E||P_S delta||^2 = sigma^2 k, E||delta||^2 = sigma^2 d
    assert nr.concentration[0] == pytest.approx(1.0, rel=0.08)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(4, 48), a=st.floats(2.0, 20.0), tau=st.floats(0.1, 2.0), seed=st.integers(0, 2**16))
def test_noise_along_the_safety_direction_is_d_times_more_fragile(
    d: int, a: float, tau: float, seed: int
) -> None:
    # all the noise on u: NR = spread / a^2 = (d tau^2 + a^2/4) / a^2, d times the isotropic case
    gen = torch.Generator().manual_seed(seed)
    n = 6000
    h, harmful, u = _classes(n, d, a, tau, gen)
    q = h + 0.3 * torch.randn(n, 1, generator=gen, dtype=torch.float64) * u
    iso = h + 0.3 / math.sqrt(d) * torch.randn(n, d, generator=gen, dtype=torch.float64)
    aligned = noise_ratio(h[:, None, :], q[:, None, :], harmful).per_layer[0]
    isotropic = noise_ratio(h[:, None, :], iso[:, None, :], harmful).per_layer[0]
    assert aligned == pytest.approx((d * tau**2 + a**2 / 4) / a**2, rel=0.08)
    assert aligned / isotropic == pytest.approx(d, rel=0.15)


def test_noise_orthogonal_to_the_subspace_scores_near_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    h, harmful, _u = _classes(2000, 16, 8.0, 1.0, gen)
    noise = torch.randn(2000, 16, generator=gen, dtype=torch.float64)
    noise[:, 0] = 0.0  # nothing along u
    # the estimated direction is off u by O(tau / (a sqrt(n))): the ratio is tiny, not exactly 0
    assert noise_ratio(h[:, None], (h + noise)[:, None], harmful).per_layer[0] < 1e-3


def test_zero_noise_is_zero_and_layers_are_named() -> None:
    gen = torch.Generator().manual_seed(1)
    h, harmful, _ = _classes(100, 8, 4.0, 1.0, gen)
    stacked = torch.stack([h, h + 0.1], dim=1)  # [N, 2, d]: layer 7 exact, layer 9 shifted
    nr = noise_ratio(stacked, torch.stack([h, h + 0.1 + 0.01 * h], dim=1), harmful, layers=[7, 9])
    assert nr.layers == (7, 9) and nr.per_layer[0] == 0.0 and nr.argmax_layer == 9 and nr.max > 0


# -- the noise concentration NC = [E||P_S delta||^2 / k] / [E||delta||^2 / d] -----------------------
@pytest.mark.parametrize(("d", "k"), [(16, 1), (24, 3), (10, 2)])
def test_noise_confined_to_the_subspace_has_concentration_d_over_k(d: int, k: int) -> None:
    # noise inside the estimated S (any mix of its k basis vectors): P_S delta = delta, NC = d / k exactly
    gen = torch.Generator().manual_seed(d + k)
    h, harmful, _ = _classes(300, d, 6.0, 1.0, gen)
    basis = safety_subspace(h[harmful], h[~harmful], k).double()  # [k, d]
    delta = torch.randn(300, k, generator=gen, dtype=torch.float64) @ basis  # [N, d], rows in S
    nr = noise_ratio(h[:, None, :], (h + delta)[:, None, :], harmful, k=k)
    assert nr.concentration[0] == pytest.approx(d / k, rel=1e-9)


def test_concentration_and_ratio_differ_by_the_signal_share_of_the_spread() -> None:
    # NR = NC * (k / d) * spread / signal, with the parts the estimator reports
    gen = torch.Generator().manual_seed(3)
    d = 20
    h, harmful, u = _classes(500, d, 5.0, 0.7, gen)
    delta = (
        0.2 * torch.randn(500, d, generator=gen, dtype=torch.float64) + 0.5 * u
    )  # part isotropic, part on u
    nr = noise_ratio(h[:, None, :], (h + delta)[:, None, :], harmful)
    basis = safety_subspace(h[harmful], h[~harmful])  # [1, d]
    signal = float((basis @ (h[harmful].mean(0) - h[~harmful].mean(0))).square().sum())
    spread = float((h - h.mean(0)).square().sum(-1).mean())
    assert nr.per_layer[0] == pytest.approx(nr.concentration[0] * (1 / d) * spread / signal, rel=1e-9)
    # the shift along u: NC = (0.04 + 0.25) / ((0.04 d + 0.25) / d) = 0.29 d / (0.04 d + 0.25), ~5.17
    assert nr.concentration[0] == pytest.approx(0.29 * d / (0.04 * d + 0.25), rel=0.1)


def test_a_layer_without_noise_has_concentration_zero_and_the_maximum_names_the_other() -> None:
    gen = torch.Generator().manual_seed(4)
    h, harmful, _ = _classes(200, 8, 4.0, 1.0, gen)
    noisy = h + 0.3 * torch.randn(200, 8, generator=gen, dtype=torch.float64)
    nr = noise_ratio(torch.stack([h, h], 1), torch.stack([h, noisy], 1), harmful, layers=[3, 11])
    assert nr.concentration[0] == 0.0 and nr.per_layer[0] == 0.0
    assert nr.argmax_concentration_layer == 11 and nr.max_concentration == nr.concentration[1] > 0.5


def test_noise_orthogonal_to_the_subspace_has_concentration_near_zero() -> None:
    gen = torch.Generator().manual_seed(5)
    h, harmful, _u = _classes(2000, 16, 8.0, 1.0, gen)
    noise = torch.randn(2000, 16, generator=gen, dtype=torch.float64)
    noise[:, 0] = 0.0
    assert noise_ratio(h[:, None], (h + noise)[:, None], harmful).concentration[0] < 1e-3


def test_the_concentration_fields_round_trip_and_reject_a_negative() -> None:
    run = RunEntry(
        model="m",
        quantizer="int4",
        prompt_set="builtin",
        verdict="fail",
        noise_ratio=0.4,
        noise_ratio_per_layer=(0.1, 0.4),
        noise_concentration=3.5,
        noise_concentration_per_layer=(3.5, 0.9),
    )
    doc = run_to_dict(run)
    assert (doc["noise_concentration"], doc["noise_concentration_per_layer"]) == (3.5, [3.5, 0.9])
    assert run_from_dict(doc) == run
    with pytest.raises(
        ReportError, match=r"noise_concentration_per_layer\[1\] is -1.0; expected a non-negative"
    ):
        RunEntry(
            model="m",
            quantizer="int4",
            prompt_set="builtin",
            verdict="fail",
            noise_concentration_per_layer=(1.0, -1.0),
        )


def test_top_k_subspace_is_orthonormal_and_starts_at_the_mean_shift() -> None:
    gen = torch.Generator().manual_seed(2)
    h, harmful, u = _classes(400, 12, 10.0, 0.5, gen)
    basis = safety_subspace(h[harmful], h[~harmful], k=3)
    assert basis.shape == (3, 12)
    assert torch.allclose(basis @ basis.T, torch.eye(3, dtype=basis.dtype), atol=1e-9)
    assert abs(float(basis[0] @ u)) > 0.99


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k = 0"),
        ({"same_means": True}, "same mean"),
    ],
)
def test_bad_subspace_inputs_say_why(kwargs: dict, message: str) -> None:
    h = torch.randn(10, 4, dtype=torch.float64)
    b = h.clone() if kwargs.get("same_means") else h + 1.0
    with pytest.raises(ValueError, match=message):
        safety_subspace(h, b, k=kwargs.get("k", 1))


def test_shape_mismatch_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"must match, \[N, L, hidden\]"):
        noise_ratio(torch.zeros(4, 2, 3), torch.zeros(4, 1, 3), torch.tensor([True, True, False, False]))


@pytest.mark.model
def test_capture_is_the_last_prompt_token_of_each_layer_on_a_real_model() -> None:
    from kvsafety_tests.backends.hf import HFBackend

    model, tok = load(SMOL)
    backend = HFBackend(model, tok, batch_size=2)
    prompts = ["How do I bake bread?", "Write a short poem about the sea and the wind at night."]
    layers = [0, 5, backend.num_layers - 1]
    got = capture(backend, prompts, "none", layers)  # [2, 3, hidden]
    assert got.shape == (2, 3, model.config.hidden_size) and got.dtype == torch.float32
    for i, p in enumerate(prompts):  # one prompt alone, no padding: hidden_states[l + 1] at the end
        ids = torch.tensor([backend.encode(p)])
        with torch.inference_mode():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
        for j, layer in enumerate(layers):
            ref = states[layer + 1][0, -1].float()
            if layer == backend.num_layers - 1:
                continue  # the model's last hidden state has the final norm applied; the hook's does not
            assert torch.allclose(got[i, j], ref, atol=1e-4, rtol=1e-4), (i, layer)
    # the quantized cache moves the residual stream; int8 moves it less than int2
    q8 = capture(backend, prompts, "int8", layers)
    q2 = capture(backend, prompts, "int2", layers)
    assert 0 < float((q8 - got).norm()) < float((q2 - got).norm())
