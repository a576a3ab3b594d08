"""The report's JSON codec, derived from the dataclasses: no field list is kept beside them.

``decode(cls, value, where)`` reads a decoded JSON value into the dataclass ``cls``: the type of
each field comes from its type hint (``typing.get_type_hints``), nested dataclasses, tuples,
mappings and ``X | None`` included; ``encode`` writes any dataclass back. A field named ``extra``
holds the keys a JSON object has beyond the fields: read, kept, and written back unchanged.

What a type hint cannot say is in the field's metadata, built by ``rules``:

- ``check``: a named value rule (``CHECKS``: rate, difference, finite, positive, ...);
- ``choices``: the valid strings;
- ``each``: the rule applies to every element of a tuple or every value of a mapping;
- ``required``: the key must be in a JSON object although the field has a default (the fields
  docs/report.md lists; a field without a default is always required).

The rules run in ``check_fields``, which each dataclass calls from ``__post_init__``: a value
built in code is held to the same rules as one read from a file. Every problem is a ReportError,
one line naming the field (its JSON path, or ``"run conditional_flip_rate"`` for a rule) and the
bad value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from ..errors import KvSafetyError

__all__ = ["CHECKS", "ReportError", "check_choice", "check_fields", "decode", "encode", "rules"]

T = TypeVar("T")
Decoder = Callable[[Any, str], Any]

#: The field holding a JSON object's unknown keys.
EXTRA = "extra"


class ReportError(KvSafetyError):
    """A report that is invalid, unreadable or of another schema. One line, naming what is wrong."""


# --- rules: field metadata ----------------------------------------------------------------------


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _interval(value: object) -> bool:
    if not (isinstance(value, tuple) and len(value) == 2 and all(map(_number, value))):
        return False
    low, high = value
    return bool(0.0 <= low <= high <= 1.0)


def _k_of_n(value: object) -> bool:
    if not (isinstance(value, tuple) and len(value) == 2 and all(map(_integer, value))):
        return False
    k, n = value
    return bool(0 <= k <= n)


#: Each named value rule: whether a value keeps it, and what it expects (for the message).
CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "rate": (lambda v: _number(v) and 0.0 <= v <= 1.0, "a finite number in [0, 1]"),
    "difference": (lambda v: _number(v) and -1.0 <= v <= 1.0, "a finite number in [-1, 1]"),
    "finite": (_number, "a finite number"),
    "positive": (lambda v: _number(v) and v > 0, "a positive finite number"),
    "non_negative": (lambda v: _number(v) and v >= 0, "a non-negative finite number"),
    "count": (lambda v: _integer(v) and v >= 0, "a non-negative integer"),
    "confidence": (lambda v: _number(v) and 0.5 <= v < 1.0, "a number in [0.5, 1)"),
    "interval": (_interval, "a (low, high) pair with 0 <= low <= high <= 1"),
    "k_of_n": (_k_of_n, "(k, n) with 0 <= k <= n"),
    "name": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "sha256": (
        lambda v: isinstance(v, str) and len(v) == 64 and all(ch in "0123456789abcdef" for ch in v),
        "64 lowercase hex digits",
    ),
}


def rules(
    check: str | None = None,
    *,
    choices: Sequence[str] | None = None,
    each: bool = False,
    required: bool = False,
) -> dict[str, Any]:
    """A field's metadata: ``field(default=None, metadata=rules("rate", required=True))``."""
    if check is not None and check not in CHECKS:
        raise ValueError(f"no check called {check!r}; checks: {', '.join(CHECKS)}")
    if each and check is None and choices is None:
        raise ValueError("each=True needs a check or choices to apply to each element")
    out: dict[str, Any] = {"required": required, "each": each}
    if check is not None:
        out["check"] = check
    if choices is not None:
        out["choices"] = tuple(choices)
    return out


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """ReportError unless ``value`` is one of ``choices``: "run verdict is 'ok'; valid: pass, ..."."""
    if value not in choices:
        raise ReportError(f"{name} is {value!r}; valid: {', '.join(choices)}")


# --- the fields of a dataclass, with their type hints --------------------------------------------


class _Field(NamedTuple):
    name: str
    hint: Any
    required: bool
    metadata: Mapping[str, Any]


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type) -> tuple[_Field, ...]:
    """``cls``'s fields with their resolved type hints (resolved once: the first instance)."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple(
            _Field(
                f.name,
                hints[f.name],
                f.metadata.get("required", False)
                or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING),
                f.metadata,
            )
            for f in dataclasses.fields(cls)
        )
    return _FIELDS[cls]


def _has_extra(cls: type) -> bool:
    return any(f.name == EXTRA for f in _fields(cls))


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); any other hint -> (hint, False)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return (args[1] if args[0] is type(None) else args[0]), True
    return hint, False


def _elements(name: str, value: Any, hint: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """The element hint of a mapping or ``tuple[X, ...]`` hint, and ``value``'s named elements."""
    inner, _ = _unwrap_optional(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ReportError(f"{name} is {value!r}; expected a mapping")
        return args[1], [(f"{name}[{k!r}]", v) for k, v in value.items()]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, tuple | list):
            raise ReportError(f"{name} is {value!r}; expected a list")
        return args[0], [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(f"each=True on a field of type {hint!r}: expected a mapping or a tuple[X, ...]")


# --- checking ----------------------------------------------------------------------------------------


def _check_value(name: str, value: Any, hint: Any, metadata: Mapping[str, Any]) -> None:
    _, nullable = _unwrap_optional(hint)
    if value is None and nullable:
        return
    choices = metadata.get("choices")
    if choices is not None:
        check_choice(name, value, choices)
    check = metadata.get("check")
    if check is not None:
        keeps, expected = CHECKS[check]
        if not keeps(value):
            raise ReportError(f"{name} is {value!r}; expected {expected}{' or null' if nullable else ''}")


def check_fields(obj: Any, prefix: str) -> None:
    """Apply every field's rules to the dataclass ``obj``; ReportError names ``prefix + field``.

    Also refuses an ``extra`` that repeats a field (it would shadow the field when written).
    """
    cls = type(obj)
    for f in _fields(cls):
        if "check" not in f.metadata and "choices" not in f.metadata:
            continue
        value, name = getattr(obj, f.name), prefix + f.name
        if not f.metadata["each"]:
            _check_value(name, value, f.hint, f.metadata)
            continue
        if value is None and _unwrap_optional(f.hint)[1]:
            continue
        element, items = _elements(name, value, f.hint)
        for item_name, item in items:
            _check_value(item_name, item, element, f.metadata)
    if _has_extra(cls):
        clash = sorted(set(getattr(obj, EXTRA)) & {f.name for f in _fields(cls)})
        if clash:
            raise ReportError(
                f"{cls.__name__}.extra repeats the field(s) {', '.join(clash)}; set them directly"
            )


# --- decoding ----------------------------------------------------------------------------------------


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _fail(where: str, expected: str, value: Any) -> ReportError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ReportError(_at(where, f"expected {expected}, got {shown}"))


def _scalar(accepts: Callable[[Any], bool], expected: str) -> Decoder:
    def decode_scalar(value: Any, where: str) -> Any:
        if not accepts(value):
            raise _fail(where, expected, value)
        return value  # ints stay ints in float fields: round trips are exact

    return decode_scalar


_SCALARS: dict[Any, Decoder] = {
    str: _scalar(lambda v: isinstance(v, str), "a string"),
    int: _scalar(_integer, "an integer"),
    float: _scalar(lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    bool: _scalar(lambda v: isinstance(v, bool), "true or false"),
}


@functools.cache
def _decoder(hint: Any) -> Decoder:
    """The decoder of a JSON value into the type ``hint``."""
    if hint is Any:
        return lambda value, where: value
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return functools.partial(decode, hint)
    inner, nullable = _unwrap_optional(hint)
    if nullable:
        decode_inner = _decoder(inner)
        return lambda value, where: None if value is None else decode_inner(value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])

        def decode_tuple(value: Any, where: str) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise _fail(where, "a list", value)
            return tuple(item(v, f"{where}[{i}]") for i, v in enumerate(value))

        return decode_tuple
    if origin is tuple:
        items = [_decoder(a) for a in args]
        expected = "a [low, high] pair" if len(items) == 2 else f"a list of {len(items)} values"

        def decode_fixed(value: Any, where: str) -> tuple[Any, ...]:
            if not isinstance(value, list) or len(value) != len(items):
                raise _fail(where, expected, value)
            return tuple(d(v, f"{where}[{i}]") for i, (d, v) in enumerate(zip(items, value, strict=True)))

        return decode_fixed
    if origin in (Mapping, dict) and args[0] is str:
        values = _decoder(args[1])

        def decode_mapping(value: Any, where: str) -> dict[str, Any]:
            if not isinstance(value, dict):
                raise _fail(where, "an object", value)
            return {k: values(v, f"{where}[{k!r}]") for k, v in value.items()}

        return decode_mapping
    raise TypeError(f"no JSON decoder for the type {hint!r}")


def decode(cls: type[T], value: Any, where: str = "") -> T:
    """The dataclass ``cls`` read from the decoded JSON ``value``; ``where`` is its JSON path.

    Every required key must be there; each value must have its field's type; unknown keys go to
    ``extra`` (dropped when ``cls`` has none). The dataclass's own checks run as it is built; a
    ValueError they raise becomes a ReportError prefixed with ``where``.
    """
    if not isinstance(value, dict):
        raise _fail(where, "an object", value)
    fields = {f.name: f for f in _fields(cls) if f.name != EXTRA}
    missing = [name for name, f in fields.items() if f.required and name not in value]
    if missing:
        raise ReportError(_at(where, f"missing field(s) {', '.join(missing)}"))
    kwargs = {
        k: _decoder(fields[k].hint)(v, f"{where}.{k}" if where else k)
        for k, v in value.items()
        if k in fields
    }
    if _has_extra(cls):
        kwargs[EXTRA] = {k: v for k, v in value.items() if k not in fields}
    try:
        return cls(**kwargs)
    except ValueError as e:  # ReportError, or a dataclass's own ValueError (gate.ThresholdOutcome)
        raise ReportError(_at(where, str(e))) from None


# --- encoding ----------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """Plain JSON values: a dataclass as an object in field order, its ``extra`` keys after."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != EXTRA}
        out.update(getattr(value, EXTRA, {}))
        return out
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    return value
