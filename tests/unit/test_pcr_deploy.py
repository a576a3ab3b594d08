"""PCR's plan exported as vLLM engine settings (kvsafety_tests.pcr.deploy), and its place in the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kvsafety_tests.pcr import Diagnosis
from kvsafety_tests.pcr.deploy import VllmDeployment, vllm_deployment, vllm_settings
from kvsafety_tests.report import add_run, finish_report, new_report, pcr_from_diagnosis
from kvsafety_tests.report.codec import decode, encode
from kvsafety_tests.report.markdown import to_markdown
from kvsafety_tests.report.schema import AuditConfig, Environment, PcrEntry, Report, RunEntry
from kvsafety_tests.report.views import terminal_table
from kvsafety_tests.spec import SpecError


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ("fp8_e5m2", {"kv_cache_dtype": "fp8_e5m2", "kv_cache_dtype_skip_layers": []}),
        ("fp8_e4m3;L3=none", {"kv_cache_dtype": "fp8_e4m3", "kv_cache_dtype_skip_layers": ["3"]}),
        ("fp8;L0=none", {"kv_cache_dtype": "fp8_e4m3", "kv_cache_dtype_skip_layers": ["0"]}),
        (
            "fp8_e5m2;L7-9=none;L23=none",
            {"kv_cache_dtype": "fp8_e5m2", "kv_cache_dtype_skip_layers": ["7", "8", "9", "23"]},
        ),
        # layers in numeric order, not string order ("10" after "2")
        (
            "fp8_e5m2;L10=none;L2=none",
            {"kv_cache_dtype": "fp8_e5m2", "kv_cache_dtype_skip_layers": ["2", "10"]},
        ),
        # an override equal to the base is no override
        ("fp8_e5m2;L4=fp8_e5m2;L5=none", {"kv_cache_dtype": "fp8_e5m2", "kv_cache_dtype_skip_layers": ["5"]}),
    ],
)
def test_whole_layer_fp8_plans(plan: str, expected: dict[str, object]) -> None:
    assert vllm_settings(plan, num_layers=24) == expected
    d = vllm_deployment(plan)
    assert d.expressible and d.settings == expected and d.reason is None


@pytest.mark.parametrize(
    ("plan", "reason"),
    [
        # vLLM's engine rounds as its platform does; -rtz is only the hf backend's simulation of it
        ("fp8_e5m2-rtz;L3=none", r"^an fp8 rounding option: .* On vllm use fp8_e5m2$"),
        # PCR's outlier-crushes-safety fix for FP8: a per-head calibrated scale on one layer
        (
            "fp8_e5m2;L3=fp8_e5m2-amax_head",
            r"^per-layer override L3=fp8_e5m2-amax_head \(a calibrated fp8 scale\): vLLM can only leave "
            r"whole layers at the model dtype",
        ),
        # 16-bit outlier channels inside a layer, not the whole layer at 16 bits
        ("fp8_e5m2;L3=int8-out2", r"^per-layer override L3=int8-out2 \(16-bit outlier channels inside"),
        (
            "fp8_e5m2;L3=k=none,v=fp8_e5m2",
            r"^per-layer override L3=k=none,v=fp8_e5m2 \(different key and value",
        ),
        ("fp8_e4m3;L2=fp8_e5m2", r"^per-layer override L2=fp8_e5m2 \(another scheme for this layer\)"),
        ("int4;L3=int4-out2", r"^integer / KIVI schemes"),
        ("int4;L3=none", r"^integer / KIVI schemes"),
        ("fp8_e4m3-amax;L1=none", r"^calibrated fp8 scales: vLLM 0\.32 has no runtime KV-scale calibration"),
        ("fp8_e5m2;r=128;L1=none", r"^a full-precision residual window r=128$"),
        ("fp8_e5m2;L30=none", r"^layer 30 out of range 0\.\.23$"),
    ],
)
def test_inexpressible_plans_get_one_line_reason(plan: str, reason: str) -> None:
    d = vllm_deployment(plan, num_layers=24)
    assert d.settings is None and not d.expressible
    assert d.reason is not None and "\n" not in d.reason
    assert d.line() == f"vLLM: not deployable ({d.reason})"
    assert re.search(reason, d.reason), d.reason
    with pytest.raises(
        ValueError, match=rf"^quantizer {re.escape(d.spec)} cannot run on vllm \(.*\); vllm expresses"
    ):
        vllm_settings(plan, num_layers=24)


def test_an_invalid_spec_is_an_error_not_a_reason() -> None:
    with pytest.raises(SpecError, match="fp8 format 'fp8_e9m9' does not exist"):
        vllm_deployment("fp8_e9m9;L1=none")


def test_line() -> None:
    assert vllm_deployment("fp8_e5m2;L3=none;L7=none").line() == (
        "vLLM: kv_cache_dtype=fp8_e5m2, kv_cache_dtype_skip_layers=[3, 7]"
    )
    assert vllm_deployment("fp8_e4m3").line() == "vLLM: kv_cache_dtype=fp8_e4m3"
    assert vllm_deployment("fp8_e4m3;L3=none").spec == "fp8_e4m3;L3=none"


def test_imports_no_vllm_or_torch() -> None:
    code = "import sys, kvsafety_tests.pcr.deploy as d; d.vllm_settings('fp8;L1=none'); print('vllm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _diagnosis(plan: str, plan_layers: dict[int, str]) -> Diagnosis:
    n = 4
    return Diagnosis(
        quantizer=plan.split(";")[0],
        mode="multi-layer-dilution",
        damage=0.4,
        layers=list(range(n)),
        r_layer=[0.1, 0.5, 0.0, 0.2],
        r_gran=[0.0] * n,
        r_out=[0.0] * n,
        not_applicable=["out"],
        top=[1, 3],
        r_top=0.3,
        plan=plan,
        plan_layers=plan_layers,
        plan_memory_overhead=0.05,
        budget=0.07,
        predicted_recovery=0.4,
        forward_passes=10,
        calibration_prompts=20,
        seconds=1.0,
    )


def test_report_entry_carries_the_settings() -> None:
    entry = pcr_from_diagnosis(_diagnosis("fp8_e5m2;L1=none", {1: "layer"}))
    assert entry is not None
    assert entry.vllm_settings == {"kv_cache_dtype": "fp8_e5m2", "kv_cache_dtype_skip_layers": ["1"]}
    assert entry.vllm_unsupported is None
    data = json.loads(json.dumps(encode(entry)))
    assert data["vllm_settings"] == {"kv_cache_dtype": "fp8_e5m2", "kv_cache_dtype_skip_layers": ["1"]}
    assert list(data).index("vllm_settings") == list(data).index("plan") + 1
    assert decode(PcrEntry, data, "pcr") == entry


def test_report_entry_carries_the_reason() -> None:
    entry = pcr_from_diagnosis(_diagnosis("fp8_e5m2;L1=fp8_e5m2-amax_head", {1: "gran"}))
    assert entry is not None and entry.vllm_settings is None
    assert entry.vllm_unsupported is not None and entry.vllm_unsupported.startswith("per-layer override L1=")
    data = encode(entry)
    assert data["vllm_settings"] is None and data["vllm_unsupported"] == entry.vllm_unsupported
    assert decode(PcrEntry, data, "pcr") == entry


def test_older_report_without_the_fields_loads() -> None:
    entry = pcr_from_diagnosis(_diagnosis("fp8_e5m2;L1=none", {1: "layer"}))
    data = encode(entry)
    del data["vllm_settings"], data["vllm_unsupported"]
    old = decode(PcrEntry, data, "pcr")
    assert old.vllm_settings is None and old.vllm_unsupported is None and old.plan == "fp8_e5m2;L1=none"


def test_deployment_value() -> None:
    d = VllmDeployment("fp8_e5m2", {"kv_cache_dtype": "fp8_e5m2", "kv_cache_dtype_skip_layers": []}, None)
    assert d.expressible and d.line() == "vLLM: kv_cache_dtype=fp8_e5m2"


def _report_with(entry: PcrEntry) -> Report:
    env = Environment(python="3.11.7", torch="2.13.0", device="cpu", git_commit="abc123")
    config = AuditConfig(
        models=("m",), quantizers=("fp8_e5m2",), prompt_sets=("builtin",), judge="rules-v2", max_new_tokens=64
    )
    run = RunEntry(model="m", quantizer="fp8_e5m2", prompt_set="builtin", verdict="pass", pcr=entry)
    report = add_run(new_report(env, config, started="2025-01-01T00:00:00+00:00"), run)
    return finish_report(report, status="complete", finished="2025-01-01T00:10:00+00:00")


def test_markdown_and_terminal_show_the_settings_in_one_line() -> None:
    entry = pcr_from_diagnosis(_diagnosis("fp8_e5m2;L1=none;L3=none", {1: "layer", 3: "layer"}))
    assert entry is not None
    report = _report_with(entry)
    lines = to_markdown(report).splitlines()
    assert "- PCR plan on vLLM: kv_cache_dtype=fp8_e5m2, kv_cache_dtype_skip_layers=[1, 3]" in lines
    (pcr_line,) = [line for line in terminal_table(report) if "PCR multi-layer-dilution" in line]
    assert pcr_line.endswith("; vLLM kv_cache_dtype=fp8_e5m2 skip layers [1,3]")


def test_markdown_shows_the_reason() -> None:
    entry = pcr_from_diagnosis(_diagnosis("fp8_e5m2;L1=fp8_e5m2-amax_head", {1: "gran"}))
    assert entry is not None
    lines = to_markdown(_report_with(entry)).splitlines()
    (line,) = [line for line in lines if line.startswith("- PCR plan on vLLM")]
    assert line == f"- PCR plan on vLLM: not deployable ({entry.vllm_unsupported})"
