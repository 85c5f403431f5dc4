"""`key=value` overrides after the spec file (`harness submit run.toml finetune.lr=3e-4`), and the effective
spec they make, written back as TOML.

An override's value is TOML (`3e-4`, `true`, `[1, 2]`, `"a b"`); a value that is not TOML is taken as the string
it is (`infer.inputs=/data/clips`), so the field's own check names what is allowed (`finetune.lr=abc: must be a
finite number`). Each override is checked by the same field coercion as the file, with the override itself named
in the message, then set in the raw table before the spec is built, so every relation between fields is checked
on the effective spec.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import sys
import typing
from typing import Any, Mapping

from harness.core.errors import Problem, SpecError
from harness.core.fields import build, key_token, show, unknown_keys
from harness.core.sections import SECTIONS, RunSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Raw = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Override:
    text: str
    """As the user wrote it: `finetune.lr=3e-4`."""
    section: str
    key: str
    value: Any


def toml_value(text: str) -> Any:
    """`text` as a TOML value, or the string itself where it is not one."""
    try:
        return tomllib.loads(f"x = {text}")["x"]
    except (ValueError, RecursionError):
        return text


def parse(text: str) -> Override:
    """`section.key=value`; a malformed one is a one-line SpecError naming it."""
    dotted, eq, value = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not eq or not dot or not section or not key or "." in key:
        raise SpecError(Problem(f"<override> {text}", "", MALFORMED))
    return Override(text, section, key, toml_value(value.strip()))


def check(o: Override) -> list[Problem]:
    """The override alone against its field: unknown section or key (with the closest one), or a bad value."""
    where, problems = f"<override> {o.text}", list[Problem]()
    if o.section not in SECTIONS:
        unknown_keys({o.section: None}, SECTIONS, "", where, problems)
        return problems
    cls = typing.get_type_hints(RunSpec)[o.section]
    build(cls, {o.key: o.value}, o.section, where, problems)
    shown = f"= {show(o.value)}: "  # the value is in the override as written: say only what is allowed
    return [Problem(p.file, "", p.message[len(shown):]) if p.message.startswith(shown) else p for p in problems]


def apply(raw: Mapping[str, Any], texts: tuple[str, ...] | list[str]) -> Raw:
    """`raw` (the file's tables) with every override set; all bad overrides reported at once."""
    parsed, problems, first = list[Override](), list[Problem](), dict[tuple[str, str], str]()
    for text in texts:
        try:
            o = parse(text)
        except SpecError as e:
            problems += e.problems
            continue
        problems += check(o)
        if (o.section, o.key) in first:  # the last would win unseen
            problems.append(Problem(f"<override> {text}", "", f"sets {o.section}.{o.key} again (after "
                                                               f"{first[o.section, o.key]}): give each key once"))
        first.setdefault((o.section, o.key), text)
        parsed.append(o)
    if problems:
        raise SpecError(problems)
    out: Raw = copy.deepcopy(dict(raw))
    for o in parsed:
        table = out.setdefault(o.section, {})
        if not isinstance(table, dict):
            raise SpecError(Problem(f"<override> {o.text}", "", f"[{o.section}] in the file is not a table"))
        table[o.key] = o.value
    return out


def set_dotted(raw: Mapping[str, Any], values: Mapping[str, Any]) -> Raw:
    """A copy of `raw` with `section.key` values set (a sweep member's)."""
    out: Raw = copy.deepcopy(dict(raw))
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def dumps(raw: Mapping[str, Any], header: str = "") -> str:
    """The tables as TOML text (spec.toml of a run made with overrides or a sweep): only the keys the user set,
    so a value that follows another when omitted (finetune.min_lr = lr) still does."""
    lines = [f"# {_printable(line)}" for line in header.splitlines()]
    for name, table in raw.items():
        if not isinstance(table, Mapping):
            continue
        lines += ["", f"[{key_token(name)}]"]
        lines += [f"{key_token(k)} = {_value(v)}" for k, v in table.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _printable(text: str) -> str:
    """A comment line's text: TOML allows no control character but tab in a comment."""
    return "".join(c if c == "\t" or (ord(c) >= 0x20 and ord(c) != 0x7F) else f"\\x{ord(c):02x}" for c in text)


def toml_text(v: Any) -> str:
    """One value as TOML writes it (a member's label: `finetune.lr=0.001`)."""
    return _value(v)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):  # JSON escapes the controls below 0x20; TOML refuses DEL raw as well
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{key_token(k)} = {_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


MALFORMED = ("must be section.key=value, e.g. finetune.lr=3e-4 (a table's key goes in the table's value: "
             "'container.env={MY=\"1\"}')")
OVERRIDE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+=")
"""`section.key=value` after the spec file(s): an override, not a file."""


def split_args(args: list[str], *, files: bool) -> tuple[list[str], list[str]]:
    """(spec files, overrides) of a command's positional arguments. Where no file may come (after plan's spec),
    and for an `a=b` that names no file (`finetune=1`), a non-override is named as a mistyped override at once."""
    given = [a for a in args if not OVERRIDE.match(a)]
    odd = [a for a in given if not files or ("=" in a and not os.path.exists(a))]
    if odd:
        raise SpecError([Problem(f"<override> {a}", "", MALFORMED) for a in odd])
    return given, [a for a in args if OVERRIDE.match(a)]
