"""The settings table: one definition of every key drives pyproject, the plugin's options, the CLI
and the docs; the same bad value gets the same one-line error everywhere."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from _pytest.config.argparsing import Parser

from kvsafety_tests import plugin
from kvsafety_tests.__main__ import EXIT_USAGE, build_parser, main
from kvsafety_tests.config import ConfigError, resolve_config
from kvsafety_tests.prompts import load_prompts
from kvsafety_tests.settings import (
    SETTINGS,
    THRESHOLD_KEYS,
    GateConfig,
    add_options,
    markdown_table,
    overrides_from,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- BEGIN GENERATED: settings table -->", "<!-- END GENERATED: settings table -->"


def plugin_options() -> dict[str, Any]:
    """The --kvsafety-* options pytest registers: dest -> its argparse action attributes."""
    parser = Parser()
    plugin.pytest_addoption(parser)
    group = parser.getgroup("kvsafety")
    return {opt.dest: opt for opt in group.options}


def plugin_namespace(*args: str) -> dict[str, Any]:
    """Parse ``args`` as pytest would parse the plugin's options."""
    parser = argparse.ArgumentParser()
    add_options(parser.add_argument, prefix="kvsafety-")
    return vars(parser.parse_args(list(args)))


def test_the_cli_and_the_plugin_expose_the_same_keys() -> None:
    plugin_keys = {d.removeprefix("kvsafety_") for d in plugin_options()} - {
        "kvsafety",
        "compare",
        "compare_fail",
    }
    cli_keys = {a.dest for a in build_parser()._actions} - {"help", "pyproject"}
    assert plugin_keys == cli_keys
    table_keys = {k.name for k in SETTINGS if k.on_command_line} | {"threshold"}
    assert cli_keys == table_keys
    assert len(table_keys) >= 25  # every key, not a handful


def test_every_settings_key_is_a_field_of_the_config_with_the_same_default() -> None:
    config = GateConfig()
    for key in SETTINGS:
        assert getattr(config, key.name) == key.default, key.name


@pytest.mark.parametrize("key", [k for k in SETTINGS if k.kind == "bool"], ids=lambda k: k.name)
def test_every_boolean_key_can_be_switched_both_ways_on_each_command_line(key: Any) -> None:
    table = {key.name: not key.default}
    for prefix, parse in (
        ("kvsafety-", plugin_namespace),
        ("", lambda *a: vars(build_parser().parse_args(list(a)))),
    ):
        flag = f"--{prefix}{'' if key.default else 'no-'}{key.option}"
        options = parse(flag)
        config = resolve_config(table, overrides_from(options, prefix=prefix), rootdir=ROOT, prefix=prefix)
        assert getattr(config, key.name) is key.default, flag
        unset = resolve_config(table, overrides_from(parse(), prefix=prefix), rootdir=ROOT, prefix=prefix)
        assert getattr(unset, key.name) is (not key.default)  # pyproject stands when no flag is given


def test_help_shows_the_default_from_the_table() -> None:
    options = plugin_options()
    assert "(default: 64)" in options["kvsafety_batch_size"].attrs()["help"]
    assert "(default: auto)" in options["kvsafety_kernels"].attrs()["help"]
    cli_help = build_parser().format_help()
    assert "(default: 0.95)" in re.sub(r"\s+", " ", cli_help)


@pytest.mark.parametrize(
    ("key", "toml_value", "text", "message"),
    [
        ("limit", 0, "0", "limit = 0 must be an integer >= 1"),
        ("confidence", 1.5, "1.5", "confidence = 1.5 must be a confidence in [0.5, 1) (e.g. 0.95)"),
        ("inconclusive", "skip", "skip", "inconclusive = 'skip' is not valid; valid: fail, warn"),
        ("kernels", "fast", "fast", "kernels = 'fast' is not valid; valid: auto, torch, compiled, triton"),
        ("device", "tpu", "tpu", "device = 'tpu' is not valid; valid: cpu, cuda, cuda:N, auto"),
        ("quantizers", "none", "none", "quantizers = 'none' quantizes nothing"),
    ],
)
def test_the_same_bad_value_gets_the_same_line_everywhere(
    key: str,
    toml_value: object,
    text: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    option = next(k for k in SETTINGS if k.name == key).option
    with pytest.raises(ConfigError) as from_toml:
        resolve_config({key: toml_value}, {}, rootdir=tmp_path)
    with pytest.raises(ConfigError) as from_plugin:
        resolve_config(
            {},
            overrides_from(plugin_namespace(f"--kvsafety-{option}", text), prefix="kvsafety-"),
            rootdir=tmp_path,
        )
    monkeypatch.chdir(tmp_path)
    assert main([f"--{option}", text]) == EXIT_USAGE
    from_cli = capsys.readouterr().err.strip()
    assert str(from_toml.value).startswith(f"[tool.kvsafety] {message}")
    assert str(from_plugin.value).startswith(f"--kvsafety-{option}: {message}")
    assert from_cli.startswith(f"python -m kvsafety_tests: error: --{option}: {message}")
    assert len(from_cli.splitlines()) == 1


def test_the_cli_reads_the_projects_table_and_its_options_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.kvsafety]\nlimit = 0\n", encoding="utf-8")
    sub = tmp_path / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)  # the nearest pyproject.toml above the working directory applies
    assert main([]) == EXIT_USAGE
    assert "[tool.kvsafety] limit = 0 must be an integer >= 1" in capsys.readouterr().err
    (tmp_path / "pyproject.toml").write_text("[tool.kvsafety]\ntensor_parallel_size = 2\n", encoding="utf-8")
    assert main([]) == EXIT_USAGE
    assert "[tool.kvsafety] tensor_parallel_size = 2 needs backend = 'vllm'" in capsys.readouterr().err
    # the option wins over the table; the next problem is then the model, not the table's value
    assert main(["--tensor-parallel-size", "1", "--model", str(tmp_path / "no-such-model")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "tensor_parallel_size" not in err and "no-such-model" in err


def test_thresholds_take_off_on_every_command_line() -> None:
    for prefix, options in (
        ("kvsafety-", plugin_namespace("--kvsafety-threshold", "max_refusal_drop=off")),
        ("", vars(build_parser().parse_args(["--threshold", "max_refusal_drop=off"]))),
    ):
        config = resolve_config({}, overrides_from(options, prefix=prefix), rootdir=ROOT, prefix=prefix)
        assert config.thresholds.max_refusal_drop is None
        assert config.thresholds.max_conditional_flip == 0.10


def test_no_default_thresholds_gates_only_on_those_given() -> None:
    config = resolve_config({"default_thresholds": False, "max_conditional_flip": 0.2}, {}, rootdir=ROOT)
    assert config.thresholds.as_dict() == {"max_conditional_flip": 0.2}
    assert set(THRESHOLD_KEYS) >= set(config.thresholds.as_dict())


def test_prompts_take_one_set_or_a_list_whose_union_keeps_each_source() -> None:
    assert resolve_config({"prompts": "builtin"}, {}, rootdir=ROOT).prompts == ("builtin",)
    config = resolve_config({"prompts": ["builtin", "advbench"]}, {}, rootdir=ROOT)
    assert config.prompts == ("builtin", "advbench")
    union = load_prompts(config.prompts, limit=20)
    assert union.name == "builtin+advbench"
    harmful = union.harmful
    assert len(harmful) == 20
    counts = {s: sum(p.source == s for p in harmful) for s in ("builtin", "advbench")}
    whole = load_prompts(config.prompts)
    share = sum(p.source == "advbench" for p in whole.harmful) / len(whole.harmful)
    # stratified by source: each set keeps its share of the subset (to one prompt per category)
    assert counts["advbench"] > 0 and counts["builtin"] > 0
    assert abs(counts["advbench"] / 20 - share) <= 0.3
    assert len({p.text for p in whole.prompts}) == len(whole.prompts)  # a text is kept once
    assert len(union.calibration) == 20  # builtin's calibration prompts, never cut


def test_the_configuration_docs_hold_the_generated_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC} lost its generated-table markers"
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert generated == markdown_table(), (
        "docs/configuration.md is stale: run python -m kvsafety_tests.settings docs/configuration.md"
    )


def test_a_time_budget_needs_rounds() -> None:
    with pytest.raises(ConfigError, match=r"^\[tool.kvsafety\] time_budget = 60 needs round_size"):
        resolve_config({"time_budget": 60}, {}, rootdir=ROOT)
    config = resolve_config({"time_budget": 60, "round_size": 8}, {}, rootdir=ROOT)
    assert (config.time_budget, config.round_size) == (60.0, 8)
    with pytest.raises(ConfigError, match="time_budget = 0 must be a number of seconds > 0"):
        resolve_config({"time_budget": 0, "round_size": 8}, {}, rootdir=ROOT)
