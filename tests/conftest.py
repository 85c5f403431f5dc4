"""Shared fixtures. Slurm tests run against the project's own local cluster (sbatch/local-slurm.sh up);
CI sets HARNESS_REQUIRE_SLURM=1 so a missing cluster fails instead of skipping."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from harness.lib.heap import quiet_imports
from shared_util import file_lock, shared_root, xdist_group, xdist_worker

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONF = Path(os.environ.get("TMPDIR", "/tmp")) / "harness-slurm" / "etc" / "slurm.conf"


def _controller_up() -> str:
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return "" if p.returncode == 0 and "UP" in p.stdout else (p.stdout + p.stderr).strip()


def _start_cluster() -> str:
    """Bring up sbatch/local-slurm.sh's cluster (packages must be installed; needs root)."""
    if os.geteuid() != 0 or shutil.which("slurmctld") is None:
        return "slurmctld not installed or not root (run: sudo bash sbatch/local-slurm.sh install)"
    p = subprocess.run(["bash", str(REPO / "sbatch" / "local-slurm.sh"), "up"], capture_output=True, text=True,
                       timeout=180, env={**os.environ, "SKIP_INSTALL": "1"})
    return "" if p.returncode == 0 else p.stderr.strip()[-500:]


CLUSTER_LOCK = DEFAULT_CONF.parents[2] / "harness-slurm.lock"
"""Held while a session checks for, and maybe starts, the local cluster: xdist workers start at once."""
STARTED_FLAG = "slurm-started-here"
"""In the run's shared temp root: a worker started the cluster, so the controller stops it at the end."""


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SLURM_CONF of the project's local cluster: reused if one answers, else started here and stopped
    after the session. Fails when HARNESS_REQUIRE_SLURM=1 (CI), skips elsewhere when none can run."""
    started = False
    if not os.environ.get("SLURM_CONF"):
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    with file_lock(CLUSTER_LOCK):
        why = _controller_up() if Path(os.environ["SLURM_CONF"]).exists() else "no slurm.conf"
        if why and os.environ["SLURM_CONF"] == str(DEFAULT_CONF):
            why = _start_cluster() or _controller_up()
            started = not why
    if why:
        msg = f"no local Slurm cluster ({why}); start it with: bash sbatch/local-slurm.sh up"
        if os.environ.get("HARNESS_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    if started and xdist_worker():
        (shared_root(tmp_path_factory) / STARTED_FLAG).write_text(xdist_worker())
    yield os.environ["SLURM_CONF"]
    if started and not xdist_worker():
        _stop_cluster()


def _stop_cluster() -> None:
    subprocess.run(["bash", str(REPO / "sbatch" / "local-slurm.sh"), "down"], capture_output=True, timeout=120)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The xdist controller stops a cluster one of its workers started, once every worker is done."""
    reliability_sessionfinish(session, exitstatus)
    if xdist_worker() or not hasattr(session.config, "_tmp_path_factory"):
        return
    flag = Path(session.config._tmp_path_factory.getbasetemp()) / STARTED_FLAG
    if flag.is_file():
        _stop_cluster()


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[None]:
    """Collection imports every test module, and with them torch, megatron-core and the harness, in each xdist
    worker: with the garbage collector walking that growing heap again and again it took 11.7 CPU-s, paused and
    the result frozen (as a stage imports, `harness.lib.heap`) 6.4."""
    with quiet_imports():
        yield


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for `--dist loadgroup` (before xdist reads them): every test on the local cluster runs on one
    worker, one after another (they size their waits for a cluster of their own); a module with a module-scoped
    fixture (a built run, a trained checkpoint) stays on one worker, so that fixture is built once."""
    for item in items:
        if _on_cluster(item):
            xdist_group(item, "slurm")
        elif _module_scoped(item):
            xdist_group(item, item.path.name)


def _on_cluster(item: pytest.Item) -> bool:
    return bool(item.get_closest_marker("slurm")) or "slurm_cluster" in getattr(item, "fixturenames", ())


def _module_scoped(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    return any(d.scope in ("module", "class", "package") for ds in defs for d in ds)


@pytest.fixture()
def no_slurm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A PATH without Slurm's client tools: the launcher must fall back to the local executor."""
    keep = [p for p in os.environ["PATH"].split(os.pathsep)
            if not (Path(p) / "sbatch").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))


WORKER_NICE = 10
"""An xdist worker's CPU priority outside the cluster's tests: on two cores the cluster's tests are the run's
critical path, one after another on one worker, so everything else takes what they leave."""
AUTOGROUP = Path("/proc/self/autogroup")


def _prioritise(value: int) -> None:
    """This worker's nice value, and its session's where the kernel schedules sessions as groups (autogroup:
    there a process's nice only orders it within its session, and each cluster job, a session of its own,
    weighs as much as the whole worker). Lowering a process's nice needs privilege (CI runs as root); without
    it the process keeps its own."""
    if os.getpriority(os.PRIO_PROCESS, 0) != value:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, value)
        except PermissionError:
            pass
    try:
        AUTOGROUP.write_text(str(value))
    except OSError:  # no autogroup in this kernel, or not permitted
        pass


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A worker runs a cluster test at the cluster jobs' own priority: the test's in-process work and its
    subprocesses (submits, a local reference run's ranks) are on the critical path too. Every other test runs at
    `WORKER_NICE`, taking the CPU time the critical path leaves idle."""
    if xdist_worker():
        _prioritise(0 if _on_cluster(item) else WORKER_NICE)


NUMBA_CACHE = Path(os.environ.get("TMPDIR", "/tmp")) / f"harness-tests-numba-{os.getuid()}"
"""numba's cache of the evaluate kernel for every run the suite starts. A run's tasks otherwise share one under
the run directory (`<run>/cache/numba`, the harness's default where NUMBA_CACHE_DIR is unset), so each of the
suite's runs that evaluate compiled the kernel again (~1.4 CPU-s each time, several times at once where a run's
first evaluate tasks start together). numba keys the cache by the kernel's source file and its stamp, so
runs from another checkout or an edited metrics module never load a stale kernel."""


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker becomes a session of its own (so that `_prioritise` weighs it apart from the other worker)
    and starts at `WORKER_NICE`. The workers also share the cores: OpenMP threads per process are
    cores // workers, inherited by every subprocess and, through sbatch's exported environment, by the cluster's
    tasks, as the harness shares a node's cores among its CPU ranks (N processes each starting one thread per
    core oversubscribe the cores N times over). Set before any test imports torch, where the caller has not;
    `NUMBA_CACHE` likewise, before any test imports numba (it reads the variable once, at import)."""
    os.environ.setdefault("NUMBA_CACHE_DIR", str(NUMBA_CACHE))
    if xdist_worker():
        with contextlib.suppress(OSError):  # already a session leader
            os.setsid()
        _prioritise(WORKER_NICE)
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/*.sbatch")
    parser.addoption("--reliability-out", default="", help="write the reliability tally to this JSON file")


# ---------------------------------------------------------------------------------------- reliability tally
# The `reliability` fixture and the end-of-session summary (results/reliability.json) live in
# tests/reliability_plugin.py; importing its hooks here registers them (tests/ is not a package).
from reliability_plugin import (  # noqa: E402,F401
    pytest_collection_finish,
    pytest_runtest_logreport,
    pytest_terminal_summary,
    pytest_testnodedown,
    reliability,
)
from reliability_plugin import pytest_sessionfinish as reliability_sessionfinish  # noqa: E402
