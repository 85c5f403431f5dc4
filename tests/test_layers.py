"""The layering the README's code map promises, checked from the source (AST), so a shortcut import fails here.

Layers, lowest first: `core` (spec, plan, token math, run paths, the stage registry; no torch) < `lib` and
`cosmos` (library code that knows no run) < `stages` (adapt the library to a run) < `report` (run directory ->
results; its own stage's worker too) < `launch` (backends that start stage tasks, and the worker every task runs)
< `ops` (what the commands do) < `cli`, `bench` and every package's `__main__` (entry points nothing imports). A
module imports only its own layer or lower ones, at module level or inside a function alike; imports between
modules form no cycle; a stage never imports another stage (shared code lives in the library or in helper modules
beside the stages); library code never imports the run spec or the run directory; the worker modules the stage
registry names are stage modules the worker's layer may import; the command line (`cli`) only parses and prints,
so it imports only `ops`, `core` and the bench entry points; no module grows past 400 lines and no function past
60 (declarative tables excepted by name); a run-directory path is built only in `harness.core.paths` and
spec.json, plan.json and jobs.json are read only through `harness.core.rundir`.
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
               "harness.core.rundir", "harness.core.plan", "harness.core.trainplan"}
# What the command line may import: the commands (ops), the spec and errors (core), the benchmarks (bench).
CLI_LAYERS = {"ops", "core", "bench"}
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
            if ls == "cli" and ld not in CLI_LAYERS:
                bad.append(f"the command line imports {dst} ({ld}); it reaches other layers through ops")
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


def test_the_command_line_reaches_only_ops_core_and_bench() -> None:
    """cli parses and prints: anything it needs from a stage, the report or the library comes through ops."""
    tree = ast.parse("from harness.ops import plan\nfrom harness.core import spec\n"
                     "def f():\n    from harness.report import evaltable\n    from harness.lib import synth\n")
    fake = Module("harness.cli", PKG / "cli.py", tree)
    assert layer_violations({fake.name: imports(fake, MODS)}) == [
        "the command line imports harness.lib.synth (lib); it reaches other layers through ops",
        "the command line imports harness.report.evaltable (report); it reaches other layers through ops"]
    assert not [d for d in GRAPH["harness.cli"] if _layer(d) not in CLI_LAYERS]


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


# Every name the run directory's layout uses (files and folders, at any depth): a path built from one of these is
# built in the run-directory module (`RunPaths`), nowhere else, so a renamed folder cannot leave a reader behind.
RUN_DIR_NAMES = frozenset({
    "spec.toml", "spec.json", "plan.json", "jobs.json", "status.json", ".lock", "assets.json", "inputs.jsonl", "logs",
    "driver.log",
    "done", "local_state.json", "local_done.json", "local_only.json", "tokens", "dataset", "summary.json",
    "split.json", "finetune", "checkpoints", "checkpoints.json", "metrics.jsonl", "nemo", "infer", "eval", "cache",
    "numba", "tensorboard", "train", "wandb", "shared.json", "campaign.json", "entry.json", "claim.json", "freed.json",
    "users", "attempts"})
RUN_DIR_MODULES = {"harness.core.paths"}
# The same names used for paths that are not in a run directory, each with why.
NOT_RUN_DIR = {("harness.ops.assetcheck", "nemo"): "a pretrained checkpoint's nemo/ folder (an HF snapshot)",
               ("harness.bench.plan", "plan.json"): "the bench's own result file in --out"}
_PATH_CALLS = {"joinpath", "glob", "rglob", "Path", "PurePath", "join"}


def _names_in(node: ast.AST) -> set[str]:
    """Run-directory names a string literal (or an f-string's literal parts) spells as path components."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return set(node.value.split("/")) & RUN_DIR_NAMES
    if isinstance(node, ast.JoinedStr):
        return set().union(*(_names_in(v) for v in node.values))
    return set()


def _is_root_attr(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "root"


def hand_built_run_paths(mod: Module) -> list[str]:
    """Where `mod` joins a run-directory name into a path (`/`, joinpath, glob, Path(), os.path.join), spells a
    run-directory file name at all, or joins onto a run's `.root`."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(mod.tree):
        names: set[str] = set()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            names = _names_in(node.left) | _names_in(node.right)
            if _is_root_attr(node.left):
                found.add((node.lineno, "<root> / ..."))
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if fname in _PATH_CALLS:
                names = set().union(*(_names_in(a) for a in node.args))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            names = {node.value} & RUN_DIR_NAMES
        found |= {(getattr(node, "lineno", 0), n) for n in names if (mod.name, n) not in NOT_RUN_DIR}
    return [f"{mod.path.relative_to(PKG.parent)}:{line}: {n!r}" for line, n in sorted(found)]


def run_dir_paths_elsewhere(mods: dict[str, Module]) -> list[str]:
    """Library code (lib, cosmos) never sees a run directory (see `layer_violations`), so it is not searched."""
    return [hit for name, m in sorted(mods.items()) if name not in RUN_DIR_MODULES
            and m.layer not in ("lib", "cosmos") for hit in hand_built_run_paths(m)]


def test_run_directory_paths_are_built_in_one_module() -> None:
    assert run_dir_paths_elsewhere(MODS) == []


# The stored records with one reader each, in `harness.core.rundir` (typed: RunSpec, Facts, Jobs).
RECORDS = {"spec_json", "plan_json", "jobs_json"}
_READS = {"read_json", "read_text", "read_bytes", "open", "load", "loads"}


def record_reads(mod: Module) -> list[str]:
    """Where `mod` reads spec.json, plan.json or jobs.json itself (`read_json(paths.plan_json)` and the like)."""
    out = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            args = [*node.args, f.value] if isinstance(f, ast.Attribute) else list(node.args)
            out += [f"{mod.path.relative_to(PKG.parent)}:{node.lineno}: {fname}(.{a.attr})" for a in args
                    if fname in _READS and isinstance(a, ast.Attribute) and a.attr in RECORDS]
    return out


def test_run_records_have_one_reader_each() -> None:
    assert [hit for name, m in sorted(MODS.items()) if name != "harness.core.rundir" for hit in record_reads(m)] == []


def test_a_record_read_is_found() -> None:
    src = "def f(p):\n    a = read_json(p.spec_json)\n    b = p.plan_json.read_text()\n    write(p.jobs_json)\n"
    fake = Module("harness.ops.fake", PKG / "ops" / "fake.py", ast.parse(src))
    assert record_reads(fake) == ["harness/ops/fake.py:2: read_json(.spec_json)",
                                  "harness/ops/fake.py:3: read_text(.plan_json)"]


def test_a_hand_built_run_path_is_found() -> None:
    """The rule's parser: each way a path can be spelled outside the run-directory module is a hit."""
    src = ("def f(paths, a):\n"
           "    x = paths.root / 'eval'\n"
           "    y = a.logs('x').parent.joinpath('done/0.json')\n"
           "    for n in ('spec.json',):\n"
           "        pass\n"
           "    z = a / f'infer/step-{1}'\n"
           "    return {'eval': x, 'tokens': 1}, paths.root / 'unknown'\n")
    fake = Module("harness.ops.fake", PKG / "ops" / "fake.py", ast.parse(src))
    assert hand_built_run_paths(fake) == [
        "harness/ops/fake.py:2: '<root> / ...'", "harness/ops/fake.py:2: 'eval'", "harness/ops/fake.py:3: 'done'",
        "harness/ops/fake.py:4: 'spec.json'", "harness/ops/fake.py:6: 'infer'",
        "harness/ops/fake.py:7: '<root> / ...'"]
    assert run_dir_paths_elsewhere({"harness.core.paths": Module("harness.core.paths", fake.path, fake.tree),
                                    "harness.lib.fake": Module("harness.lib.fake", fake.path, fake.tree)}) == []


def test_the_name_list_covers_the_layout() -> None:
    """A folder or file added to `RunPaths` joins the list above, or the rule would not see it built elsewhere."""
    tree = MODS["harness.core.paths"].tree
    joined = {side.value for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              for side in (node.left, node.right) if isinstance(side, ast.Constant) and isinstance(side.value, str)}
    assert joined - {"%j"} == RUN_DIR_NAMES  # %j: submitit fills in the job id
