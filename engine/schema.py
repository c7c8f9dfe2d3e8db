"""Typed dataclass sections built from plain dicts, with one bound-checking rule for every field; strict YAML.

This is the machinery behind :mod:`engine.config` (which holds the actual sections):

* :func:`num` declares an ``int`` / ``float`` field with a lower *and* an upper bound and a one-line doc;
  :func:`require_bounds` (run on the top-level config class at import) refuses a numeric field without both;
* :func:`build` checks a dict against a dataclass: unknown keys, types, bounds, finiteness of every float
  (``inf``, ``nan``, ``1e400`` are refused), UTF-8 text without control characters for every string;
* :func:`load_yaml` is ``yaml.safe_load`` that refuses a duplicate key and YAML 1.1's surprising integers
  (``010`` read as octal 8, ``1:30`` read as 90) instead of letting them win silently.

Every refusal is a :class:`ConfigError` whose message is one line naming the field, the value and what is
allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import field
from typing import Any, Literal

import yaml

from engine.errors import UserError

__all__ = ["TEXT_MAX", "ConfigError", "YamlProblem", "allowed_range", "build", "check_text", "describe_type",
           "doc", "load_yaml", "num", "require_bounds", "section", "show"]

TEXT_MAX = 4096  # characters in a path or name


class ConfigError(UserError, ValueError):
    """A config value is unknown, mistyped or out of range. The message is one line."""


def num(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None, doc: str = "") -> Any:
    """A numeric field with an allowed range (both ends required), checked by :func:`build`."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc})


def doc(default: Any, text: str) -> Any:
    """A non-numeric field with its one-line doc."""
    return field(default=default, metadata={"doc": text})


def section(factory: Any, text: str) -> Any:
    """A nested section (a dataclass built by ``factory``) with its one-line doc."""
    return field(default_factory=factory, metadata={"doc": text})


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong, _SHORT.maxlist, _SHORT.maxdict = 60, 60, 40, 4, 4


def show(value: Any) -> str:
    """A bounded repr for messages (a 4,000-digit integer or a huge nested list stays short)."""
    return _SHORT.repr(value)


def describe_type(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def allowed_range(meta: typing.Mapping[str, Any]) -> str:
    """``'>= 0 and <= 4294967295'`` from a field's metadata."""
    parts = [f"{s} {meta[k]!r}" for k, s in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
             if meta.get(k) is not None]
    return " and ".join(parts) if parts else "any finite number"


def check_text(path: str, value: str) -> None:
    """A string must be UTF-8 text (no undecodable bytes), free of control characters, and not absurdly long."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{path} = {show(value)}: not valid UTF-8 text (undecodable bytes); use a UTF-8 "
                          "path or name") from None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ConfigError(f"{path} = {show(value)}: contains a control character (NUL, newline, tab ...); "
                          "not allowed in a path or name")
    if len(value) > TEXT_MAX:
        raise ConfigError(f"{path}: {len(value)} characters; at most {TEXT_MAX} allowed")


def _coerce(path: str, value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path} = {show(value)}: expected a section (mapping of keys), got "
                              f"{type(value).__name__}")
        return build(tp, value, path)
    if origin is Literal:
        options = typing.get_args(tp)
        if isinstance(value, bool) and "on" in options and "off" in options:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as true/false
        if not any(type(value) is type(a) and value == a for a in options):
            raise ConfigError(f"{path} = {show(value)}: allowed values are {', '.join(repr(a) for a in options)}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation for {path}: {tp}")  # keep the schema simple
    given = value
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "2e-4" (no dot) as a string; accept it as the number it plainly is.
        with contextlib.suppress(ValueError):
            value = float(value)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported annotation for {path}: {tp}")
    if not ok:
        hint = ""
        if tp is int and isinstance(value, str) and re.fullmatch(r"[-+]?0[0-9_]+", value.strip()):
            hint = " (write it without the leading zero)"
        raise ConfigError(f"{path} = {show(value)}: expected {describe_type(tp)}{hint}")
    if tp is float:
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{path} = {show(given)}: must be a finite number {allowed_range(meta)}")
    if tp is str:
        check_text(path, value)
    return value


def _check_range(path: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    tests = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}
    for key, ok in tests.items():
        b = meta.get(key)
        if b is not None and not ok(value, b):
            raise ConfigError(f"{path} = {show(value)}: must be {allowed_range(meta)}")


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from ``data``: every key known, every value checked."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            name = str(key) if str(key).strip() else "(empty key)"
            where = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{show(where) if len(where) > 60 else where}: unknown key; allowed keys here are "
                              f"{', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        path = f"{prefix}.{name}" if prefix else name
        meta = fields[name].metadata
        kwargs[name] = _coerce(path, value, hints[name], meta)
        if isinstance(kwargs[name], (int, float)) and not isinstance(kwargs[name], bool):
            _check_range(path, kwargs[name], meta)
    return cls(**kwargs)


def require_bounds(cls: type, prefix: str = "") -> None:
    """Raise ``TypeError`` if any numeric field of ``cls`` (recursively) lacks a lower or an upper bound."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            require_bounds(tp, path)
        elif tp in (int, float):
            m = f.metadata
            if (m.get("ge") is None and m.get("gt") is None) or (m.get("le") is None and m.get("lt") is None):
                raise TypeError(f"config field {path} needs a lower and an upper bound (declare it with num())")


# ---------------------------------------------------------------------------------------------------------
# Reading YAML strictly


class YamlProblem(Exception):
    """A YAML construct we refuse (duplicate key, YAML 1.1 octal / base-60 integer); message without location."""


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and YAML 1.1's surprising integer forms."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise YamlProblem(f"key {show(key)} appears twice (lines {seen[key]} and "
                                      f"{key_node.start_mark.line + 1}); keep one")
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value).replace("_", "")
    body = text.lstrip("+-")
    if ":" in body:
        raise YamlProblem(f"{node.value}: YAML 1.1 reads this as a base-60 number; quote it or write the "
                          "decimal value")
    if len(body) > 1 and body[0] == "0" and body[1] not in "xXbB":
        octal = yaml.SafeLoader.construct_yaml_int(loader, node)
        decimal = int(body, 10) if body.isdigit() else octal
        raise YamlProblem(f"{node.value}: a leading zero makes YAML 1.1 read this as octal ({octal}); refused to "
                          f"avoid a silent surprise: write {decimal} without the zero")
    try:
        return int(yaml.SafeLoader.construct_yaml_int(loader, node))
    except ValueError as exc:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise YamlProblem(f"{show(node.value)}: {exc}") from None


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the refusals of :class:`_StrictLoader` (raised as :class:`YamlProblem`)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
