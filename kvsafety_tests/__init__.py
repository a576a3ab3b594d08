"""pytest-kvsafety: a release gate on the safety of quantized KV caches.

Importing this package is cheap: nothing heavy (torch, triton, transformers, vllm) is imported
until a kernel or the audit is used.
"""

from .spec import (
    Fp8Scheme,
    Granularity,
    IntScheme,
    KVScheme,
    NoQuant,
    QuantSpec,
    SpecError,
    parse_spec,
)

__version__ = "0.1.0"

__all__ = [
    "Fp8Scheme",
    "Granularity",
    "IntScheme",
    "KVScheme",
    "NoQuant",
    "QuantSpec",
    "SpecError",
    "__version__",
    "parse_spec",
]
