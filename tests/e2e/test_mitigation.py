"""Recovery (docs/metrics.md) and the baselines a PCR plan is compared against at equal memory."""

from __future__ import annotations

import itertools

import pytest

from kvsafety_tests.pcr import (
    Diagnosis,
    attention_concentration,
    baseline_specs,
    measure_recovery,
    override_extra_bytes,
    spec_bytes_per_token,
)
from kvsafety_tests.spec import parse_spec
from tests.models_fixture import SMOL, load


def test_recovery_is_the_share_of_the_lost_refusals_won_back() -> None:
    fp = [True] * 30 + [False] * 10
    q = [False] * 40  # all 30 lost: far outside noise
    plan = [True] * 24 + [False] * 16  # 24 of the 30 back
    rec = measure_recovery(fp, q, plan)
    assert rec.value == pytest.approx(0.8) and rec.refusal_rate == pytest.approx(0.6)
    assert rec.ci is not None and rec.ci[0] <= 0.8 <= rec.ci[1] and rec.ci[1] - rec.ci[0] < 0.4


def test_recovery_can_overshoot_or_go_negative() -> None:
    fp = [True] * 20 + [False] * 20
    q = [True] * 2 + [False] * 38
    assert measure_recovery(fp, q, [True] * 29 + [False] * 11).value == pytest.approx(27 / 18)
    assert measure_recovery(fp, q, [False] * 40).value == pytest.approx(-2 / 18)


def test_recovery_is_null_when_the_drop_is_not_significant() -> None:
    fp = [True] * 5 + [False] * 5
    q = [True] * 4 + [False] * 6  # one refusal lost, none gained: exact McNemar p = 1
    rec = measure_recovery(fp, q, fp)
    assert rec.value is None and rec.ci is None
    assert "exact McNemar p=1 is not a significant" in (rec.reason or "")


def test_recovery_needs_three_arms_of_one_length() -> None:
    with pytest.raises(ValueError, match="same harmful prompts"):
        measure_recovery([True], [False, False], [True])


def _diagnosis(plan: str, plan_layers: dict[int, str], budget: float = 0.07) -> Diagnosis:
    return Diagnosis(
        quantizer="int4",
        mode="outlier-crushes-safety",
        damage=1.0,
        layers=list(range(24)),
        r_layer=[0.0] * 24,
        r_gran=[0.0] * 24,
        r_out=[0.0] * 24,
        not_applicable=[],
        top=[3, 4, 5],
        r_top=0.9,
        plan=plan,
        plan_layers=plan_layers,
        plan_memory_overhead=0.0,
        budget=budget,
        predicted_recovery=0.9,
        forward_passes=0,
        calibration_prompts=10,
        seconds=0.0,
    )


def test_baselines_spend_what_the_plan_spends_on_other_layers() -> None:
    d = _diagnosis("int4;L3=int4-out2;L9=int4-g8", {3: "out", 9: "gran"})
    attention = [0.0] * 24
    attention[20], attention[21] = 0.9, 0.8
    specs = baseline_specs(
        "int4", d, num_layers=24, head_dim=64, kv_heads=2, attention=attention, seeds=(0, 1)
    )
    assert set(specs) == {"pcr", "uniform-bits", "random-s0", "random-s1", "first-last", "attention"}
    base = spec_bytes_per_token(parse_spec("int4"), 24, 64, 2)
    plan_bytes = spec_bytes_per_token(specs["pcr"], 24, 64, 2)
    for name in ("random-s0", "random-s1", "first-last", "attention"):
        spec = specs[name]
        assert len(spec.overrides) == 2, name
        assert spec_bytes_per_token(spec, 24, 64, 2) == pytest.approx(plan_bytes), name
    assert [layer for layer, _ in specs["first-last"].overrides] == [0, 23]
    assert [layer for layer, _ in specs["attention"].overrides] == [20, 21]
    # the same kinds in the plan's layer order: out on the lower layer, gran on the higher one
    assert [str(kv) for _, kv in specs["attention"].overrides] == ["int4-out2", "int4-g8"]
    # uniform bits: +1 bit on evenly spaced layers, within the budget the plan had
    uniform = specs["uniform-bits"]
    spent = spec_bytes_per_token(uniform, 24, 64, 2) - base
    assert 0 < spent <= 0.07 * base and all(str(kv) == "int5" for _, kv in uniform.overrides)
    one_more = override_extra_bytes(parse_spec("int4"), 0, parse_spec("int5").kv, 64, 2)
    assert spent + one_more > 0.07 * base  # as many as fit: one more would not
    layers = [layer for layer, _ in uniform.overrides]
    gaps = {b - a for a, b in itertools.pairwise(layers)}
    assert max(gaps) - min(gaps) <= 1  # evenly spaced


def test_random_baselines_differ_by_seed_and_are_reproducible() -> None:
    d = _diagnosis("int4;L3=int4-out2;L4=int4-out2;L5=int4-out2", {3: "out", 4: "out", 5: "out"})
    a = baseline_specs("int4", d, num_layers=24, head_dim=64, kv_heads=2, seeds=(0, 1))
    b = baseline_specs("int4", d, num_layers=24, head_dim=64, kv_heads=2, seeds=(0, 1))
    assert str(a["random-s0"]) == str(b["random-s0"]) and str(a["random-s0"]) != str(a["random-s1"])
    assert "attention" not in a  # no attention scores given


@pytest.mark.model
def test_attention_concentration_on_a_real_model_restores_the_attention_kernel() -> None:
    from kvsafety_tests.backends.hf import HFBackend

    model, tok = load(SMOL)
    before = model.config._attn_implementation
    backend = HFBackend(model, tok)
    scores = attention_concentration(backend, ["How do I bake bread?", "Name three rivers in Africa."])
    assert len(scores) == backend.num_layers and all(0.0 <= s <= 1.0 for s in scores)
    assert max(scores) - min(scores) > 0.05  # layers differ in how focused their attention is
    assert model.config._attn_implementation == before
