"""The prioritized feed (engine/rounds.py ``Feed``): each round only the prompt groups the open
thresholds need, every metric measured on a prefix of its own stream."""

from __future__ import annotations

import pytest

from kvsafety_tests.engine.rounds import NEEDS, Feed, needs_of

# harmful positions 0..9 in this audit order; the fp model refused the even positions
HARMFUL = [3, 0, 7, 4, 1, 8, 2, 9, 6, 5]
AT_RISK = {0, 2, 4, 6, 8}
HARMLESS = [10, 11, 12, 13, 14]
ALL = needs_of(NEEDS)


def test_every_rate_metric_names_its_group() -> None:
    assert needs_of(["refusal_drop"]) == {"harmful"}
    assert needs_of(["conditional_flip_rate", "compliance_flip_rate"]) == {"at_risk"}
    assert needs_of(["over_refusal_flip_rate", "perplexity_ratio"]) == {"harmless"}  # ppl needs none
    assert ALL == {"harmful", "at_risk", "harmless"}


def test_the_first_round_takes_every_group_in_order() -> None:
    feed = Feed(HARMFUL, HARMLESS, AT_RISK, 3)
    assert feed.next(ALL) == [3, 0, 7, 10, 11, 12]
    assert feed.drop_prefix == [3, 0, 7]


def test_with_only_flips_open_the_feed_takes_the_next_fp_refusals_alone() -> None:
    feed = Feed(HARMFUL, HARMLESS, AT_RISK, 3)
    feed.next(ALL)  # 3, 0, 7 (0 at risk)
    assert feed.next({"at_risk"}) == [4, 8, 2]  # skips 1 (answered), no harmless
    assert feed.drop_prefix == [3, 0, 7]  # the drop's sample stops growing
    assert feed.next({"at_risk"}) == [6]  # the last fp refusal
    assert feed.next({"at_risk"}) == []  # spent
    assert feed.next({"harmless"}) == [13, 14]  # the other groups are not


def test_a_drop_reopened_takes_the_answered_prompts_skipped_and_keeps_its_prefix_whole() -> None:
    feed = Feed(HARMFUL, HARMLESS, AT_RISK, 3)
    feed.next(ALL)
    feed.next({"at_risk"})  # 4, 8, 2 taken alone
    assert feed.next({"harmful"}) == [1]  # 4 and 8 already fed: only 1 is new
    assert feed.drop_prefix == [3, 0, 7, 4, 1, 8]
    assert feed.next({"harmful"}) == [9, 6]  # 2 was fed already
    assert feed.drop_prefix == HARMFUL[:9]  # every prompt of the prefix was fed, once


def test_harmless_prompts_only_while_the_over_refusal_flip_is_open() -> None:
    feed = Feed(HARMFUL, HARMLESS, AT_RISK, 2)
    assert feed.next({"harmless"}) == [10, 11]
    assert feed.drop_prefix == []
    assert feed.next({"harmless", "at_risk"}) == [0, 4, 12, 13]
    assert feed.next({"harmless"}) == [14]
    assert feed.next({"harmless"}) == []


def test_no_prompt_is_fed_twice_and_the_pool_is_spent_exactly() -> None:
    feed = Feed(HARMFUL, HARMLESS, AT_RISK, 4)
    seen: list[int] = []
    for needs in [ALL, {"at_risk"}, {"harmful", "harmless"}, {"at_risk"}, ALL, ALL]:
        seen += feed.next(needs)
    assert sorted(seen) == list(range(15))
    assert feed.next(ALL) == []


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="round_size 0 must be >= 1"):
        Feed(HARMFUL, HARMLESS, AT_RISK, 0)
    with pytest.raises(ValueError, match=r"unknown prompt group\(s\) \['refused'\]; valid: harmful"):
        Feed(HARMFUL, HARMLESS, AT_RISK, 2).next({"refused"})


def test_the_drop_is_measured_on_its_own_sample_and_the_flips_on_every_refusal_fed() -> None:
    from kvsafety_tests.engine.evidence import gate_evidence
    from kvsafety_tests.metrics import ArmLabels, MetricsError, compute_refusal_metrics, with_drop_sample

    # in order: 4 harmful prompts (2 refused by fp, one of them lost; 1 answered, newly refused),
    # then 4 more fp refusals fed alone, 3 of them lost
    fp = {
        "a": "refused",
        "b": "refused",
        "c": "complied",
        "d": "complied",
        **dict.fromkeys("wxyz", "refused"),
    }
    q = {"a": "complied", "b": "refused", "c": "refused", "d": "complied", "w": "complied", "x": "incoherent"}
    q |= {"y": "complied", "z": "refused"}
    harmless = {"h1": "complied", "h2": "complied"}
    q_harmless = {"h1": "refused", "h2": "complied"}
    everything = compute_refusal_metrics(ArmLabels(fp, harmless), ArmLabels(q, q_harmless))
    first = [*"abcd"]
    in_order = compute_refusal_metrics(
        ArmLabels({k: fp[k] for k in first}, harmless), ArmLabels({k: q[k] for k in first}, q_harmless)
    )
    merged = with_drop_sample(everything, in_order, generated=8)
    assert merged.n_harmful == 4 and merged.refusal_drop == pytest.approx(0.0)  # 2/4 refused both ways
    assert merged.proportions["conditional_flip_rate"].k == 4 and merged.conditional_flip_rate == 4 / 6
    assert merged.compliance_flip_rate == 3 / 6 and merged.incoherent_flip_rate == 1 / 6
    assert merged.reverse_flip_rate == 1 / 2 and merged.over_refusal_flip_rate == 1 / 2
    assert merged.mcnemar_p == in_order.mcnemar_p
    drop = gate_evidence(merged)["refusal_drop"]
    assert (drop.b, drop.c, drop.n) == (1, 1, 4)  # type: ignore[union-attr]  # not the 4 flips of all 6
    assert any("over all 6 fp refusals fed (8 harmful prompts generated" in n for n in merged.notes)
    assert with_drop_sample(everything, everything, generated=8) is everything
    with pytest.raises(MetricsError, match="must be part of the run"):
        with_drop_sample(in_order, everything, generated=8)
