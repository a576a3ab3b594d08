"""Sequential audits (engine/rounds.py): prompts in rounds, anytime-valid decisions after each, a
quantizer stopping once its rate thresholds are decided or the pool is spent."""

from __future__ import annotations

from collections import Counter

import pytest

from kvsafety_tests.engine import AuditSettings, run_audit
from kvsafety_tests.engine.rounds import Arm, concat, prompt_order, rounds, subset
from kvsafety_tests.gate import Thresholds
from kvsafety_tests.gate.bounds import bound_for_limit
from kvsafety_tests.prompts import load_prompts

from ..models_fixture import SMOL


def _arm(n: int) -> Arm:
    return Arm(
        spec="int4",
        texts=[f"t{i}" for i in range(n)],
        token_ids=[[i] for i in range(n)],
        labels=["refused" if i % 3 == 0 else "complied" for i in range(n)],
        refusal_scores=[float(i) for i in range(n)],
        quantized_fraction=1.0,
        kv_bytes_per_token=10.0,
        seconds=1.0,
    )


def test_the_order_is_by_the_hash_of_the_id_not_the_position_or_the_text() -> None:
    prompts = load_prompts("builtin")
    evaluation = [*prompts.harmful, *prompts.harmless]
    ids = [p.id for p in evaluation]
    h = len(prompts.harmful)
    harmful, harmless = prompt_order(evaluation, h)
    assert sorted(harmful) == list(range(h)) and sorted(harmless) == list(range(h, len(ids)))
    assert harmful != sorted(harmful)  # not the file order
    shuffled = list(reversed(evaluation[:h])) + evaluation[h:]  # the same prompts in another file order
    assert [shuffled[i].id for i in prompt_order(shuffled, h)[0]] == [ids[i] for i in harmful]
    # a prefix is a stratified sample: the first 20 harmful prompts hold two of each of the ten categories
    first = Counter(prompts.harmful[i].category for i in harmful[:20])
    assert len(first) == 10 and set(first.values()) == {2}


def test_rounds_take_the_next_prompts_of_each_set_until_both_are_spent() -> None:
    plan = rounds([0, 1, 2, 3, 4], [5, 6], 2)
    assert plan == [[0, 1, 5, 6], [2, 3], [4]]
    assert rounds([0], [1], 5) == [[0, 1]]
    with pytest.raises(ValueError, match="round_size 0 must be >= 1"):
        rounds([0], [1], 0)


def test_rounds_reassemble_into_the_arm_over_the_same_prompts() -> None:
    full = _arm(7)
    parts = [subset(full, [5, 1]), subset(full, [0, 6, 3])]
    parts[1].quantized_fraction = 0.5
    joined = concat(parts)
    assert joined.index == [0, 1, 3, 5, 6]
    assert joined.texts == ["t0", "t1", "t3", "t5", "t6"] and joined.labels == [
        full.labels[i] for i in joined.index
    ]
    assert joined.quantized_fraction == pytest.approx((1.0 * 2 + 0.5 * 3) / 5)  # weighted by completions
    assert joined.seconds == 2.0
    assert subset(joined, [5, 0]).texts == ["t5", "t0"]  # an arm of some prompts narrows further
    with pytest.raises(ValueError, match=r"no evaluation prompt at position\(s\) \[2\]"):
        subset(joined, [0, 2])


def _settings(**kw: object) -> AuditSettings:
    return AuditSettings(
        model=SMOL,
        quantizers=("int4",),
        limit=6,
        max_new_tokens=8,
        noise_floor=False,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.model
def test_a_quantizer_with_nothing_open_stops_after_its_first_round() -> None:
    only_ppl = Thresholds(max_perplexity_ratio=2.0)  # no rate threshold: nothing to decide by rounds
    run = run_audit(_settings(round_size=2, thresholds=only_ppl)).runs[0]
    assert run.n_harmful == 2 and run.n_harmless == 2  # one round of 2 + 2 of the 6 + 6
    assert any("every rate threshold decided after round 1 of 3" in n for n in run.notes)


@pytest.mark.model
def test_a_threshold_that_stays_open_spends_the_pool_with_anytime_valid_bounds() -> None:
    """max_over_refusal_flip = 0 can never pass (its upper bound is above 0): every round runs and
    the run covers the whole pool, the one-look audit's prompts; its bound is the confidence
    sequence's, wider than the one-look exact bound on the same counts (the price of the looks).
    (Per-prompt labels may differ from a one-look run: rounds batch the prompts differently, and
    bf16 greedy decoding depends on the batch.)"""
    never = Thresholds(max_over_refusal_flip=0.0)
    seq = run_audit(_settings(round_size=4, thresholds=never)).runs[0]
    one = run_audit(_settings(thresholds=never)).runs[0]
    assert any(n.startswith("sequential: the pool was spent: 2 round(s)") for n in seq.notes)
    assert any("still open: max_over_refusal_flip" in n for n in seq.notes)
    assert (seq.n_harmful, seq.n_harmless) == (one.n_harmful, one.n_harmless) == (6, 6)
    assert sorted(p.id for p in seq.prompts) == sorted(p.id for p in one.prompts)
    (out,) = seq.thresholds
    assert out.method == "sequence" and out.outcome == "inconclusive"
    harmless = [p for p in seq.prompts if p.kind == "harmless"]
    at_risk = [p for p in harmless if p.baseline != "refused"]
    assert (out.events, out.n) == (sum(p.quantized == "refused" for p in at_risk), len(at_risk))
    exact_upper = bound_for_limit(out.events, out.n, 0.0, "max", 0.05, "exact")[1]  # type: ignore[arg-type]
    assert out.upper is not None and out.upper > exact_upper
