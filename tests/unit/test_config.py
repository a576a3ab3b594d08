"""config: ``[tool.kvsafety]`` and the command line into one validated GateConfig, before any model loads."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kvsafety_tests.config import (
    BACKENDS,
    CONFIG_KEYS,
    ConfigError,
    GateConfig,
    expand_sweep,
    load_pyproject_table,
    parse_device,
    resolve_config,
)
from kvsafety_tests.engine import DEFAULT_QUANTIZERS, DEFAULT_THRESHOLDS
from kvsafety_tests.gate.thresholds import Thresholds

ROOT = Path("/project/root")
MODEL = "smollm2-135m-instruct"
OTHER = "qwen2.5-coder-0.5b-instruct"
DEFAULT_MODELS = (MODEL,)


def resolve(table: Mapping[str, Any] | None = None, **overrides: Any) -> GateConfig:
    return resolve_config(
        table or {},
        overrides,
        rootdir=ROOT,
        default_models=DEFAULT_MODELS,
        default_quantizers=DEFAULT_QUANTIZERS,
        default_thresholds=DEFAULT_THRESHOLDS,
    )


# --- expand_sweep ----------------------------------------------------------------------------------


def test_sweep_of_choices_keeps_the_written_order_and_the_tail() -> None:
    assert expand_sweep("int{4,3,2}-channel") == ["int4-channel", "int3-channel", "int2-channel"]


def test_sweep_range_is_inclusive() -> None:
    assert expand_sweep("int{2..8}") == ["int2", "int3", "int4", "int5", "int6", "int7", "int8"]


def test_descending_range_counts_down() -> None:
    assert expand_sweep("int{8..2}") == ["int8", "int7", "int6", "int5", "int4", "int3", "int2"]


def test_two_braces_expand_as_a_product_first_brace_outermost() -> None:
    assert expand_sweep("int{4,2}-g{32,64}") == ["int4-g32", "int4-g64", "int2-g32", "int2-g64"]


def test_text_without_braces_passes_through() -> None:
    assert expand_sweep("fp8_e5m2") == ["fp8_e5m2"]


@pytest.mark.parametrize("text", ["int{4", "int4}", "int{}", "int{4}", "int{4,}"])
def test_bad_sweeps_raise_naming_the_text(text: str) -> None:
    with pytest.raises(ConfigError, match="quantizer sweep") as info:
        expand_sweep(text)
    assert repr(text) in str(info.value)


# --- resolve_config: sources and precedence -------------------------------------------------------


def test_empty_table_gives_the_defaults() -> None:
    config = resolve()
    assert config.source == "defaults"
    assert config.models == DEFAULT_MODELS
    assert config.quantizers == DEFAULT_QUANTIZERS
    assert config.thresholds == Thresholds(**DEFAULT_THRESHOLDS)
    assert config.per_model == {}
    assert config.limit is None
    assert (config.backend, config.device, config.judge, config.prompts) == (
        "hf",
        "cpu",
        "rules",
        ("builtin", "advbench", "harmbench"),  # the default pool (docs/results/default-pool.md)
    )


def test_default_report_lies_under_the_rootdir() -> None:
    # the help text's promise: .kvsafety/report.json under the rootdir, not under the cwd
    assert resolve().report == ROOT / ".kvsafety" / "report.json"


def test_pyproject_values_are_used() -> None:
    config = resolve(
        {
            "models": [OTHER],
            "quantizers": ["int8", "kivi2"],
            "limit": 24,
            "max_new_tokens": 48,  # not the default (32): the pyproject value must win
            "device": "cuda:1",
            "noise_floor": False,
            "report": "out/gate.json",
        }
    )
    assert config.source == "pyproject"
    assert config.models == (OTHER,)
    assert config.quantizers == ("int8", "kivi2")
    assert (config.limit, config.max_new_tokens, config.device, config.noise_floor) == (
        24,
        48,
        "cuda:1",
        False,
    )
    assert config.report == ROOT / "out" / "gate.json"


def test_a_single_string_is_a_one_element_list() -> None:
    config = resolve({"models": OTHER, "quantizers": "int4"})
    assert (config.models, config.quantizers) == ((OTHER,), ("int4",))


def test_command_line_wins_over_pyproject() -> None:
    table = {"models": [OTHER], "quantizers": ["int8"], "limit": 24, "report": "from-pyproject.json"}
    config = resolve(table, models=[MODEL], quantizers=["fp8_e5m2"], limit=3, report="cli/r.json")
    assert config.models == (MODEL,)
    assert config.quantizers == ("fp8_e5m2",)
    assert config.limit == 3
    # --kvsafety-report is relative to the cwd, pyproject's report to the rootdir
    assert config.report == Path("cli/r.json")
    assert config.source == "pyproject"


def test_overrides_left_none_do_not_override() -> None:
    config = resolve({"limit": 24, "device": "cuda"}, limit=None, device=None, models=None, thresholds=None)
    assert (config.limit, config.device) == (24, "cuda")


def test_command_line_values_are_validated_naming_the_option() -> None:
    with pytest.raises(
        ConfigError, match="--kvsafety-max-new-tokens: max_new_tokens = 0 must be an integer >= 1"
    ):
        resolve(max_new_tokens=0)


def test_combos_are_models_outer_quantizers_inner() -> None:
    config = resolve({"models": [MODEL, OTHER], "quantizers": ["int8", "int4"]})
    assert config.combos() == [(MODEL, "int8"), (MODEL, "int4"), (OTHER, "int8"), (OTHER, "int4")]


# --- resolve_config: quantizers --------------------------------------------------------------------


def test_sweeps_expand_and_specs_are_canonicalized() -> None:
    config = resolve({"quantizers": ["int{4,3}-token", "fp8", "int{8..6}-channel"]})
    assert config.quantizers == ("int4", "int3", "fp8_e4m3", "int8-channel", "int7-channel", "int6-channel")


def test_duplicates_after_canonicalization_are_rejected() -> None:
    with pytest.raises(ConfigError, match="quantizers: 'int4' is listed twice"):
        resolve({"quantizers": ["int4", "int4-token"]})
    with pytest.raises(ConfigError, match="'fp8_e4m3' is listed twice"):
        resolve(quantizers=["fp8", "fp8_e4m3"])


def test_none_is_rejected_the_baseline_is_always_measured() -> None:
    with pytest.raises(ConfigError, match="'none' quantizes nothing"):
        resolve({"quantizers": ["int8", "none"]})


def test_an_invalid_spec_is_rejected_with_the_spec_error() -> None:
    with pytest.raises(ConfigError, match=r"quantizers: .*'int9'"):
        resolve({"quantizers": ["int9"]})


def test_empty_lists_are_rejected_not_replaced_by_the_defaults() -> None:
    with pytest.raises(ConfigError, match=r"quantizers = \[\] is empty"):
        resolve({"quantizers": []})
    with pytest.raises(ConfigError, match=r"models = \[\] is empty"):
        resolve({"models": []})


def test_a_model_listed_twice_is_rejected() -> None:
    with pytest.raises(ConfigError, match=f"models: '{MODEL}' is listed twice"):
        resolve({"models": [MODEL, OTHER, MODEL]})


# --- resolve_config: keys and types ----------------------------------------------------------------


def test_unknown_key_is_rejected_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown key 'model'") as info:
        resolve({"model": MODEL})
    assert f"valid: {', '.join(CONFIG_KEYS)}" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("limit", 0, "must be an integer >= 1"),
        ("limit", "3", "must be an integer >= 1"),
        ("max_new_tokens", True, "must be an integer >= 1"),
        ("tensor_parallel_size", 0, "must be an integer >= 1"),
        ("noise_floor", "yes", "must be true or false"),
        ("pcr", 1, "must be true or false"),
        ("pcr_budget", 1.5, r"must be a fraction in \[0, 1\]"),
        ("pcr_budget", "7%", r"must be a fraction in \[0, 1\]"),
        ("prompts", "", "must be a string or a list of non-empty strings"),
        ("models", [MODEL, 3], "must be a string or a list of non-empty strings"),
    ],
)
def test_wrong_types_are_rejected_naming_the_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        resolve({key: value})
    assert str(info.value).startswith(f"[tool.kvsafety] {key} = {value!r}")


def test_pcr_keys_reach_the_config_and_the_command_line_wins() -> None:
    config = resolve({"pcr": True, "pcr_budget": 0.05, "noise_ratio": True})
    assert (config.pcr, config.pcr_budget, config.noise_ratio) == (True, 0.05, True)
    assert resolve({"pcr_budget": 0.05}, pcr_budget=0.1).pcr_budget == 0.1
    assert resolve({}).pcr is False and resolve({}).pcr_budget == 0.07


def test_an_unknown_backend_is_rejected_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="backend = 'tgi' is not valid; valid: hf, vllm") as info:
        resolve({"backend": "tgi"})
    assert f"valid: {', '.join(BACKENDS)}" in str(info.value) and BACKENDS == ("hf", "vllm")


def test_tensor_parallelism_needs_the_vllm_backend() -> None:
    assert resolve({}).tensor_parallel_size == 1
    with pytest.raises(
        ConfigError,
        match=r"^\[tool.kvsafety\] tensor_parallel_size = 2 needs backend = 'vllm'; the hf backend runs each model",
    ):
        resolve({"tensor_parallel_size": 2})
    with pytest.raises(ConfigError, match="needs backend = 'vllm'"):
        resolve({}, tensor_parallel_size=4)  # --kvsafety-tensor-parallel-size


def test_vllm_refuses_a_quantizer_it_cannot_express_before_anything_loads() -> None:
    with pytest.raises(
        ConfigError, match=r"backend = 'vllm': quantizer int4 cannot run on vllm .*vllm expresses"
    ):
        resolve({"backend": "vllm", "quantizers": ["fp8_e5m2", "int4"]})


@pytest.mark.parametrize("key", ["pcr", "noise_ratio", "max_noise_ratio", "min_pcr_recovery"])
def test_vllm_refuses_pcr_and_what_implies_it(key: str) -> None:
    value = True if key in ("pcr", "noise_ratio") else 0.5
    with pytest.raises(ConfigError, match="PCR and the noise ratio need the hf backend"):
        resolve({"backend": "vllm", "quantizers": ["fp8_e5m2"], key: value})


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_from_the_environment_says_how_to_install_it() -> None:
    with pytest.raises(
        ConfigError, match=r"vLLM is not installed in this environment: pip install -r requirements/vllm.txt"
    ):
        resolve({"backend": "vllm", "quantizers": ["fp8_e5m2", "fp8_e4m3;L0=none"]})


def test_unknown_dtype_is_rejected() -> None:
    with pytest.raises(ConfigError, match="dtype = 'fp16' is not valid; valid: bfloat16, float16, float32"):
        resolve({"dtype": "fp16"})


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "cuda:12", "auto"])
def test_valid_devices_are_accepted(device: str) -> None:
    assert parse_device(device) == device
    assert resolve({"device": device}).device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:", "CPU", "cuda:1\n", "mps"])
def test_invalid_devices_are_rejected(device: str) -> None:
    with pytest.raises(ConfigError, match=r"is not valid; valid: cpu, cuda, cuda:N, auto") as info:
        resolve({"device": device})
    assert repr(device) in str(info.value)
    with pytest.raises(ConfigError):
        resolve(device=device)


# --- resolve_config: thresholds --------------------------------------------------------------------


def test_defaults_are_kept_and_given_thresholds_override() -> None:
    config = resolve({"max_refusal_drop": 0.2, "max_compliance_flip": 0.3})
    assert config.thresholds.max_refusal_drop == 0.2
    assert config.thresholds.max_compliance_flip == 0.3  # not a default: added
    assert config.thresholds.max_conditional_flip == DEFAULT_THRESHOLDS["max_conditional_flip"]
    assert config.thresholds.max_perplexity_ratio == DEFAULT_THRESHOLDS["max_perplexity_ratio"]


def test_off_disables_a_default_threshold() -> None:
    config = resolve({"max_perplexity_ratio": "off"})
    assert config.thresholds.max_perplexity_ratio is None
    assert "max_perplexity_ratio" not in config.thresholds.as_dict()
    assert config.thresholds.max_refusal_drop == DEFAULT_THRESHOLDS["max_refusal_drop"]


def test_command_line_thresholds_win_over_pyproject() -> None:
    config = resolve(
        {"max_refusal_drop": 0.2}, thresholds={"max_refusal_drop": 0.01, "max_noise_ratio": "off"}
    )
    assert config.thresholds.max_refusal_drop == 0.01


def test_a_rate_threshold_above_one_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"max_conditional_flip = 1.5 is a rate: it must lie in \[0, 1\]"):
        resolve({"max_conditional_flip": 1.5})
    with pytest.raises(ConfigError, match=r"--kvsafety-threshold: .*max_refusal_drop = 2\.0 is a rate"):
        resolve(thresholds={"max_refusal_drop": 2})


def test_a_threshold_that_is_not_a_number_is_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"\[tool.kvsafety\] max_refusal_drop = '5%' must be a number or \"off\""
    ):
        resolve({"max_refusal_drop": "5%"})
    with pytest.raises(ConfigError, match="max_refusal_drop = True must be a number"):
        resolve({"max_refusal_drop": True})


def test_an_unknown_threshold_name_is_rejected_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown threshold 'max_drop'; valid: max_refusal_drop, "):
        resolve(thresholds={"max_drop": 0.1})


# --- resolve_config: per-model thresholds ----------------------------------------------------------


def test_per_model_overrides_that_model_only() -> None:
    table = {
        "models": [MODEL, OTHER],
        "max_refusal_drop": 0.05,
        "per_model": {OTHER: {"max_refusal_drop": 0.10, "max_perplexity_ratio": "off"}},
    }
    config = resolve(table)
    own = config.thresholds_for(OTHER)
    assert own.max_refusal_drop == 0.10
    assert own.max_perplexity_ratio is None
    assert own.max_conditional_flip == DEFAULT_THRESHOLDS["max_conditional_flip"]  # inherited
    assert config.thresholds_for(MODEL) == config.thresholds
    assert config.thresholds.max_refusal_drop == 0.05
    assert config.thresholds.max_perplexity_ratio == DEFAULT_THRESHOLDS["max_perplexity_ratio"]


def test_command_line_thresholds_win_over_per_model() -> None:
    table = {
        "models": [MODEL, OTHER],
        "per_model": {OTHER: {"max_refusal_drop": 0.10, "max_noise_ratio": 2.0}},
    }
    config = resolve(table, thresholds={"max_refusal_drop": 0.02})
    assert config.thresholds_for(OTHER).max_refusal_drop == 0.02
    assert config.thresholds_for(OTHER).max_noise_ratio == 2.0  # the model's own, not overridden
    assert config.thresholds_for(MODEL).max_refusal_drop == 0.02


def test_per_model_for_a_model_not_audited_is_rejected() -> None:
    with pytest.raises(ConfigError, match=f"model '{OTHER}' is not audited; audited: {MODEL}"):
        resolve({"per_model": {OTHER: {"max_refusal_drop": 0.1}}})


def test_per_model_must_be_a_table_of_tables() -> None:
    with pytest.raises(ConfigError, match="per_model must be a table of model name -> thresholds"):
        resolve({"per_model": [MODEL]})
    with pytest.raises(ConfigError, match=f"per_model.'{MODEL}'.* must be a table of thresholds"):
        resolve({"per_model": {MODEL: 0.1}})


def test_per_model_thresholds_are_validated() -> None:
    with pytest.raises(ConfigError, match=f"per_model.'{MODEL}'.*unknown threshold 'limit'"):
        resolve({"per_model": {MODEL: {"limit": 3}}})
    with pytest.raises(ConfigError, match="is a rate"):
        resolve({"per_model": {MODEL: {"max_compliance_flip": 1.01}}})


# --- load_pyproject_table --------------------------------------------------------------------------


def test_missing_pyproject_is_an_empty_table(tmp_path: Path) -> None:
    assert load_pyproject_table(tmp_path / "pyproject.toml") == {}


def test_pyproject_without_the_table_is_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n\n[tool.ruff]\nline-length = 100\n')
    assert load_pyproject_table(path) == {}


def test_pyproject_table_is_read_with_its_subtables(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[tool.kvsafety]\n"
        'quantizers = ["int{4,3}"]\n'
        "limit = 4\n"
        f'[tool.kvsafety.per_model."{MODEL}"]\n'
        "max_refusal_drop = 0.1\n"
    )
    table = load_pyproject_table(path)
    assert table == {"quantizers": ["int{4,3}"], "limit": 4, "per_model": {MODEL: {"max_refusal_drop": 0.1}}}
    config = resolve(table)
    assert config.quantizers == ("int4", "int3")
    assert config.thresholds_for(MODEL).max_refusal_drop == 0.1


def test_invalid_toml_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.kvsafety\nlimit = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_pyproject_table(path)
    assert str(path) in str(info.value)


def test_kvsafety_that_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool]\nkvsafety = "on"\n')
    with pytest.raises(ConfigError, match=r"\[tool.kvsafety\] must be a table, not str"):
        load_pyproject_table(path)
