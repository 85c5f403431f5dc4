"""Run spec: a TOML file becomes one frozen, typed `RunSpec`, or a list of one-line problems.

The public face of the spec: callers import the spec's types and functions from here. Every field is declared
once, with its type, default, bounds and a one-line doc, in `harness.core.sections` (the README's spec reference
is generated from it); values are coerced by `harness.core.fields`, which also rejects unknown keys with the
closest valid key suggested; relations between fields are checked in `harness.core.spec_check`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, Mapping

from harness.core.errors import Problem, SpecError
from harness.core.fields import build, first_line, plain, show, type_str, unknown_keys
from harness.core.models import Precision
from harness.core.sections import (
    SECTIONS,
    AssetsSection,
    ContainerSection,
    DataSection,
    Device,
    Engine,
    EvaluateSection,
    FinetuneSection,
    InferSection,
    MergeSection,
    Metric,
    MetricBackend,
    ModelSection,
    Recipe,
    Recompute,
    ReportSection,
    Resources,
    RunSection,
    RunSpec,
    TokenizerSection,
    TokenizeSection,
    TrackingSection,
    VideoSection,
    data_parallel,
    ranks_per_node,
)
from harness.core.spec_check import cross_check, submit_problems, warnings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["SECTIONS", "AssetsSection", "ContainerSection", "DataSection", "Device", "Engine", "EvaluateSection",
           "FinetuneSection", "InferSection", "MergeSection", "Metric", "MetricBackend", "ModelSection",
           "Precision", "Recipe", "Recompute", "ReportSection", "Resources", "RunSection", "RunSpec",
           "TokenizeSection", "TokenizerSection", "TrackingSection", "VideoSection", "absolutize", "cross_check",
           "data_parallel", "from_dict", "load", "load_for_submit", "loads", "parse_toml", "read_table", "read_text",
           "ranks_per_node", "reference",
           "submit_problems", "to_dict", "warnings"]


def load(path: str | Path) -> RunSpec:
    """Read and validate a spec file; raises SpecError with every problem found."""
    return from_dict(read_table(path), str(path))


def read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")  # an editor's byte-order mark is no TOML statement
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(Problem(str(path), "", f"cannot read: {e.__class__.__name__}: {e}")) from None


def read_table(path: str | Path) -> dict[str, Any]:
    """A spec file's TOML tables, unchecked (a sweep or overrides change them before `from_dict`)."""
    return parse_toml(read_text(path), str(path))


def parse_toml(text: str, source: str = "<spec>") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, and int() refusing a number of more than 4,300 digits
        raise SpecError(Problem(source, "", f"not valid TOML: {first_line(e)}")) from None
    except RecursionError:  # tomllib recurses once per nesting level of arrays / inline tables
        raise SpecError(Problem(source, "", "not valid TOML: arrays or inline tables nested too deeply")) from None


def loads(text: str, source: str = "<spec>") -> RunSpec:
    """Parse and validate TOML text; `source` names it in every problem."""
    return from_dict(parse_toml(text, source), source)


def from_dict(raw: Mapping[str, Any], source: str = "<spec>") -> RunSpec:
    """Tables to a RunSpec: every field's problems first (all of them at once), then the cross checks, which
    need a whole spec to run on."""
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    unknown_keys(raw, SECTIONS, "", source, problems)
    hints = typing.get_type_hints(RunSpec)
    for name in SECTIONS:
        table = raw.get(name, {})
        if not isinstance(table, Mapping):
            problems.append(Problem(source, name, f"= {show(table)}: must be a table [{name}]"))
            continue
        sections[name] = build(hints[name], table, name, source, problems)
    if problems:
        raise SpecError(problems)
    spec = RunSpec(**sections, source=source)
    problems = cross_check(spec)
    if problems:
        raise SpecError(problems)
    return spec


def to_dict(spec: RunSpec) -> dict[str, Any]:
    """Plain data for spec.json: enough to rebuild the identical spec with from_dict."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        sec = getattr(spec, name)
        out[name] = {f.name: plain(getattr(sec, f.name)) for f in dataclasses.fields(sec)}
    return out


def load_for_submit(path: str | Path) -> RunSpec:
    """`load` plus `submit_problems`: what a user's spec file must pass before anything is planned from it."""
    spec = load(path)
    problems = submit_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def reference() -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for the README's spec reference."""
    rows = []
    hints = typing.get_type_hints(RunSpec)
    for name in SECTIONS:
        cls = hints[name]
        sub = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            shown = f"= {name}.{f.metadata['follows']}" if f.metadata.get("follows") else repr(plain(default))
            rows.append((f"{name}.{f.name}", type_str(sub[f.name]), shown, f.metadata.get("doc", "")))
    return rows


def _expand(key: str, p: str, source: str) -> Path:
    """`~`, `~user` and environment variables (`$SCRATCH/runs`) expanded here, at submit, as a shell would: the
    frozen spec holds the result, so every node sees the same path. A user this machine does not know, or a
    variable that is not set, is the spec's problem, not a literal `$SCRATCH` folder."""
    unset = [m.group(0) for m in re.finditer(r"\$(\w+|\{\w+\})", p) if m.group(1).strip("{}") not in os.environ]
    if unset:
        raise SpecError([Problem(source, key, f"= {show(p)}: {unset[0]} is not set in this environment")])
    try:
        return Path(os.path.expandvars(p)).expanduser()
    except RuntimeError:
        raise SpecError([Problem(source, key, f"= {show(p)}: cannot expand {show(p.split('/')[0])}: no such user "
                                              "(or no home directory) on this machine")]) from None


def absolutize(spec: RunSpec, base: Path) -> RunSpec:
    """Relative paths resolve against `base` (the submit directory) once, so every task on every node sees
    the same absolute paths in the frozen spec. Repo ids stay repo ids unless a local path of that name exists."""

    def path(key: str) -> str:
        p = _value(spec, key)
        return str((base / _expand(key, p, spec.source)).resolve()) if p else p

    def asset(key: str) -> str:
        p = _value(spec, key)
        local = base / _expand(key, p, spec.source)
        return str(local.resolve()) if p and (p.startswith(("/", "./", "../", "~", "$")) or local.exists()) else p

    r = dataclasses.replace
    return r(spec,
             run=r(spec.run, workdir=path("run.workdir"), results_dir=path("run.results_dir")),
             data=r(spec.data, videos=path("data.videos"), manifest=path("data.manifest"), jsonl=path("data.jsonl"),
                    cache_dir=path("data.cache_dir")),
             assets=r(spec.assets, hf_home=path("assets.hf_home")),
             model=r(spec.model, checkpoint=asset("model.checkpoint"), text_encoder=asset("model.text_encoder")),
             tokenizer=r(spec.tokenizer, encoder=asset("tokenizer.encoder"), decoder=asset("tokenizer.decoder")),
             infer=r(spec.infer, inputs=path("infer.inputs")),
             container=r(spec.container, cache_dir=path("container.cache_dir")),
             evaluate=r(spec.evaluate, reference=path("evaluate.reference")))


def _value(spec: RunSpec, key: str) -> str:
    section, name = key.split(".")
    return str(getattr(getattr(spec, section), name))
