"""QuantSpec: canonical strings, lossless round trips, and one-line errors naming the valid choices."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsafety_tests.spec import (
    INT_BITS,
    SHORT_FORMS,
    Fp8Scheme,
    Granularity,
    IntScheme,
    KVScheme,
    NoQuant,
    QuantSpec,
    SpecError,
    parse_spec,
)

CANONICAL = [
    "none",
    "int8",
    "int4",
    "int4-sym",
    "int4-g64",
    "int3-tensor",
    "int2-channel",
    "int2-sym-channel-t64",
    "int4-out2",
    "kivi2",
    "kivi4-g64;r=64",
    "kivi2;r=0",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_e4m3-amax",
    "fp8_e5m2-amax_head",
    "fp8_e5m2-rtz",
    "fp8_e4m3-amax_head-rtz",
    "k=int4-channel,v=int8",
    "int4;r=32",
    "int8;prefill=fp",
    "int4;L0-2=none;L5=int4-g32;L7=k=int8,v=none",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_strings_round_trip(text: str) -> None:
    spec = parse_spec(text)
    assert str(spec) == text
    assert parse_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("int8", QuantSpec(KVScheme(IntScheme(8), IntScheme(8)))),
        ("int4", QuantSpec(KVScheme(IntScheme(4), IntScheme(4)))),
        ("int3", QuantSpec(KVScheme(IntScheme(3), IntScheme(3)))),
        ("int2", QuantSpec(KVScheme(IntScheme(2), IntScheme(2)))),
        (
            "kivi4",
            QuantSpec(
                KVScheme(
                    IntScheme(4, False, Granularity.CHANNEL, 32), IntScheme(4, False, Granularity.GROUP, 32)
                ),
                residual=128,
            ),
        ),
        (
            "kivi2",
            QuantSpec(
                KVScheme(
                    IntScheme(2, False, Granularity.CHANNEL, 32), IntScheme(2, False, Granularity.GROUP, 32)
                ),
                residual=128,
            ),
        ),
        ("fp8_e4m3", QuantSpec(KVScheme(Fp8Scheme("e4m3"), Fp8Scheme("e4m3")))),
        ("fp8_e5m2", QuantSpec(KVScheme(Fp8Scheme("e5m2"), Fp8Scheme("e5m2")))),
    ],
)
def test_short_forms_have_documented_defaults(text: str, expected: QuantSpec) -> None:
    assert text in SHORT_FORMS
    assert parse_spec(text) == expected


def test_equivalent_spellings_print_one_canonical_form() -> None:
    assert str(parse_spec("fp8")) == "fp8_e4m3"
    assert str(parse_spec("fp8_e5m2-rne")) == "fp8_e5m2"  # round to nearest even is the default
    assert str(parse_spec("fp8-rtz-amax")) == "fp8_e4m3-amax-rtz"
    assert parse_spec("fp8_e5m2-rtz").kv.key == Fp8Scheme("e5m2", "one", "rtz")
    assert str(parse_spec("int4-asym-token")) == "int4"
    assert str(parse_spec("int2-channel-t32")) == "int2-channel"
    assert str(parse_spec("k=int2-channel,v=int2-g32;r=128")) == "kivi2"
    assert str(parse_spec("int4;L3=none;L2=none;L4=none")) == "int4;L2-4=none"
    assert str(parse_spec("kivi2;r=128;prefill=stored")) == "kivi2"


def test_overrides_and_views() -> None:
    spec = parse_spec("kivi2;L0=none;L3=int8")
    assert spec.layer(0).key == NoQuant()
    assert spec.layer(3).key == IntScheme(8)
    assert spec.layer(1) == spec.kv
    assert spec.window(1) == 128 and spec.window(3) == 128
    assert parse_spec("int2-channel-t16").window(0) == 16
    assert parse_spec("int8").window(0) == 1
    plan = parse_spec("int4").with_overrides({5: KVScheme(NoQuant(), NoQuant())})
    assert str(plan) == "int4;L5=none"
    assert not parse_spec("none").is_quantized and parse_spec("none;L1=int4").is_quantized


BAD = [
    ("int9", "int bits 9 not supported; valid: 2, 3, 4, 5, 6, 7, 8"),
    ("int1", "valid: 2, 3, 4, 5, 6, 7, 8"),
    ("int0", "valid: 2, 3, 4, 5, 6, 7, 8"),
    ("int16", "valid: 2, 3, 4, 5, 6, 7, 8"),
    ("kivi9", "kivi bits 9 not supported"),
    ("int4-g0", "'g0': must be >= 1"),
    ("fp8_e3m4", "fp8 format 'fp8_e3m4' does not exist; valid: fp8_e4m3 (= fp8), fp8_e5m2"),
    ("nf4", "unknown scheme 'nf4'; valid: none, int2..int8, fp8_e4m3, fp8_e5m2 (fp8), kivi2..kivi8"),
    ("int4-rows", "int option 'rows' unknown; valid: sym, asym, tensor, token, channel, g<G>, t<N>, out<K>"),
    ("int4-t16", "t16 (tokens per scale) applies to channel granularity only"),
    ("int4-channel-t1", "degenerate (min = max)"),
    ("int4-token-channel", "granularity given twice"),
    ("fp8_e4m3-sym", "fp8 option 'sym' unknown; valid: amax, amax_head, rne, rtz"),
    ("fp8_e5m2-rtn", "fp8 option 'rtn' unknown; valid: amax, amax_head, rne, rtz"),
    ("int4;L3", "clause 'L3' is not key=value"),
    ("int4;X3=none", "unknown key 'X3'; valid: r, prefill, L<i> or L<i>-<j>"),
    ("int4;L3=none;L3=int8", "layer 3 overridden twice"),
    ("int4;L5-3=none", "layer range 'L5-3' runs backwards"),
    ("int4;L3=int99", "int bits 99 not supported"),
    ("int4;prefill=cached", "prefill=cached unknown; valid: stored, fp"),
    ("int4;r=-1", "r=-1 is not a non-negative integer"),
    ("int2-channel;r=48", "r=48 must be a multiple of the channel token group t=32"),
    ("k=int4", "keys and values are written k=<scheme>,v=<scheme>"),
    ("", "empty quantizer spec"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_specs_get_one_line_naming_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    line = str(info.value)
    assert "\n" not in line
    assert message in line
    if text:
        assert repr(text) in line  # the whole spec is quoted, so a user can find it in a config


def test_validate_for_checks_what_depends_on_the_model() -> None:
    parse_spec("int4-g64;L23=none").validate_for(head_dim=128, num_layers=24)
    with pytest.raises(
        SpecError, match=r"group size g48 does not divide head_dim 128; valid: 1, 2, 4, 8, 16, 32, 64, 128"
    ):
        parse_spec("int4-g48").validate_for(head_dim=128, num_layers=24)
    with pytest.raises(SpecError, match=r"layer 24 out of range; the model has layers 0..23"):
        parse_spec("int4;L24=none").validate_for(head_dim=128, num_layers=24)
    with pytest.raises(SpecError, match="keeps every channel"):
        parse_spec("int4-out64").validate_for(head_dim=64, num_layers=2)


# -- generated specs -------------------------------------------------------------------------
int_schemes = st.builds(
    lambda bits, sym, gran, g, t, out: IntScheme(
        bits,
        sym,
        gran,
        g if gran is Granularity.GROUP else (t if gran is Granularity.CHANNEL else None),
        out,
    ),
    st.sampled_from(INT_BITS),
    st.booleans(),
    st.sampled_from(list(Granularity)),
    st.sampled_from([1, 8, 16, 32, 64, 80]),
    st.sampled_from([2, 16, 32, 64]),
    st.integers(0, 4),
)
fp8_schemes = st.builds(
    Fp8Scheme,
    st.sampled_from(["e4m3", "e5m2"]),
    st.sampled_from(["one", "tensor", "head"]),
    st.sampled_from(["rne", "rtz"]),
)
tensor_schemes = st.one_of(st.just(NoQuant()), int_schemes, fp8_schemes)
kv_schemes = st.one_of(
    tensor_schemes.map(lambda s: KVScheme(s, s)), st.builds(KVScheme, tensor_schemes, tensor_schemes)
)


@st.composite
def specs(draw: st.DrawFn) -> QuantSpec:
    kv = draw(kv_schemes)
    layers = draw(st.lists(st.integers(0, 40), max_size=5, unique=True))
    overrides = tuple(sorted((layer, draw(kv_schemes)) for layer in layers))
    groups = [kv.token_group, *(o.token_group for _, o in overrides)]
    lcm = 1
    for g in groups:
        lcm = lcm * g // __import__("math").gcd(lcm, g)
    residual = draw(st.sampled_from([0, 128, 256])) // lcm * lcm if lcm <= 256 else 0
    return QuantSpec(kv, residual, draw(st.sampled_from(["stored", "fp"])), overrides)


@given(specs())
def test_every_spec_round_trips_through_its_string(spec: QuantSpec) -> None:
    text = str(spec)
    assert parse_spec(text) == spec
    assert str(parse_spec(text)) == text
