"""The report's codec (report/codec.py): decoders and checks derived from the dataclass fields.

What a document must hold comes from the fields' type hints and metadata, so these tests hold
the derived codec to docs/report.md's contract (the version-1 run fields are required, later ones
may be absent) and show that a field needs nothing beyond its declaration.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from kvsafety_tests.report import (
    AuditConfig,
    Environment,
    Report,
    ReportError,
    RunEntry,
    error_run,
    report_from_dict,
    report_to_dict,
    run_from_dict,
    run_to_dict,
)
from kvsafety_tests.report.codec import check_fields, decode, encode, rules

ENV = Environment(python="3.11.7", device="cpu")

#: docs/report.md's run listing (version 1): a run without one of these is not a report's run.
REPORT_MD_RUN_FIELDS = (
    "model model_sha256 backend quantizer prompt_set n_harmful n_harmless refusal_rate_baseline "
    "refusal_rate_quantized refusal_drop conditional_flip_rate conditional_flip_ci compliance_flip_rate "
    "incoherent_rate_quantized over_refusal_flip_rate reverse_flip_rate mcnemar_p noise_floor_flip_rate "
    "quantized_fraction perplexity_baseline perplexity_quantized perplexity_ratio noise_ratio "
    "noise_ratio_per_layer kv_bytes_per_token kv_bytes_ratio pcr seconds verdict violations"
).split()


def _run(**kwargs: Any) -> RunEntry:
    return RunEntry(
        **{"model": "m", "quantizer": "int4", "prompt_set": "builtin", "verdict": "fail", **kwargs}
    )


def _report(*runs: RunEntry) -> Report:
    return Report(
        status="complete", started="t0", finished="t1", environment=ENV, config=AuditConfig(), runs=runs
    )


def test_kernels_round_trips_and_is_none_when_absent() -> None:
    run = _run(kernels="compiled+torch", conditional_flip_rate=0.25)
    doc = run_to_dict(run)
    assert doc["kernels"] == "compiled+torch"
    assert run_from_dict(json.loads(json.dumps(doc))) == run
    del doc["kernels"]
    assert run_from_dict(doc).kernels is None
    doc["kernels"] = 3
    with pytest.raises(ReportError, match=r"^run: run\.kernels: expected a string, got 3$"):
        run_from_dict(doc)


def test_a_version_1_run_without_the_added_fields_loads() -> None:
    doc = report_to_dict(_report(_run(kernels="triton")))
    doc["schema"] = "kvsafety-report/1"
    added = {f.name for f in dataclasses.fields(RunEntry)} - set(REPORT_MD_RUN_FIELDS) - {"extra"}
    for name in added:
        doc["runs"][0].pop(name)
    loaded = report_from_dict(doc)
    assert loaded.schema == "kvsafety-report/1"
    assert loaded.runs[0].kernels is None and loaded.runs[0].thresholds == ()


def test_exactly_report_md_run_fields_are_required_on_load() -> None:
    doc = run_to_dict(_run())
    required = []
    for name in doc:
        partial = {k: v for k, v in doc.items() if k != name}
        try:
            run_from_dict(partial)
        except ReportError as e:
            assert str(e) == f"run: run: missing field(s) {name}"
            required.append(name)
    assert required == REPORT_MD_RUN_FIELDS


def test_top_level_fields_and_the_gate_are_required_notes_is_not() -> None:
    doc = report_to_dict(_report(error_run(model="m", quantizer="int2", prompt_set="s", error="boom")))
    assert list(doc) == [
        "schema",
        "status",
        "started",
        "finished",
        "environment",
        "config",
        "runs",
        "gate",
        "notes",
    ]
    for name in ("status", "started", "finished", "environment", "config", "runs", "gate"):
        partial = {k: v for k, v in doc.items() if k != name}
        with pytest.raises(ReportError, match=rf"^src: missing field\(s\) {name}$"):
            report_from_dict(partial, source="src")
    del doc["notes"]
    assert report_from_dict(doc).notes == ()


def test_type_errors_name_the_json_path_and_rule_errors_the_field() -> None:
    doc = report_to_dict(_report(_run(noise_floors={"conditional_flip_rate": 0.1})))
    doc["runs"][0]["noise_floors"]["conditional_flip_rate"] = "0.1"
    with pytest.raises(
        ReportError, match=r"^f: runs\[0\]\.noise_floors\['conditional_flip_rate'\]: expected a number"
    ):
        report_from_dict(doc, source="f")
    doc["runs"][0]["noise_floors"]["conditional_flip_rate"] = 1.5
    with pytest.raises(
        ReportError,
        match=r"^f: runs\[0\]: run noise_floors\['conditional_flip_rate'\] is 1\.5; expected a finite number in \[0, 1\] or null$",
    ):
        report_from_dict(doc, source="f")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mde": 1.5}, "run mde is 1.5; expected a finite number in [0, 1] or null"),
        ({"refusal_drop": -1.5}, "run refusal_drop is -1.5; expected a finite number in [-1, 1] or null"),
        ({"n_harmful": -1}, "run n_harmful is -1; expected a non-negative integer"),
        ({"seconds": None}, "run seconds is None; expected a non-negative finite number"),
        ({"perplexity_ratio": 0.0}, "run perplexity_ratio is 0.0; expected a positive finite number or null"),
        (
            {"noise_ratio_per_layer": (0.1, -2.0)},
            "run noise_ratio_per_layer[1] is -2.0; expected a non-negative",
        ),
        ({"counts": {"mde": (3, 2)}}, "run counts['mde'] is (3, 2); expected (k, n) with 0 <= k <= n"),
        ({"backend": "tgi"}, "run backend is 'tgi'; valid: hf, vllm"),
        ({"model": ""}, "run model is ''; expected a non-empty string"),
    ],
)
def test_field_rules_hold_for_a_run_built_in_code(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ReportError) as info:
        _run(**kwargs)
    assert str(info.value).startswith(message)


def test_a_misspelt_rule_fails_when_the_class_is_defined() -> None:
    with pytest.raises(ValueError, match="no check called 'rates'; checks: rate, difference"):
        rules("rates")


@dataclass(frozen=True, kw_only=True)
class _Probe:
    """A dataclass the codec has never seen: its fields alone make its decoder and checks."""

    rate: float | None = field(default=None, metadata=rules("rate", required=True))
    kind: str = field(metadata=rules(choices=("a", "b")))
    floors: Mapping[str, float | None] = field(default_factory=dict, metadata=rules("rate", each=True))
    pairs: tuple[tuple[int, int], ...] = ()
    env: Environment | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, "probe ")


def test_a_new_dataclass_needs_only_its_fields() -> None:
    probe = _Probe(rate=0.5, kind="a", floors={"x": None}, pairs=((1, 2),), env=ENV, extra={"later": [1]})
    doc = json.loads(json.dumps(encode(probe)))
    assert doc["later"] == [1] and doc["pairs"] == [[1, 2]]
    assert decode(_Probe, doc, "probe") == probe
    with pytest.raises(ReportError, match=r"^probe: missing field\(s\) rate, kind$"):
        decode(_Probe, {}, "probe")
    with pytest.raises(ReportError, match=r"^probe\.pairs\[0\]: expected a \[low, high\] pair, got \[1\]$"):
        decode(_Probe, {**doc, "pairs": [[1]]}, "probe")
    with pytest.raises(ReportError, match=r"^probe\.env: missing field\(s\) python, device$"):
        decode(_Probe, {**doc, "env": {}}, "probe")
    with pytest.raises(ReportError, match=r"^probe: probe kind is 'c'; valid: a, b$"):
        decode(_Probe, {**doc, "kind": "c"}, "probe")
    with pytest.raises(
        ReportError, match=r"probe floors\['x'\] is 2; expected a finite number in \[0, 1\] or null"
    ):
        _Probe(rate=None, kind="b", floors={"x": 2})
    with pytest.raises(ReportError, match=r"_Probe\.extra repeats the field\(s\) rate; set them directly"):
        _Probe(kind="a", extra={"rate": 0.1})
