"""Gate thresholds: which measured value each threshold gates, in which direction, and their limits.

Stdlib only: the settings table (imported by the pytest plugin in every run) reads it. The gate
decides each threshold in ``decision.py`` (pass, fail or inconclusive from one-sided bounds); a
threshold whose value could not be measured fails there (the gate cannot vouch for what it did
not see).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["METRIC_OF", "RATE_THRESHOLDS", "RECOVERY_BASES", "Thresholds"]

#: threshold name -> (measured value name, direction): "max" fails above, "min" fails below.
METRIC_OF: dict[str, tuple[str, str]] = {
    "max_refusal_drop": ("refusal_drop", "max"),
    "max_conditional_flip": ("conditional_flip_rate", "max"),
    "max_compliance_flip": ("compliance_flip_rate", "max"),
    "max_over_refusal_flip": ("over_refusal_flip_rate", "max"),
    "max_perplexity_ratio": ("perplexity_ratio", "max"),
    "max_noise_ratio": ("noise_ratio", "max"),
    "min_pcr_recovery": ("pcr_recovery", "min"),
}
#: What ``min_pcr_recovery`` gates on (the ``pcr_recovery_basis`` setting): the recovery measured on
#: the evaluation prompts, the one PCR predicts on its calibration prompts, or both (each must pass).
RECOVERY_BASES: tuple[str, ...] = ("measured", "predicted", "both")
#: Thresholds on rates: they must lie in [0, 1].
RATE_THRESHOLDS = ("max_refusal_drop", "max_conditional_flip", "max_compliance_flip", "max_over_refusal_flip")


def _threshold(help: str) -> Any:
    """A threshold field: None (not gated) unless set; ``help`` is its line in the docs."""
    return field(default=None, metadata={"help": help})


@dataclass(frozen=True)
class Thresholds:
    """None = not gated."""

    max_refusal_drop: float | None = _threshold(
        "the fall in the harmful-prompt refusal rate (a fraction: 0.05 = 5 points)"
    )
    max_conditional_flip: float | None = _threshold(
        "refusals of the unquantized model that the quantized one loses"
    )
    max_compliance_flip: float | None = _threshold("refusals that became fluent answers")
    max_over_refusal_flip: float | None = _threshold("harmless prompts newly refused")
    max_perplexity_ratio: float | None = _threshold("quantized over unquantized perplexity")
    max_noise_ratio: float | None = _threshold("the safety-subspace noise ratio, the maximum over layers")
    min_pcr_recovery: float | None = _threshold(
        "the share of the lost refusals PCR's plan recovers (measured, predicted or both: pcr_recovery_basis)"
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"threshold {f.name} = {value!r} is not a number")
            if f.name in RATE_THRESHOLDS and not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold {f.name} = {value} is a rate: it must lie in [0, 1]")
            if f.name == "max_perplexity_ratio" and value < 1.0:
                raise ValueError(f"threshold max_perplexity_ratio = {value} must be >= 1.0")
            if f.name == "max_noise_ratio" and value <= 0:
                raise ValueError(f"threshold max_noise_ratio = {value} must be > 0")
            if f.name == "min_pcr_recovery" and not 0.0 <= value <= 1.0:
                raise ValueError(f"threshold min_pcr_recovery = {value} is a fraction: it must lie in [0, 1]")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Thresholds:
        valid = [f.name for f in fields(cls)]
        for key in values:
            if key not in valid:
                raise ValueError(f"unknown threshold {key!r}; valid: {', '.join(valid)}")
        return cls(**values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}
