"""Typed TOML fields: a dataclass field declared with `opt` carries its default, doc line and bounds, and a TOML
table becomes that dataclass or one-line problems naming the key and what is allowed.

Generic on purpose (it knows no run spec), so the spec's sections, its loader and its cross checks share one
coercion and one way of printing a key or a value in a message.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import field
from typing import Any, Literal, Mapping

from harness.core.errors import Problem


def opt(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
        pattern: re.Pattern[str] | None = None, follows: str = "") -> Any:
    """A spec field: its default, its doc line for the README, and its bounds. `follows` names a sibling field
    whose value this one takes when the table omits it (a recipe default that is "the same as X", such as a
    constant learning rate: min_lr = lr); `default` is then only the dataclass's own default."""
    meta = {"doc": doc, "min": min, "max": max, "pattern": pattern, "follows": follows}
    if isinstance(default, (dict, list)):
        frozen = types.MappingProxyType(dict(default)) if isinstance(default, dict) else tuple(default)
        return field(default_factory=lambda: frozen, metadata=meta)
    return field(default=default, metadata=meta)


def plain(v: Any) -> Any:
    """A field's value as TOML/JSON data (spec.json, the README's defaults): tuples become lists, mappings dicts."""
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Mapping):
        return dict(v)
    return v


def unknown_keys(table: Mapping[str, Any], valid: tuple[str, ...], prefix: str, source: str,
                 problems: list[Problem]) -> None:
    for key in table:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
            problems.append(Problem(source, prefix + key_token(key), f"unknown key; {hint}"))


def key_token(key: Any) -> str:
    """A key as one printable token, quoted as TOML would when it is not bare (a quoted key may hold
    spaces, dots, line breaks or control characters, which would otherwise break the one-line message)."""
    text = str(key)
    if re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return text
    body = "".join("\\" + ch if ch in '"\\' else ch if ch.isprintable() else
                   (f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}") for ch in text)
    return f'"{body}"'


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else e.__class__.__name__


def build(cls: type, table: Mapping[str, Any], section: str, source: str, problems: list[Problem]) -> Any:
    """One section from its table; bad keys are appended to `problems` (and left at their defaults), so the
    user sees every problem of the file at once."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown_keys(table, tuple(fields), section + ".", source, problems)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            continue
        key = f"{section}.{name}"
        value, message = coerce(hints[name], table[name], f.metadata)
        if message:
            problems.append(Problem(source, key, f"= {show(table[name])}: {message}"))
        else:
            values[name] = value
    for name, f in fields.items():
        src = f.metadata.get("follows")
        if src and name not in table:
            values[name] = values.get(src, fields[src].default)
    return cls(**values)


def coerce(tp: Any, value: Any, meta: Mapping[str, Any]) -> tuple[Any, str]:
    """Returns (value, "") or (None, what is allowed)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value, ""
        return None, "must be one of " + ", ".join(repr(a) for a in allowed)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            return None, f"must be a list of {_type_name(item_tp)}"
        items = []
        for i, v in enumerate(value):
            item, message = coerce(item_tp, v, meta)
            if message:
                return None, f"item {i}: {message}"
            items.append(item)
        return tuple(items), ""
    if origin in (Mapping, dict, collections.abc.Mapping):
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            return None, "must be a table of strings"
        if any(_bad_chars(str(k)) or _bad_chars(v) for k, v in value.items()):
            return None, "keys and values must not contain NUL or line breaks"
        return types.MappingProxyType(dict(value)), ""
    return _scalar(tp, value, meta)


def _scalar(tp: Any, value: Any, meta: Mapping[str, Any]) -> tuple[Any, str]:
    if tp is bool:
        return (value, "") if isinstance(value, bool) else (None, "must be true or false")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        return None, "must be an integer" + _bounds(meta)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, "must be a finite number" + _bounds(meta)
        value = float(value)
    if tp is str:
        if not isinstance(value, str):
            return None, "must be a string"
        if _bad_chars(value):
            return None, "must not contain NUL or line breaks"
        pattern = meta.get("pattern")
        if pattern is not None and not pattern.match(value):
            return None, f"must match {pattern.pattern}"
        return value, ""
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return None, "out of range" + _bounds(meta)
    return value, ""


def _bad_chars(value: str) -> bool:
    """NUL cannot reach a process argument or a script; a line break would split one sbatch/shell line."""
    return "\x00" in value or "\n" in value or "\r" in value


def _bounds(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return ""
    return f" in [{lo}, {hi}]"


def _type_name(tp: Any) -> str:
    return {int: "integers", str: "strings", float: "numbers"}.get(tp, str(tp))


def show(value: Any) -> str:
    """A value as the user wrote it in TOML, cut to fit a one-line message."""
    text = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 60 else text[:57] + "..."


def type_str(tp: Any) -> str:
    """The type as a TOML user writes it: integer, string, array of integers, table of strings, or the choices."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "array of " + _type_name(typing.get_args(tp)[0])
    if origin in (Mapping, dict, collections.abc.Mapping):
        return "table of " + _type_name(typing.get_args(tp)[1])
    return {int: "integer", str: "string", float: "float", bool: "boolean"}.get(tp, str(tp))
