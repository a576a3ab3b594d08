"""The gate's configuration: ``[tool.kvsafety]`` in pyproject.toml, overridden by the command line.

The keys, their types, defaults and checks are the settings table (``settings.py``), shared by
``pytest --kvsafety`` and ``python -m kvsafety_tests``. Every value is checked here, before any
model loads; a bad one raises ``ConfigError`` with one line naming where it came from, the key, the
value and what is allowed (the plugin turns it into a ``UsageError``, the CLI into exit 2).

    [tool.kvsafety]
    models = ["qwen2.5-coder-0.5b-instruct"]      # registry names, local folders/GGUF, hub ids
    quantizers = ["int8", "int{4,3,2}", "fp8_e5m2"]  # QuantSpec strings; {a,b} and {2..8} sweep
    prompts = ["builtin", "advbench"]              # one set or several (their union)
    limit = 24                                     # at most N harmful and N harmless prompts
    max_refusal_drop = 0.05                        # thresholds; "off" disables a default

    [tool.kvsafety.per_model."qwen2.5-coder-0.5b-instruct"]
    max_refusal_drop = 0.10                        # this model's own thresholds

Thresholds not given keep the defaults (``settings.DEFAULT_THRESHOLDS``, unless
``default_thresholds = false``); a threshold set to ``"off"`` is not gated. Per-model tables
override the global thresholds for that model only; the command line's thresholds win over both.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .gate.thresholds import Thresholds
from .settings import (
    BACKENDS,
    DEFAULT_MODEL,
    DEFAULT_QUANTIZERS,
    DEFAULT_THRESHOLDS,
    DTYPES,
    SETTINGS,
    THRESHOLD_KEYS,
    GateConfig,
    SettingError,
    coerce,
    coerce_threshold,
    option_names,
)
from .spec import SpecError, parse_spec

__all__ = [
    "BACKENDS",
    "CONFIG_KEYS",
    "DTYPES",
    "ConfigError",
    "GateConfig",
    "canonical_quantizers",
    "expand_sweep",
    "find_pyproject",
    "load_pyproject_table",
    "parse_device",
    "resolve_config",
]

#: Every key ``[tool.kvsafety]`` accepts.
CONFIG_KEYS: tuple[str, ...] = (*(k.name for k in SETTINGS), *THRESHOLD_KEYS, "per_model")
_SWEEP = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")
PYPROJECT = "[tool.kvsafety]"


class ConfigError(SettingError):
    """A bad configuration value: one line naming the key, the value and the valid choices."""


def expand_sweep(text: str) -> list[str]:
    """``int{4,3,2}-channel`` -> int4-channel, int3-channel, int2-channel; ``int{2..8}`` -> int2 .. int8
    (in the order written: ``{8..2}`` counts down). Several braces expand as a product."""
    match = _SWEEP.search(text)
    if match is None:
        if "{" in text or "}" in text:
            raise ConfigError(
                f"quantizer sweep {text!r} has an unbalanced brace; write e.g. int{{8,4,2}} or int{{2..8}}"
            )
        return [text]
    body = match.group(1)
    rng = _RANGE.match(body)
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        step = 1 if b >= a else -1
        choices = [str(i) for i in range(a, b + step, step)]
    else:
        choices = [c.strip() for c in body.split(",")]
        if len(choices) < 2 or any(not c for c in choices):
            raise ConfigError(
                f"quantizer sweep {text!r}: {{{body}}} is not a list of choices; write e.g. int{{8,4,2}} or int{{2..8}}"
            )
    head, tail = text[: match.start()], text[match.end() :]
    return [expanded for c in choices for expanded in expand_sweep(f"{head}{c}{tail}")]


def parse_device(value: str) -> str:
    try:
        return str(coerce("device", value))
    except SettingError as e:
        raise ConfigError(str(e)) from None


def load_pyproject_table(path: Path) -> dict[str, Any]:
    """The ``[tool.kvsafety]`` table of ``path`` ({} when the file or the table is absent)."""
    if not path.is_file():
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    table = data.get("tool", {}).get("kvsafety", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.kvsafety] must be a table, not {type(table).__name__}")
    return table


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (the CLI's project), or None."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def canonical_quantizers(values: Sequence[str], where: str) -> tuple[str, ...]:
    """The quantizer specs, sweeps expanded, in canonical form; ConfigError (prefixed by ``where``)
    for a bad spec, one that quantizes nothing, or one listed twice."""
    out: list[str] = []
    for raw in values:
        for text in expand_sweep(raw):
            try:
                spec = parse_spec(text)
            except SpecError as e:
                raise ConfigError(_at(where, f"quantizers: {e}")) from None
            if not spec.is_quantized:
                raise ConfigError(
                    _at(where, f"quantizers = {text!r} quantizes nothing; the fp baseline is always ")
                    + "measured, list quantizers only (e.g. int4, fp8_e5m2)"
                )
            canon = str(spec)
            if canon in out:
                raise ConfigError(_at(where, f"quantizers: {canon!r} is listed twice"))
            out.append(canon)
    return tuple(out)


def _thresholds(base: Thresholds, values: Mapping[str, object], where: str) -> Thresholds:
    """``base`` with ``values`` set; from the command line (``where`` an option) values are text."""
    updates: dict[str, float | None] = {}
    for key, value in values.items():
        try:
            updates[key] = coerce_threshold(key, value, text=where.startswith("--"))
        except SettingError as e:
            raise ConfigError(_at(where, str(e))) from None
    return replace(base, **updates)


def _at(where: str, message: str) -> str:
    """``[tool.kvsafety] limit = 0 ...`` or ``--kvsafety-limit: limit = 0 ...``."""
    return f"{where} {message}" if where.startswith("[") else f"{where}: {message}"


def _coerced(key: str, value: object, where: str, *, text: bool = False) -> Any:
    try:
        return coerce(key, value, text=text)
    except SettingError as e:
        raise ConfigError(_at(where, str(e))) from None


def resolve_config(
    table: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    rootdir: Path,
    prefix: str = "kvsafety-",
    default_models: Sequence[str] = (DEFAULT_MODEL,),
    default_quantizers: Sequence[str] = DEFAULT_QUANTIZERS,
    default_thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
) -> GateConfig:
    """Merge the pyproject table and the command line (``overrides``: key -> value or text,
    ``None`` = not given; ``thresholds``: {name: value or text}) into a validated ``GateConfig``.
    ``prefix``: the command line's option prefix, for naming where a bad value came from."""
    unknown = [k for k in table if k not in CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"{PYPROJECT} unknown key {unknown[0]!r}; valid: {', '.join(CONFIG_KEYS)}")
    flags = option_names(prefix)
    values: dict[str, Any] = {}
    for key in SETTINGS:
        if key.name in table:
            values[key.name] = _coerced(key.name, table[key.name], PYPROJECT)
    # pyproject's report, and the default one, lie under the rootdir (the command line's: the cwd)
    values["report"] = rootdir / values.get("report", GateConfig.report)
    configured_models = tuple(values.get("models", default_models))  # what per_model may name
    cli: dict[str, Any] = {}
    for key in SETTINGS:
        value = overrides.get(key.name)
        if value is not None:
            cli[key.name] = _coerced(key.name, value, flags[key.name], text=True)
    values.update(cli)
    use_defaults = values.get("default_thresholds", True)
    thresholds = Thresholds(**default_thresholds) if use_defaults else Thresholds()
    thresholds = _thresholds(thresholds, {k: v for k, v in table.items() if k in THRESHOLD_KEYS}, PYPROJECT)
    cli_thresholds = overrides.get("thresholds") or {}
    thresholds = _thresholds(thresholds, cli_thresholds, flags["thresholds"])
    models = values.pop("models", tuple(default_models))
    where_models = flags["models"] if "models" in cli else PYPROJECT
    if len(set(models)) != len(models):
        dup = next(m for m in models if models.count(m) > 1)
        raise ConfigError(_at(where_models, f"models: {dup!r} is listed twice"))
    where_q = flags["quantizers"] if "quantizers" in cli else PYPROJECT
    quantizers = canonical_quantizers(values.pop("quantizers", tuple(default_quantizers)), where_q)
    per_model: dict[str, Thresholds] = {}
    raw_per_model = table.get("per_model", {})
    if not isinstance(raw_per_model, dict):
        raise ConfigError(f"{PYPROJECT} per_model must be a table of model name -> thresholds")
    for model, own in raw_per_model.items():
        where = f"[tool.kvsafety.per_model.{model!r}]"
        if not isinstance(own, dict):
            raise ConfigError(f"{where} must be a table of thresholds")
        if model not in configured_models:
            raise ConfigError(
                f"{where}: model {model!r} is not audited; audited: {', '.join(configured_models)}"
            )
        if model not in models:
            continue  # the command line narrowed the run to other models
        # the command line's thresholds still win over a model's own
        per_model[model] = _thresholds(
            _thresholds(thresholds, own, where), cli_thresholds, flags["thresholds"]
        )
    config = GateConfig(
        models=models,
        quantizers=quantizers,
        thresholds=thresholds,
        per_model=per_model,
        source="pyproject" if table else "defaults",
        **values,
    )
    _check_choices(config, where=lambda key: flags[key] if key in cli else PYPROJECT)
    return config


def _check_choices(config: GateConfig, where: Any = lambda key: PYPROJECT) -> None:
    """What no single key can check alone."""
    if config.time_budget is not None and config.round_size is None:
        raise ConfigError(
            _at(where("time_budget"), f"time_budget = {config.time_budget:g} needs round_size: ")
            + "only a sequential audit stops between rounds (set round_size = N, e.g. 16)"
        )
    if config.kernels != "auto" and config.backend == "vllm":
        raise ConfigError(
            _at(where("kernels"), f"kernels = {config.kernels!r} needs backend = 'hf'; the vllm backend ")
            + "quantizes with the engine's own kernels (valid with vllm: auto)"
        )
    if config.backend == "vllm":
        from .backends import check_vllm_settings

        try:
            check_vllm_settings(
                config.quantizers,
                pcr=config.pcr,
                noise_ratio=config.noise_ratio,
                thresholds=[config.thresholds, *config.per_model.values()],
            )
        except ValueError as e:
            raise ConfigError(_at(where("backend"), f"backend = 'vllm': {e}")) from None
    if config.tensor_parallel_size > 1 and config.backend != "vllm":
        raise ConfigError(
            _at(where("tensor_parallel_size"), f"tensor_parallel_size = {config.tensor_parallel_size} needs ")
            + "backend = 'vllm'; the hf backend runs each model on one device"
        )
    if config.backend == "hf" and config.device != "auto":
        from .kernels import resolve_kernels

        try:
            resolve_kernels(config.kernels, config.device)
        except ValueError as e:
            raise ConfigError(_at(where("kernels"), str(e))) from None
