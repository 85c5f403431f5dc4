"""Operating runs on the project's local Slurm cluster (and the local executor): status, logs, resume,
cancel, runs, wait.

The Slurm runs here use real stage workers that are cheap: `stage-assets` (checks the tokenizer files the
spec names) and `report` (writes the results files). A failure is a genuinely bad input (a tokenizer
directory without decoder.jit) or a real `scancel` of one array task; the fix is the missing file. Nothing
here fakes sbatch, squeue or sacct.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

import specs
from harness import cli
from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths, mark_done, new_run_dir
from harness.core.plan import Dependency
from harness.launch import slurmcli
from harness.launch.backend import Submission
from harness.ops import control, state, status
from harness.ops import submit as launching


def spec_text(root: Path) -> str:
    """The default model; the assets and report jobs as small as the local cluster's nodes."""
    return specs.text({
        "run": {"name": "ops", "workdir": f"{root}/runs", "results_dir": f"{root}/results"},
        "tokenizer": {"encoder": f"{root}/tok", "decoder": f"{root}/tok"}, "data": {"videos": f"{root}/videos"},
        "assets": {"hf_home": f"{root}/hf", "cpus_per_task": 1, "time_min": 5},
        "report": {"cpus_per_task": 1, "time_min": 5}})


WAIT_S = 400
"""Bound on one wait: the shared local cluster may be busy with other runs (a free one takes ~5 s)."""


def make_run(root: Path, executor: str = "slurm", with_decoder: bool = False) -> tuple[RunPaths, plan_mod.Plan,
                                                                                      plan_mod.Facts]:
    """A real run directory (spec.toml, spec.json, plan.json, jobs.json) for a tokenizer dir that has
    encoder.jit but, unless with_decoder, no decoder.jit: stage-assets rejects it."""
    (root / "tok").mkdir(parents=True, exist_ok=True)
    (root / "tok" / "encoder.jit").write_bytes(b"encoder")
    if with_decoder:
        (root / "tok" / "decoder.jit").write_bytes(b"decoder")
    (root / "videos").mkdir(exist_ok=True)
    text = spec_text(root)
    (root / "run.toml").write_text(text)
    spec = spec_mod.absolutize(spec_mod.load(root / "run.toml"), root)
    facts = plan_mod.Facts(num_inputs=3, max_array_size=1001, nodes_available=3)
    plan = plan_mod.build(spec, facts)
    paths = new_run_dir(root / "runs", "ops")
    choice = launching.Choice(executor, "test")
    launching.write_run(paths, text, plan, facts, choice)
    launching.record_jobs(paths, choice, [])
    return paths, plan, facts


def two_stage(plan: plan_mod.Plan, tasks: int, first_dep: tuple[Dependency, ...] = ()) -> plan_mod.Plan:
    """stage-assets -> report, each `tasks` wide (aftercorr when arrays, afterok otherwise)."""
    array = tasks > 1
    a = dataclasses.replace(plan.stage("stage-assets"), tasks=tasks, array=array, chunks=((0, tasks),),
                            depends=first_dep)
    r = dataclasses.replace(plan.stage("report"), tasks=tasks, array=array, chunks=((0, tasks),),
                            depends=(Dependency("stage-assets", "aftercorr" if array else "afterok"),))
    return dataclasses.replace(plan, stages=(a, r))


def held_gate() -> str:
    """A held no-op job: stages depending on it stay PENDING until it is released, so a test can act on
    pending array tasks without racing the scheduler."""
    out = subprocess.run(["sbatch", "--parsable", "--hold", "-t", "1", "-c", "1", "--wrap", "true"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def render(rs: state.RunState) -> str:
    con = Console(record=True, width=500)
    con.print(status.view(rs))
    return con.export_text()


def rows(rs: state.RunState, stage: str) -> list[state.TaskState]:
    return [r for r in rs.rows if r.stage == stage]


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_failed_task_dependents_cancelled_then_resume_completes(tmp_path: Path, slurm_cluster: str) -> None:
    paths, plan, facts = make_run(tmp_path)
    small = two_stage(plan, 1)
    choice = launching.Choice("slurm", "test")
    launching.submit_stages(small, paths, {"stage-assets": [0], "report": [0]}, facts, choice)
    con = Console(record=True, width=250)
    assert status.wait(paths, WAIT_S, con, interval_s=0.5, plan=small) == 1
    assert "failed" in con.export_text()

    slurmcli.CALLS.clear()
    rs = state.collect(paths, small)
    assert slurmcli.CALLS["squeue"] + slurmcli.CALLS["sacct"] <= 2
    [a] = rows(rs, "stage-assets")
    [r] = rows(rs, "report")
    assert (a.state, a.exit_code) == ("FAILED", "1:0")
    assert r.state == "CANCELLED" and r.reason.startswith("DependencyNeverSatisfied")
    err = Path(a.log).with_suffix(".err")
    assert Path(a.log).is_file() and "has no decoder.jit" in err.read_text()
    assert a.reason.startswith("harness.core.errors.HarnessError") and "has no decoder.jit" in a.reason
    text = render(rs)
    assert "FAILED" in text and "1:0" in text and "0/2 tasks completed" in text
    assert str(paths.root) in text and str(Path(a.log).relative_to(paths.root)) in text

    (tmp_path / "tok" / "decoder.jit").write_bytes(b"decoder")  # the fix
    todo = control.resume(paths, Console(record=True), plan=small)
    assert todo == {"stage-assets": [0], "report": [0]}
    assert status.wait(paths, WAIT_S, Console(record=True), interval_s=0.5, plan=small) == 0
    rs = state.collect(paths, small)
    assert rs.complete
    assert (tmp_path / "results" / paths.run_id / "report.json").is_file()
    again = Console(record=True)
    assert control.resume(paths, again, plan=small) == {}
    assert "nothing to resubmit" in again.export_text()


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_resume_resubmits_exactly_the_cancelled_index(tmp_path: Path, slurm_cluster: str) -> None:
    paths, plan, facts = make_run(tmp_path, with_decoder=True)
    gate = held_gate()
    small = two_stage(plan, 3, (Dependency("gate", "afterok"),))
    choice = launching.Choice("slurm", "test")
    try:
        subs = launching.submit_stages(small, paths, {"stage-assets": [0, 1, 2], "report": [0, 1, 2]}, facts,
                                    choice, {"gate": [gate]})
        a_id = subs[0].job_id
        with pytest.raises(HarnessError, match="still pending or running"):
            control.resume(paths, Console(record=True), plan=small)
        assert cli.main(["resume", str(paths.root)]) == 2  # the same refusal through the CLI
        slurmcli.scancel([f"{a_id}_1"])
    finally:
        subprocess.run(["scontrol", "release", gate], check=True)
    assert status.wait(paths, WAIT_S, Console(record=True), interval_s=0.5, plan=small) == 1
    rs = state.collect(paths, small)
    assert [r.state for r in rows(rs, "stage-assets")] == ["COMPLETED", "CANCELLED", "COMPLETED"]
    assert [r.job_id for r in rows(rs, "stage-assets")] == [f"{a_id}_{i}" for i in range(3)]
    assert rows(rs, "stage-assets")[1].reason == "cancelled while pending"  # no sacct record exists for it
    rep = rows(rs, "report")
    assert rep[0].state == rep[2].state == "COMPLETED" and rep[1].state == "CANCELLED"

    todo = control.resume(paths, Console(record=True), plan=small)
    assert todo == {"stage-assets": [1], "report": [1]}
    new = [s for s in state.load_jobs(paths).submissions if s.round == 1]
    assert [(s.stage, s.tasks, s.array) for s in new] == [("stage-assets", ((1, 2),), False),
                                                         ("report", ((1, 2),), False)]
    assert status.wait(paths, WAIT_S, Console(record=True), interval_s=0.5, plan=small) == 0
    rs = state.collect(paths, small)
    assert rs.complete and rows(rs, "stage-assets")[1].job_id == new[0].job_id


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_status_of_1000_task_array_is_fast_and_two_queries(tmp_path: Path, slurm_cluster: str) -> None:
    paths, plan, facts = make_run(tmp_path, with_decoder=True)
    gate = held_gate()
    big = two_stage(plan, 1000, (Dependency("gate", "afterok"),))
    big = dataclasses.replace(big, stages=big.stages[:1])
    try:
        launching.submit_stages(big, paths, {"stage-assets": list(range(1000))}, facts,
                             launching.Choice("slurm", "test"), {"gate": [gate]})
        state.collect(paths, big)  # warm caches (imports, Slurm's own)
        slurmcli.CALLS.clear()
        t0 = time.perf_counter()
        rs = state.collect(paths, big)
        con = Console(record=True, width=200)
        con.print(status.view(rs))
        seconds = time.perf_counter() - t0
        assert sum(slurmcli.CALLS.values()) <= 2, slurmcli.CALLS
        assert seconds < 1.0, seconds
        assert rs.stages[0].counts == {"PENDING": 1000}
        text = con.export_text()
        assert "0/1000" in text and "1000 PENDING" in text and "980 more task(s) not shown" in text
    finally:
        control.cancel(paths, Console(record=True), plan=big)
        subprocess.run(["scancel", gate], check=True)


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_cancel_one_stage_and_watch(tmp_path: Path, slurm_cluster: str) -> None:
    paths, plan, facts = make_run(tmp_path, with_decoder=True)
    gate = held_gate()
    small = two_stage(plan, 2, (Dependency("gate", "afterok"),))
    try:
        launching.submit_stages(small, paths, {"stage-assets": [0, 1], "report": [0, 1]}, facts,
                             launching.Choice("slurm", "test"), {"gate": [gate]})
        control.cancel(paths, Console(record=True), "report", plan=small)
        deadline = time.time() + 30
        while time.time() < deadline:
            rs = state.collect(paths, small)
            if {r.state for r in rows(rs, "report")} == {"CANCELLED"}:
                break
            time.sleep(0.5)
        assert {r.state for r in rows(rs, "report")} == {"CANCELLED"}
        assert {r.reason for r in rows(rs, "report")} == {f"cancelled by uid {os.getuid()}"}
        assert {r.state for r in rows(rs, "stage-assets")} == {"PENDING"}
        subprocess.run(["scontrol", "release", gate], check=True)
        con = Console(record=True, width=300)
        assert status.status(paths, con, watch=True, interval_s=0.3, plan=small) == 0  # returns once final
        assert "2/4 tasks completed (2 completed, 2 cancelled)" in con.export_text()
    finally:
        control.cancel(paths, Console(record=True), plan=small)
        subprocess.run(["scancel", gate], check=True)


# ------------------------------------------------------------------------------------------ local executor
@pytest.mark.timeout(120)
def test_local_run_failure_status_logs_resume_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The local driver runs the saved (full) plan: stage-assets fails on the bad tokenizer dir and every
    later stage is cancelled; status, logs, runs and resume read it from the run directory."""
    from harness.launch import local

    paths, plan, _ = make_run(tmp_path, executor="local")
    pid = local.start_driver(paths)
    launching.record_jobs(paths, launching.Choice("local", "test"), [
        Submission("*", f"local:{pid}", (), False, time.time(), 0)])
    assert status.wait(paths, WAIT_S, Console(record=True), interval_s=0.3) == 1
    rs = state.collect(paths, plan)
    a = rows(rs, "stage-assets")[0]
    assert a.state == "FAILED" and "has no decoder.jit" in a.reason
    later = [r for r in rs.rows if r.stage not in ("stage-assets", "report")]
    assert later and {r.state for r in later} == {"CANCELLED"}
    assert {r.reason for r in later} == {"DependencyNeverSatisfied"}
    assert rows(rs, "report")[0].state == "COMPLETED"  # afterany: the report lists what did not run
    doc = json.loads((tmp_path / "results" / paths.run_id / "report.json").read_text())
    assert {(f["stage"], f["task"]) for f in doc["failures"]} == {(r.stage, r.task) for r in rs.rows
                                                                  if r.stage != "report"}

    monkeypatch.setenv("COLUMNS", "1000")
    assert cli.main(["status", str(paths.root)]) == 0
    out = capsys.readouterr().out
    assert "FAILED" in out and "has no decoder.jit" in out and f"1/{len(rs.rows)} tasks completed" in out
    assert cli.main(["logs", str(paths.root), "stage-assets", "--stderr"]) == 0
    assert "has no decoder.jit" in capsys.readouterr().out
    assert cli.main(["runs", "--workdir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert paths.run_id in out and "failed" in out
    assert cli.main(["status", "no-such-run", "--workdir", str(tmp_path / "runs")]) == 2
    assert "no-such-run" in capsys.readouterr().err

    todo = control.resume(paths, Console(record=True))
    assert todo == {s.name: list(range(s.tasks)) for s in plan.stages}
    assert state.load_jobs(paths).submissions[-1].round == 1
    assert cli.main(["cancel", str(paths.root)]) == 0
    rs = state.collect(paths, plan)
    assert rs.final and not rs.driver_alive


def test_a_zombie_driver_is_not_alive() -> None:
    """A driver that exited but was never reaped (PID 1 of many containers reaps nothing) must not block
    `resume` forever: the one alive check reads the process state."""
    import subprocess
    import sys
    import time

    from harness.launch.backend import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "child never exited"
        time.sleep(0.05)
    try:
        assert pid_alive(child.pid) is False
        assert pid_alive(os.getpid()) is True
    finally:
        child.wait()
    assert pid_alive(child.pid) is False


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_a_reused_job_id_is_never_read_or_cancelled_as_this_runs(tmp_path: Path, slurm_cluster: str) -> None:
    """Run `old` finished long ago; Slurm has since reused its job ids (MaxJobId wrapped, or the controller lost
    its state) for run `live`'s pending jobs. Cancelling or reading `old` must leave `live` alone."""
    live_paths, plan, facts = make_run(tmp_path / "live", with_decoder=True)
    gate = held_gate()
    small = two_stage(plan, 2, (Dependency("gate", "afterok"),))
    subs: list[Submission] = []
    try:
        subs = launching.submit_stages(small, live_paths, {"stage-assets": [0, 1], "report": [0, 1]}, facts,
                                       launching.Choice("slurm", "test"), {"gate": [gate]})
        old_paths, _, _ = make_run(tmp_path / "old", with_decoder=True)
        launching.record_jobs(old_paths, launching.Choice("slurm", "test"),
                              [dataclasses.replace(s, time=s.time - 86_400) for s in subs])  # the same ids, a day ago

        said = Console(record=True)
        assert control.cancel(old_paths, said, plan=small) == 0
        assert "nothing to cancel" in said.export_text() and "scancel" not in said.export_text()
        pending = slurmcli.squeue([s.job_id for s in subs])
        assert len(pending) == 4 and {st.state for st in pending.values()} == {"PENDING"}, pending

        old = state.collect(old_paths, small)
        assert not {r.state for r in old.rows} & {"PENDING", "RUNNING"}, [(r.state, r.job_id) for r in old.rows]
        assert {r.state for r in state.collect(live_paths, small).rows} == {"PENDING"}

        said = Console(record=True)
        assert control.cancel(live_paths, said, plan=small) == 0  # the run's own cancel still cancels
        assert "scancel " + " ".join(sorted((s.job_id for s in subs), key=int)) in said.export_text()
    finally:
        slurmcli.scancel([gate] + [s.job_id for s in subs])


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_status_without_a_controller_shows_the_stored_states(tmp_path: Path, slurm_cluster: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller stops answering (here: the client pointed at a port nothing listens on, as a controller
    that is down looks to squeue): status shows the last states it stored, and says they are not live."""
    paths, plan, facts = make_run(tmp_path, with_decoder=True)
    gate = held_gate()
    small = two_stage(plan, 2, (Dependency("gate", "afterok"),))
    subs: list[Submission] = []
    try:
        subs = launching.submit_stages(small, paths, {"stage-assets": [0, 1], "report": [0, 1]}, facts,
                                       launching.Choice("slurm", "test"), {"gate": [gate]})
        assert status.status(paths, Console(record=True), plan=small) == 0  # answered: stored
        assert paths.status_json.is_file()
        conf = Path(os.environ["SLURM_CONF"]).read_text()
        dead = tmp_path / "dead" / "slurm.conf"
        dead.parent.mkdir()
        dead.write_text("\n".join("SlurmctldPort=6999" if ln.startswith("SlurmctldPort=") else ln
                                  for ln in conf.splitlines()) + "\n")
        monkeypatch.setenv("SLURM_CONF", str(dead))
        said = Console(record=True, width=300)
        assert status.status(paths, said, plan=small) == 1
        text = said.export_text()
        assert "the Slurm controller does not answer (" in text and "not live ones" in text, text
        assert text.count("PENDING") >= 1 and "Unable to contact slurm controller" in text, text
        monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    finally:
        monkeypatch.setenv("SLURM_CONF", slurm_cluster)
        slurmcli.scancel([gate] + [s.job_id for s in subs])


def test_resume_reruns_a_complete_task_whose_result_file_is_gone(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An evaluation file deleted after its task completed (the report then lists a missing shard) is resumed:
    the task's marker alone no longer counts, and resume drops it so the task really runs again."""
    paths, plan, _ = make_run(tmp_path, executor="local")
    for s in plan.stages:
        for t in range(s.tasks):
            mark_done(paths, s.name, t)
            if s.name in ("infer", "evaluate", "merge"):
                f = control._result_file(plan, paths, s.name, t)
                assert f is not None
                atomic_write_json(f, {})
    assert control.incomplete(plan, paths) == {} and control.lost(plan, paths) == {}
    last = plan.stage("evaluate").tasks - 1
    gone = control._result_file(plan, paths, "evaluate", last)
    assert gone is not None
    gone.unlink()
    assert control.lost(plan, paths) == {"evaluate": [last]}
    torn = control._result_file(plan, paths, "infer", 0)
    assert torn is not None
    torn.write_text('{"step": 1, "na')  # cut short: as lost as a deleted one
    assert control.lost(plan, paths) == {"infer": [0], "evaluate": [last]}
    atomic_write_json(torn, {})
    assert control.incomplete(plan, paths) == {"evaluate": [last], "report": [0]}
    sent: list[dict[str, list[int]]] = []
    monkeypatch.setattr(launching, "submit_stages", lambda plan, paths, todo, *a: sent.append(todo) or [])
    con = Console(record=True, width=400)
    assert control.resume(paths, con) == {"evaluate": [last], "report": [0]} == sent[0]
    assert not paths.marker("evaluate", last).exists() and paths.marker("evaluate", 0).exists()
    assert "has changed since submit" not in con.export_text()
    paths.spec_toml.write_text(paths.spec_toml.read_text() + "\n# a later edit\n")  # resume reads spec.json
    gone.unlink(missing_ok=True)
    con = Console(record=True, width=400)
    control.resume(paths, con)
    assert f"note: {paths.spec_toml} has changed since submit and is not read" in con.export_text()


def test_a_resumed_local_task_reads_pending_until_the_driver_reaches_it(tmp_path: Path) -> None:
    """The previous round's CANCELLED (or a report's COMPLETED, whose marker resume dropped) must not show for a
    task that was just resubmitted: it is PENDING until the new driver gets to it, not submitted if that
    driver ends first; its earlier attempt's time still counts."""
    from harness.launch import local

    paths, plan, _ = make_run(tmp_path, executor="local")
    atomic_write_json(paths.local_state_json, {"stages": {
        "tokenize": {"0": {"state": "CANCELLED", "reason": "DependencyNeverSatisfied", "job_id": ""}},
        "report": {"0": {"state": "COMPLETED", "job_id": "7", "start": 10.0, "end": 14.0}}}})
    local._queue(paths, {"tokenize": [0], "report": [0]}, 1)
    entries = local._entries(paths)
    for stage in ("tokenize", "report"):
        (row, *_) = local.stage_rows(paths, entries[stage], stage, 1, alive=True)
        assert (row.state, row.reason) == ("PENDING", "resubmitted (round 1); the driver has not reached it")
        (row, *_) = local.stage_rows(paths, entries[stage], stage, 1, alive=False)
        assert (row.state, row.reason) == ("NOT_SUBMITTED", "the driver ended before reaching it")
    assert entries["report"]["0"]["earlier_s"] == 4.0


def test_runs_lists_every_run_when_the_controller_does_not_answer(tmp_path: Path, no_slurm: None) -> None:
    """A Slurm run among local ones, no controller: `harness runs` still lists every run (the Slurm one from its
    markers, its torn status.json taken as none stored) and says why, where it once printed only squeue's error."""
    slurm_paths, plan, _ = make_run(tmp_path / "a")
    launching.record_jobs(slurm_paths, launching.Choice("slurm", "test"),
                          [Submission("stage-assets", "101", ((0, 1),), False, 1.0)])
    mark_done(slurm_paths, "stage-assets", 0)
    slurm_paths.status_json.write_text('{"time": 1, "stages": {"tokenize": [')
    local_paths, _, _ = make_run(tmp_path / "b", executor="local")
    workdir = tmp_path / "all"
    workdir.mkdir()
    for p in (slurm_paths, local_paths):
        p.root.rename(workdir / p.root.name)
    con = Console(record=True, width=300)
    assert status.runs(workdir, con) == 0
    text = con.export_text()
    rows = [ln for ln in text.splitlines() if "ops-" in ln]
    assert len(rows) == 2 and "unreadable" not in text, text
    assert f"1/{sum(s.tasks for s in plan.stages)} completed" in text and "unknown" in text
    assert "the Slurm controller does not answer (" in " ".join(text.split()), text


@pytest.mark.parametrize("value", ["abc", None, -3, True])
def test_plan_json_facts_of_the_wrong_kind_are_a_damaged_record(tmp_path: Path, value: object) -> None:
    """An edited plan.json fact fails in one line naming the file, never a traceback deep in planning nor (a
    negative count) a silently different plan."""
    from harness.core import rundir
    from harness.core.atomic import read_json

    paths, _, _ = make_run(tmp_path, executor="local")
    record = read_json(paths.plan_json)
    record["facts"]["num_inputs"] = value
    atomic_write_json(paths.plan_json, record)
    with pytest.raises(HarnessError) as e:
        rundir.read_facts(paths)
    assert str(paths.plan_json) in str(e.value) and "num_inputs" in str(e.value)


def test_a_run_whose_unfinished_tasks_were_cancelled_reads_cancelled() -> None:
    """A user's `harness cancel RUN finetune`: finetune and the tasks waiting on it are CANCELLED; the run read
    "failed", as if a task had ended badly."""
    from harness.launch.backend import TaskState
    from harness.ops.state import RunState, StageState

    def run(*states: str) -> RunState:
        return RunState(RunPaths(Path("/r")), "slurm", (StageState("s", tuple(TaskState("s", i, st)
                                                                            for i, st in enumerate(states))),))

    assert status.verdict(run("COMPLETED", "CANCELLED", "CANCELLED")) == "cancelled"
    assert status.verdict(run("COMPLETED", "FAILED", "CANCELLED")) == "failed"
    assert status.verdict(run("COMPLETED", "NOT_SUBMITTED")) == "incomplete"


def test_logs_of_a_task_that_never_ran_says_so(tmp_path: Path) -> None:
    """`harness logs` of a task cancelled (or never sent) before it started said it "may still be pending"."""
    paths, _, _ = make_run(tmp_path, executor="local")
    atomic_write_json(paths.local_state_json, {"stages": {"tokenize": {"0": {
        "state": "CANCELLED", "job_id": "7", "reason": "cancelled before it started",
        "stdout": "logs/tokenize/7/7_0_log.out"}}}})
    with pytest.raises(HarnessError) as e:
        control.show_logs(paths, "tokenize", 0, Console(record=True))
    assert "does not exist (yet); the task is CANCELLED (cancelled before it started) and wrote no log" in \
        str(e.value), str(e.value)
