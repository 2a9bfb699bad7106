"""Typed configuration: frozen dataclasses loaded from plain data (YAML, JSON), each constraint beside its field.

A field declares its rule with `setting(default, check=...)`; a rule that ties two fields together is a
`relations()` method of the dataclass naming the key it blames. `load()` turns a mapping into the dataclass,
checking types strictly (no "3" for 3, no 1 for true) and reporting the first problem as one line:
`SOURCE: key.path: what is wrong and what would be valid`. The agent's configuration file and the model's
`model.json` both go through here, so both speak the same way about a bad value.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .errors import BadInputError

T = TypeVar("T")
# A rule: the value in, an explanation of what is wrong out (None when the value is fine).
Check = Callable[[Any], "str | None"]


class FieldError(ValueError):
    """A rule broken by one field; `key` is relative to the dataclass that raised it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def setting(default: Any = dataclasses.MISSING, *, check: Check | None = None, factory: Any = None, **kw) -> Any:
    """A dataclass field with its rule beside it. `factory` builds a mutable or nested default."""
    metadata = {"check": check} if check else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


class Checked:
    """Mixin: every field's rule and the dataclass's `relations()` run when it is constructed, whether it
    was loaded from a file or built in code."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is not None and value is not None:
                problem = check(value)
                if problem:
                    raise FieldError(f.name, problem)
        for key, problem in self.relations():
            raise FieldError(key, problem)

    def relations(self) -> Iterable[tuple[str, str]]:
        """(key, problem) for each rule between fields that is broken."""
        return ()


# ------------------------------------------------------------------------------------------ rules


def between(lo: float, hi: float, what: str = "") -> Check:
    return lambda v: None if lo <= v <= hi else f"{v} {what or f'must be between {lo:g} and {hi:g}'}".strip()


def at_least(lo: float, hint: str = "") -> Check:
    return lambda v: None if v >= lo else f"{v} must be at least {lo:g}{hint}"


def positive(v: float) -> str | None:
    return None if v > 0 else f"{v} must be positive"


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else f"{v!r} is not one of {', '.join(map(str, choices))}"


def rate(v: float) -> str | None:
    return None if 0.0 < v < 1.0 else f"{v} is not a rate between 0 and 1 (e.g. 0.01)"


# Names that become MQTT topic levels, file names and URL path parts: no separators, no wildcards.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "letters, digits, '_', '.', '-', at most 64, starting with a letter or digit"


def valid_name(v: str) -> str | None:
    return None if NAME_PATTERN.match(v) else f"{v!r} is not a valid name ({NAME_RULE})"


# ------------------------------------------------------------------------------------------ loading


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", str: "a string", int: "an integer", float: "a number", bool: "true/false"}.get(
        tp, str(tp)
    )


class _Loader:
    def __init__(self, source: str, error: type[BadInputError]):
        self.source = source
        self.error = error

    def fail(self, where: str, message: str) -> BadInputError:
        return self.error(f"{self.source}: {where}: {message}")

    def convert(self, value: Any, tp: Any, where: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            for a in args:
                if a is type(None):
                    continue
                try:
                    return self.convert(value, a, where)
                except self.error:
                    continue
            raise self.fail(where, f"{value!r} is not {type_name(tp)}")
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise self.fail(where, f"expected {type_name(tp)}, got {value!r}")
            item = typing.get_args(tp)[0]
            items = [self.convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, where)
        return self.scalar(value, tp, where)

    def scalar(self, value: Any, tp: Any, where: str) -> Any:
        if tp is bool and isinstance(value, bool):
            return value
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is str and isinstance(value, str):
            return value
        if tp is str and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a device index written as a number
        if tp is Any:
            return value
        raise self.fail(where, f"{value!r} is not {type_name(tp)}")

    def build(self, cls: type[T], data: Any, where: str) -> T:
        prefix = f"{where}." if where else ""
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise self.fail(where or "top level", f"expected a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(known)})"
                raise self.fail(f"{prefix}{key}", f"unknown key{hint}")
        values = {}
        for key, f in known.items():
            if key in data:
                values[key] = self.convert(data[key], hints[key], f"{prefix}{key}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.fail(f"{prefix}{key}", "required key is missing")
        try:
            return cls(**values)
        except FieldError as exc:
            raise self.fail(f"{prefix}{exc.key}", exc.message) from None


def load(cls: type[T], data: Any, source: str, error: type[BadInputError] = BadInputError) -> T:
    """`data` (a mapping) as a `cls`, or `error` with one line naming `source` and the key at fault."""
    return _Loader(source, error).build(cls, data, "")


def to_plain(obj: Any) -> Any:
    """A dataclass as plain JSON-ready data (tuples become lists), the inverse of `load`."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
