"""The layering the README's code map promises, checked from the source (AST), so a shortcut import fails here.

Layers, lowest first: `core` (spec, plan, token math, run paths, the stage registry; no torch) < `lib` and
`cosmos` (library code that knows no run) < `stages` (adapt the library to a run) < `report` (run directory ->
results; its own stage's worker too) < `launch` (backends that start stage tasks, and the worker every task runs)
< `ops` (what the commands do) < `cli`, `bench` and every package's `__main__` (entry points nothing imports). A
module imports only its own layer or lower ones, at module level or inside a function alike; imports between
modules form no cycle; a stage never imports another stage (shared code lives in the library or in helper modules
beside the stages); library code never imports the run spec or the run directory; the worker modules the stage
registry names are stage modules the worker's layer may import; no module grows past 400 lines and no function
past 60 (declarative tables excepted by name).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.core.stages import STAGES as REGISTRY

PKG = Path(__file__).resolve().parents[1] / "harness"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
RANK = {"core": 0, "lib": 1, "cosmos": 1, "stages": 2, "report": 3, "launch": 4, "ops": 5, "cli": 6, "bench": 6,
        "__main__": 6}
WORKER = "harness.launch.worker"
"""Imports each registry row's module by name (`importlib`): the edges below stand for those imports."""
# The stage modules proper, from the registry (the rest of harness/stages/ are helpers they share).
STAGES = {row.module for row in REGISTRY}
RUN_MODULES = {"harness.core.spec", "harness.core.sections", "harness.core.spec_check", "harness.core.paths",
               "harness.core.plan", "harness.core.trainplan"}
# Functions that are tables (data written as code), allowed past the function limit.
TABLES: set[str] = set()


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def layer(self) -> str:
        return _layer(self.name)


def modules(root: Path = PKG) -> dict[str, Module]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = Module(".".join(parts), p, ast.parse(p.read_text(encoding="utf-8")))
    return out


def _resolve(name: str, known: dict[str, Module]) -> str | None:
    """The harness module an import names (`from harness.core import spec` names harness.core.spec)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(mod: Module, known: dict[str, Module]) -> set[str]:
    """Every harness module `mod` imports, wherever the import statement sits (module level or a function)."""
    found: set[str] = set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("harness"):
                r = _resolve(t, known)
                if r and r != mod.name:
                    found.add(r)
    return found


def graph(known: dict[str, Module]) -> dict[str, set[str]]:
    """The import graph, plus the worker's edges to the stage modules the registry names (imported by name)."""
    g = {name: imports(m, known) for name, m in known.items()}
    g[WORKER] = g.get(WORKER, set()) | STAGES
    return g


def _layer(name: str) -> str:
    """A package's `__main__` is an entry point, ranked with the CLI: `python -m` runs it, nothing imports it."""
    if name.endswith(".__main__"):
        return "__main__"
    return name.split(".")[1] if name.count(".") else "__init__"


def stage_of(name: str) -> str | None:
    """The stage a module belongs to (the finetune stage's engines are the finetune stage)."""
    return next((s for s in STAGES if name == s or name.startswith(s + ".")), None)


def layer_violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, deps in g.items():
        for dst in deps:
            ls, ld = _layer(src), _layer(dst)
            if ls in RANK and ld in RANK and RANK[ld] > RANK[ls]:
                bad.append(f"{src} ({ls}) imports {dst} ({ld}), a higher layer")
            if stage_of(src) and stage_of(dst) and stage_of(src) != stage_of(dst):
                bad.append(f"stage {src} imports stage {dst}")
            if ls in ("lib", "cosmos") and dst in RUN_MODULES:
                bad.append(f"library module {src} imports {dst} (the run spec or run directory)")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each one import cycle to break."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _parent_package_edges(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing `a.b.c` runs `a/b/__init__.py` first; a package's __init__ importing its own submodule is
    the normal shape, so edges from a package to the modules under it do not count as cycles."""
    return {src: {d for d in deps if not d.startswith(src + ".")} for src, deps in g.items()}


def long_functions(mods: dict[str, Module]) -> list[str]:
    out = []
    for m in mods.values():
        for node in ast.walk(m.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                key = f"{m.name}.{node.name}"
                if n > MAX_FUNCTION_LINES and key not in TABLES:
                    out.append(f"{key}: {n} lines")
    return sorted(out)


MODS = modules()
GRAPH = graph(MODS)


def test_the_graph_sees_function_level_imports() -> None:
    """The check is only as good as its parser: a lazy import inside a function must be an edge too."""
    tree = ast.parse("def f():\n    from harness.core import spec\n    import harness.launch.slurm\n")
    fake = Module("harness.lib.fake", PKG / "lib" / "fake.py", tree)
    assert imports(fake, {**MODS, fake.name: fake}) == {"harness.core.spec", "harness.launch.slurm"}
    assert layer_violations({fake.name: imports(fake, {**MODS, fake.name: fake})}) == [
        "harness.lib.fake (lib) imports harness.launch.slurm (launch), a higher layer",
        "library module harness.lib.fake imports harness.core.spec (the run spec or run directory)"]


def test_no_import_cycles() -> None:
    assert cycles(_parent_package_edges(GRAPH)) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_down_the_layers() -> None:
    assert layer_violations(GRAPH) == []


def test_registry_names_stage_modules_the_worker_may_import() -> None:
    """Every row's module exists with a `run`, and sits below the worker's layer (an upward start would go
    unseen: the worker imports it by name)."""
    for row in REGISTRY:
        assert row.module in MODS, f"{row.name}: no module {row.module}"
        assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in MODS[row.module].tree.body), row.module
        assert RANK[_layer(row.module)] < RANK[_layer(WORKER)], f"{row.name}: {row.module} is not below the worker"


def test_the_report_sits_above_the_stages() -> None:
    """The report reads what stages wrote; a stage never calls the report (its tracker lives in the library)."""
    assert not [(s, d) for s, deps in GRAPH.items() if _layer(s) == "stages" for d in deps if _layer(d) == "report"]


def test_every_module_has_a_layer() -> None:
    assert sorted({m.layer for m in MODS.values()} - set(RANK) - {"__init__"}) == []


@pytest.mark.parametrize("name", sorted(MODS))
def test_module_size(name: str) -> None:
    n = len(MODS[name].path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{MODS[name].path}: {n} lines > {MAX_MODULE_LINES}"


def test_function_size() -> None:
    assert long_functions(MODS) == []
