"""A spec file plus `key=value` overrides becomes its members: one RunSpec for a plain spec, one per combination
for a `[sweep]` table (`"finetune.lr" = [1e-4, 3e-4]`; `mode = "grid"`, every combination, or `"zip"`, the i-th
value of every list together).

Pure: the tables are read by the caller (`harness.core.spec.read_table`). Every member is an ordinary spec, built
and checked by `harness.core.spec.from_dict` with the member named in each problem
(`run.toml: sweep member 2 (finetune.lr=20.0): finetune.lr = 20.0: out of range in [0.0, 10.0]`), so a sweep
is exactly as strict as the file it expands.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from harness.core import overrides
from harness.core import spec as spec_mod
from harness.core.errors import Problem, SpecError
from harness.core.fields import show
from harness.core.sections import RUN_NAME_MAX

Mode = Literal["grid", "zip"]
MODES: tuple[Mode, ...] = ("grid", "zip")


@dataclass(frozen=True)
class Member:
    index: int
    """1-based, in expansion order (grid: the last key varies fastest)."""
    varied: tuple[tuple[str, Any], ...]
    """(dotted key, value) this member sets; () for a plain spec."""
    raw: Mapping[str, Any]
    """The effective tables: the file's, with the overrides and this member's values set."""
    spec: spec_mod.RunSpec

    @property
    def name(self) -> str:
        return self.spec.run.name

    @property
    def label(self) -> str:
        return label(self.index, self.varied)


def label(index: int, varied: tuple[tuple[str, Any], ...]) -> str:
    """How a problem or a doctor check names a member: `sweep member 2 (finetune.lr=0.001)`."""
    return f"sweep member {index} ({', '.join(f'{k}={overrides.toml_text(v)}' for k, v in varied)})"


@dataclass(frozen=True)
class Expanded:
    source: str
    mode: Mode | None
    """None: the spec has no [sweep] table (one member, the spec itself)."""
    keys: tuple[str, ...]
    overrides: tuple[str, ...]
    members: tuple[Member, ...]

    @property
    def is_sweep(self) -> bool:
        return self.mode is not None

    def effective_toml(self, member: Member) -> str:
        """spec.toml of the member's run: the tables it was built from, and how."""
        how = [f"effective spec of {self.source}"] + ([member.label] if self.is_sweep else []) + \
            ([f"overrides: {' '.join(self.overrides)}"] if self.overrides else [])
        return overrides.dumps(member.raw, header="\n".join(how))


def sweep_table(raw: Mapping[str, Any], source: str) -> tuple[Mode, dict[str, list[Any]]] | None:
    """([sweep]'s mode, dotted key -> values), None without a [sweep]; every problem of the table at once."""
    table = raw.get("sweep")
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise SpecError(Problem(source, "sweep", f"= {show(table)}: must be a table [sweep]"))
    mode, problems, lists = table.get("mode", "grid"), list[Problem](), dict[str, list[Any]]()
    if mode not in MODES:
        problems.append(Problem(source, "sweep.mode", f"= {show(mode)}: must be one of 'grid', 'zip'"))
    for key, values in _flat(table):
        where = f"sweep.{key}"
        if not isinstance(values, list) or not values:
            problems.append(Problem(source, f'sweep."{key}"', f"= {show(values)}: must be a non-empty list of "
                                                              f"values, one per run"))
            continue
        found = overrides.check(overrides.Override(f"{key}={show(values)}", *_split(key), values[0]))
        problems += [Problem(source, where, p.message) for p in found if "unknown key" in p.message
                     or "must be section.key" in p.message]
        if key == "run.name":
            problems.append(Problem(source, where, "cannot be swept: members are named <run.name>-<i>"))
        if key in lists:  # `"a.b" = [...]` and `[sweep.a] b = [...]` both: one list would be dropped unseen
            problems.append(Problem(source, where, "is given twice in [sweep]; keep one list"))
        lists[key] = values
    if not lists and not problems:
        problems.append(Problem(source, "sweep", "is empty: give at least one key with a list of values, e.g. "
                                                 "\"finetune.lr\" = [1e-4, 3e-4]; or remove [sweep] for one run"))
    if mode == "zip" and len({len(v) for v in lists.values()}) > 1:
        sizes = ", ".join(f"{k} has {len(v)}" for k, v in lists.items())
        problems.append(Problem(source, "sweep.mode", f"= 'zip': every list must have one length ({sizes})"))
    if problems:
        raise SpecError(problems)
    return mode, lists


def _flat(table: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """`"finetune.lr" = [...]` or `[sweep.finetune] lr = [...]`: both as ("finetune.lr", [...])."""
    out = []
    for key, value in table.items():
        if key == "mode":
            continue
        if isinstance(value, Mapping):
            out += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            out.append((key, value))
    return out


def _split(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    return section, name


def _base_name(effective: Mapping[str, Any], source: str, members: int) -> str:
    """run.name, which each member's name extends (`<run.name>-<i>`): checked here, as the members' names
    would hide a wrong one (`true` read as `True-1`) or blame a suffix the user never wrote."""
    run = effective.get("run")
    base = run.get("name", "run") if isinstance(run, Mapping) else "run"
    if not isinstance(base, str):
        raise SpecError(Problem(source, "run.name", f"= {show(base)}: must be a string"))
    room = RUN_NAME_MAX - len(f"-{members}")
    if len(base) > room:
        raise SpecError(Problem(source, "run.name", f"= {show(base)}: {len(base)} characters; a sweep names its "
                                                    f"members <run.name>-<i>, so at most {room} here"))
    return base


def _same_value(varied: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """Values as TOML compares them: 1 and 1.0 are the same learning rate."""
    return [(k, float(v) if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in varied]


def combinations(mode: Mode, lists: Mapping[str, list[Any]]) -> list[tuple[tuple[str, Any], ...]]:
    keys = list(lists)
    rows = zip(*lists.values()) if mode == "zip" else itertools.product(*lists.values())
    return [tuple(zip(keys, row)) for row in rows]


def expand(raw: Mapping[str, Any], source: str, texts: tuple[str, ...] = (), *, for_submit: bool = True
           ) -> Expanded:
    """The members of a spec's tables plus overrides; SpecError with every problem of every member."""
    effective = overrides.apply({k: v for k, v in raw.items() if k != "sweep"}, texts)
    table = sweep_table(raw, source)
    if table is None:
        spec = _build(effective, source, for_submit, "")
        return Expanded(source, None, (), tuple(texts), (Member(1, (), effective, spec),))
    mode, lists = table
    swept = [t for t in texts if overrides.parse(t).section + "." + overrides.parse(t).key in lists]
    if swept:
        raise SpecError([Problem(f"<override> {t}", "", "this key is swept in [sweep]; change its list there")
                         for t in swept])
    members, problems = list[Member](), list[Problem]()
    rows = combinations(mode, lists)
    base = _base_name(effective, source, len(rows))
    seen: dict[str, int] = {}
    for i, varied in enumerate(rows, start=1):
        same = seen.setdefault(json.dumps(_same_value(varied), sort_keys=True, default=str), i)
        if same != i:  # the same values twice: the same run twice, its cost paid twice for nothing
            problems.append(Problem(source, "sweep", f"{label(i, varied)} has the values of member {same}: a sweep "
                                                     "list holds a value twice"))
            continue
        member_raw = overrides.set_dotted(effective, {**dict(varied), "run.name": f"{base}-{i}"})
        try:
            members.append(Member(i, varied, member_raw, _build(member_raw, source, for_submit, label(i, varied))))
        except SpecError as e:
            problems += e.problems
    if problems:
        raise SpecError(problems)
    return Expanded(source, mode, tuple(lists), tuple(texts), tuple(members))


def _build(raw: Mapping[str, Any], source: str, for_submit: bool, member: str) -> spec_mod.RunSpec:
    """One member's spec, every problem prefixed with the member's label."""
    try:
        spec = spec_mod.from_dict(raw, source)
        problems = spec_mod.submit_problems(spec) if for_submit else []
    except SpecError as e:
        problems = list(e.problems)
    if problems:
        raise SpecError([Problem(f"{p.file}: {member}" if member else p.file, p.key, p.message) for p in problems])
    return spec
