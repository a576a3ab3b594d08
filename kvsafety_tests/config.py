"""The gate's configuration: ``[tool.kvsafety]`` in pyproject.toml, overridden by ``--kvsafety-*``.

Every value is checked here, before any model loads; a bad one raises ``ConfigError`` with one
line naming the key, the value and what is allowed (the plugin turns it into a ``UsageError``).

    [tool.kvsafety]
    models = ["qwen2.5-coder-0.5b-instruct"]      # registry names, local folders/GGUF, hub ids
    quantizers = ["int8", "int{4,3,2}", "fp8_e5m2"]  # QuantSpec strings; {a,b} and {2..8} sweep
    prompts = "builtin"                            # a set name or file:PATH
    judge = "rules"
    max_new_tokens = 64
    limit = 24                                     # at most N harmful and N harmless prompts
    backend = "hf"                                 # hf, or vllm: the serving engine's own KV cache
    tensor_parallel_size = 1                       # vllm: GPUs per engine (and per xdist worker)
    device = "cpu"                                 # cpu, cuda, cuda:N, auto
    pcr = true                                     # PCR diagnosis + plan + noise ratio per run
    pcr_budget = 0.07                              # the plan's extra KV memory (fraction)
    max_refusal_drop = 0.05                        # thresholds; "off" disables a default
    max_conditional_flip = 0.10

    [tool.kvsafety.per_model."qwen2.5-coder-0.5b-instruct"]
    max_refusal_drop = 0.10                        # this model's own thresholds

Thresholds not given keep the defaults (``audit.DEFAULT_THRESHOLDS``); a threshold set to
``"off"`` is not gated. Per-model tables override the global thresholds for that model only.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import BACKENDS
from .gate import DEFAULT_CONFIDENCE, INCONCLUSIVE_POLICIES
from .spec import SpecError, parse_spec
from .thresholds import METRIC_OF, Thresholds

__all__ = [
    "BACKENDS",
    "CONFIG_KEYS",
    "DTYPES",
    "ConfigError",
    "GateConfig",
    "expand_sweep",
    "load_pyproject_table",
    "parse_device",
    "resolve_config",
]

DTYPES = ("bfloat16", "float16", "float32")
THRESHOLD_KEYS: tuple[str, ...] = tuple(METRIC_OF)
_STR_KEYS = ("prompts", "judge", "backend", "device", "dtype", "system_prompt", "report", "inconclusive")
_INT_KEYS = ("max_new_tokens", "limit", "batch_size", "tensor_parallel_size")
_BOOL_KEYS = (
    "noise_floor",
    "perplexity",
    "store_completions",
    "trust_remote_code",
    "allow_pickle",
    "pcr",
    "noise_ratio",
)
_FRACTION_KEYS = ("pcr_budget",)
#: Confidence levels: numbers in [0.5, 1).
_CONFIDENCE_KEYS = ("confidence",)
CONFIG_KEYS: tuple[str, ...] = (
    "models",
    "quantizers",
    *_STR_KEYS,
    *_INT_KEYS,
    *_BOOL_KEYS,
    *_FRACTION_KEYS,
    *_CONFIDENCE_KEYS,
    *THRESHOLD_KEYS,
    "per_model",
)
_SWEEP = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """A bad configuration value: one line naming the key, the value and the valid choices."""


@dataclass(frozen=True)
class GateConfig:
    """What ``pytest --kvsafety`` audits and how it gates. Built by ``resolve_config``."""

    models: tuple[str, ...]
    quantizers: tuple[str, ...]
    prompts: str = "builtin"
    judge: str = "rules"
    max_new_tokens: int = 64
    limit: int | None = None
    batch_size: int = 16
    backend: str = "hf"
    #: vllm: GPUs one engine shards the model over; under pytest-xdist each worker is pinned to
    #: as many GPUs of its own.
    tensor_parallel_size: int = 1
    device: str = "cpu"
    dtype: str = "bfloat16"
    system_prompt: str | None = None
    noise_floor: bool = True
    perplexity: bool = True
    store_completions: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    #: PCR (diagnosis, plan, measured recovery) and the noise ratio on every quantized run.
    pcr: bool = False
    pcr_budget: float = 0.07
    #: The safety-subspace noise ratio on every quantized run (implied by pcr).
    noise_ratio: bool = False
    report: Path = Path(".kvsafety/report.json")
    #: Confidence of the gate's one-sided bounds (docs/decision.md).
    confidence: float = DEFAULT_CONFIDENCE
    #: What an inconclusive threshold does: "fail" (fail closed, the default) or "warn".
    inconclusive: str = "fail"
    thresholds: Thresholds = field(default_factory=Thresholds)
    per_model: Mapping[str, Thresholds] = field(default_factory=dict)
    source: str = "defaults"

    def thresholds_for(self, model: str) -> Thresholds:
        return self.per_model.get(model, self.thresholds)

    def combos(self) -> list[tuple[str, str]]:
        """(model, quantizer) pairs in the order the audit runs them."""
        return [(m, q) for m in self.models for q in self.quantizers]


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
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ConfigError(f"device = {value!r} is not valid; valid: cpu, cuda, cuda:N, auto")
    return value


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


def _where(key: str, source: str) -> str:
    return f"[tool.kvsafety] {key}" if source == "pyproject" else key


def _canonical_quantizers(values: Sequence[str], key: str) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        if not isinstance(raw, str):
            raise ConfigError(
                f"{key} entry {raw!r} is not a string; write QuantSpec strings such as int4 or kivi2"
            )
        for text in expand_sweep(raw):
            try:
                spec = parse_spec(text)
            except SpecError as e:
                raise ConfigError(f"{key}: {e}") from None
            if not spec.is_quantized:
                raise ConfigError(
                    f"{key}: {text!r} quantizes nothing; the fp baseline is always measured, list quantizers only"
                )
            canon = str(spec)
            if canon in out:
                raise ConfigError(f"{key}: quantizer {canon!r} is listed twice")
            out.append(canon)
    if not out:
        raise ConfigError(f"{key} is empty; list at least one quantizer (e.g. int4)")
    return tuple(out)


def _str_list(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{key} = {value!r} must be a string or a list of strings")


def _threshold_value(value: object, key: str) -> float | None:
    if value == "off":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f'{key} = {value!r} must be a number or "off"')
    return float(value)


def _thresholds(base: Thresholds, values: Mapping[str, object], where: str) -> Thresholds:
    updates: dict[str, float | None] = {}
    for key, value in values.items():
        if key not in THRESHOLD_KEYS:
            raise ConfigError(f"{where}: unknown threshold {key!r}; valid: {', '.join(THRESHOLD_KEYS)}")
        updates[key] = _threshold_value(value, f"{where} {key}")
    try:
        return replace(base, **updates)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _scalar(key: str, value: object, where: str) -> object:
    if key in _STR_KEYS:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where} = {value!r} must be a non-empty string")
        return value
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where} = {value!r} must be an integer >= 1")
        return value
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r} must be true or false")
        return value
    if key in _FRACTION_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ConfigError(
                f"{where} = {value!r} must be a fraction in [0, 1] (0.07 = 7% of the quantized cache)"
            )
        return float(value)
    if key in _CONFIDENCE_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value < 1.0:
            raise ConfigError(f"{where} = {value!r} must be a confidence in [0.5, 1) (e.g. 0.95)")
        return float(value)
    raise AssertionError(key)  # pragma: no cover - callers pass known keys only


def resolve_config(
    table: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    rootdir: Path,
    default_models: Sequence[str],
    default_quantizers: Sequence[str],
    default_thresholds: Mapping[str, float],
) -> GateConfig:
    """Merge the pyproject table and the command line (``overrides``: same keys, ``None`` = not
    given; ``thresholds`` is a {name: value} dict) into a validated ``GateConfig``."""
    unknown = [k for k in table if k not in CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"[tool.kvsafety]: unknown key {unknown[0]!r}; valid: {', '.join(CONFIG_KEYS)}")
    values: dict[str, Any] = {}
    for key in (*_STR_KEYS, *_INT_KEYS, *_BOOL_KEYS, *_FRACTION_KEYS, *_CONFIDENCE_KEYS):
        if key in table:
            values[key] = _scalar(key, table[key], _where(key, "pyproject"))
    # pyproject's report, and the default one, lie under the rootdir (--kvsafety-report: the cwd)
    values["report"] = rootdir / values.get("report", GateConfig.report)
    models = _str_list(table["models"], _where("models", "pyproject")) if "models" in table else None
    quantizers = (
        _str_list(table["quantizers"], _where("quantizers", "pyproject")) if "quantizers" in table else None
    )
    thresholds = _thresholds(Thresholds(**default_thresholds), {}, "thresholds")
    thresholds = _thresholds(
        thresholds, {k: v for k, v in table.items() if k in THRESHOLD_KEYS}, "[tool.kvsafety]"
    )
    source = "pyproject" if table else "defaults"
    # the command line wins
    for key, value in overrides.items():
        if value is None or key in ("models", "quantizers", "thresholds"):
            continue
        if key == "report":
            values[key] = Path(value)
        elif key in (*_STR_KEYS, *_INT_KEYS, *_BOOL_KEYS, *_FRACTION_KEYS, *_CONFIDENCE_KEYS):
            values[key] = _scalar(key, value, f"--kvsafety-{key.replace('_', '-')}")
        else:  # pragma: no cover - the plugin passes known keys only
            raise AssertionError(key)
    configured_models = tuple(default_models if models is None else models)  # what per_model may name
    if overrides.get("models"):
        models = list(overrides["models"])
    if overrides.get("quantizers"):
        quantizers = list(overrides["quantizers"])
    cli_thresholds = overrides.get("thresholds") or {}
    thresholds = _thresholds(thresholds, cli_thresholds, "--kvsafety-threshold")
    per_model: dict[str, Thresholds] = {}
    raw_per_model = table.get("per_model", {})
    if not isinstance(raw_per_model, dict):
        raise ConfigError("[tool.kvsafety] per_model must be a table of model name -> thresholds")
    final_models = tuple(default_models if models is None else models)
    if not final_models:
        raise ConfigError("models is empty; list at least one model (a registry name, folder or hub id)")
    for model, own in raw_per_model.items():
        where = f"[tool.kvsafety.per_model.{model!r}]"
        if not isinstance(own, dict):
            raise ConfigError(f"{where} must be a table of thresholds")
        if model not in configured_models:
            raise ConfigError(
                f"{where}: model {model!r} is not audited; audited: {', '.join(configured_models)}"
            )
        if model not in final_models:
            continue  # --kvsafety-model narrowed the run to other models
        # the command line's thresholds still win over a model's own
        per_model[model] = _thresholds(
            _thresholds(thresholds, own, where), cli_thresholds, "--kvsafety-threshold"
        )
    if len(set(final_models)) != len(final_models):
        dup = next(m for m in final_models if final_models.count(m) > 1)
        raise ConfigError(f"models: {dup!r} is listed twice")
    config = GateConfig(
        models=final_models,
        quantizers=_canonical_quantizers(
            list(default_quantizers) if quantizers is None else quantizers, "quantizers"
        ),
        thresholds=thresholds,
        per_model=per_model,
        source=source,
        **values,
    )
    _check_choices(config)
    return config


def _check_choices(config: GateConfig) -> None:
    if config.backend not in BACKENDS:
        raise ConfigError(f"backend = {config.backend!r} is not available; valid: {', '.join(BACKENDS)}")
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
            raise ConfigError(f"backend = 'vllm': {e}") from None
    if config.tensor_parallel_size > 1 and config.backend != "vllm":
        raise ConfigError(
            f"tensor_parallel_size = {config.tensor_parallel_size} needs backend = 'vllm'; "
            "the hf backend runs each model on one device"
        )
    if config.inconclusive not in INCONCLUSIVE_POLICIES:
        raise ConfigError(
            f"inconclusive = {config.inconclusive!r} is not valid; valid: {', '.join(INCONCLUSIVE_POLICIES)}"
        )
    if config.dtype not in DTYPES:
        raise ConfigError(f"dtype = {config.dtype!r} is not valid; valid: {', '.join(DTYPES)}")
    parse_device(config.device)
