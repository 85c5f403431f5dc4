"""Fault injection against the real local cluster: a tokenize task SIGKILLed mid-shard, a node whose slurmd
dies under a running task (retried by itself, `<stage>.retries`), finetune requeued (preempted) mid-run, and
broken inputs mixed with good ones. Each fault ends in a complete, correct run (or a report naming every bad
input); nothing is faked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import specs
from harness.core.atomic import read_json
from harness.core.paths import RunPaths, is_done
from harness.launch import slurmcli
from harness.lib import synth
from harness.stages.finetune.checkpoints import latest_complete
from reliability_helpers import (
    harness,
    sacct_history,
    states_by_stage,
    submit_partial,
    task_process,
    tiny_spec,
    wait_for,
    wait_stages,
)

pytestmark = pytest.mark.slurm
DATA = ("stage-assets", "tokenize", "merge")
SLURM_RUN = Path(os.environ.get("TMPDIR", "/tmp")) / "harness-slurm" / "run"


def resume_cli(root: Path, cwd: Path) -> dict[str, str]:
    """`harness resume RUN`; returns stage -> new job id."""
    res = harness("resume", str(root), cwd=cwd)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return {ln.split()[0]: ln.split()[2] for ln in res.stdout.splitlines() if ln.startswith("  ") and " job " in ln}


def clean_reference(spec_path: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> RunPaths:
    """The same spec run in-process without faults (the stage functions, no Slurm): the expected bytes."""
    from harness.core import spec as spec_mod
    from harness.launch.worker import run_task
    from harness.ops import submit as launching
    from harness.ops.inputs import discover
    from harness.stages.inputs import write_inputs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = spec_mod.absolutize(spec_mod.load(spec_path), tmp)
    items = discover(spec)
    facts = launching.plan_mod.Facts(num_inputs=len(items), max_array_size=1001, nodes_available=3)
    plan = launching.plan_mod.build(spec, facts)
    paths = launching.new_run_dir(tmp / "clean", "clean")
    launching.write_run(paths, "", plan, facts, launching.Choice("local", "reference"))
    write_inputs(paths, items)
    run_task(str(paths.root), "stage-assets", 0)
    for i in range(plan.stage("tokenize").tasks):
        run_task(str(paths.root), "tokenize", i)
    run_task(str(paths.root), "merge", 0)
    return paths


def same_dataset(a: RunPaths, b: RunPaths) -> None:
    for suffix in (".bin", ".idx"):
        assert Path(f"{a.dataset_prefix}{suffix}").read_bytes() == Path(f"{b.dataset_prefix}{suffix}").read_bytes()
    assert read_json(a.dataset_split) == read_json(b.dataset_split)
    assert read_json(a.dataset_summary)["documents"] == read_json(b.dataset_summary)["documents"]


# ------------------------------------------------------------------------------ (a) SIGKILL mid-shard
@pytest.mark.timeout(240)
def test_sigkill_tokenize_mid_shard_then_resume(slurm_cluster: str, tmp_path: Path, reliability: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path = tiny_spec(tmp_path, name="kill", shards=3, clips=6)
    paths, ids = submit_partial(spec_path, DATA, tmp_path)
    reliability.add("slurm_jobs_submitted", len(ids))
    victim = 1
    tok = ids["tokenize"]
    later: list[str] = list(ids.values())
    try:
        proc = wait_for(lambda: task_process(tok, victim), 90, poll=0.05, what=f"tokenize[{victim}] to start")
        proc.send_signal(signal.SIGSTOP)
        tmp_bin = paths.root / "tokens"
        # single-step the task in 10 ms slices until it is inside the shard: temp files open, manifest absent
        for _ in range(3000):
            if list(tmp_bin.glob(f".*shard-{victim:05d}.bin.*.tmp*")):
                break
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
            proc.send_signal(signal.SIGSTOP)
        assert list(tmp_bin.glob(f".*shard-{victim:05d}.bin.*.tmp*")), "tokenize never opened its shard"
        assert not paths.shard_manifest(victim).exists()
        # SIGKILL the task process itself (as the OOM killer would): `scancel --signal=KILL <job>_<i>` on this
        # Slurm 22.05 cancelled the array task instead, and slurmstepd's SIGCONT + SIGTERM (which submitit's
        # handler ignores) let the stopped task run on and finish its shard before KillWait
        proc.send_signal(signal.SIGKILL)
        reliability.add("faults_injected")
        reliability.note(f"SIGKILL tokenize[{victim}] mid-shard (pid {proc.pid}, job {tok}_{victim})")
        by = wait_stages(ids, list(DATA), timeout=120, tasks={"tokenize": 3})
        assert by["tokenize"][f"{tok}_{victim}"] != "COMPLETED"
        assert by["merge"][ids["merge"]] == "CANCELLED"  # afterok never satisfied; kill-on-invalid-dep
        from harness.launch.backend import load_plan
        from harness.ops import state as ops_state

        row = next(r for r in ops_state.collect(paths, load_plan(paths)).rows
                   if (r.stage, r.task) == ("tokenize", victim))
        assert re.fullmatch(r"killed by signal 9 \(SIGKILL\) on n\d+", row.reason), row  # not its last log line

        # nothing partial looks complete
        from harness.stages import dataset

        assert dataset.verify_shard(paths, victim) is not None and not is_done(paths, "tokenize", victim)
        assert not Path(f"{paths.shard_prefix(victim)}.bin").exists() or \
            dataset.verify_shard(paths, victim) is not None
        assert not paths.dataset_summary.exists()
        others = [i for i in range(3) if i != victim]
        assert all(is_done(paths, "tokenize", i) for i in others)

        new = resume_cli(paths.root, tmp_path)
        later += list(new.values())
        jobs = read_json(paths.jobs_json)["submissions"]
        round1 = {s["stage"]: s["tasks"] for s in jobs if s.get("round") == 1}
        assert round1["tokenize"] == [[victim, victim + 1]], round1  # only the killed index
        wait_stages(new, ["tokenize", "merge"], timeout=120)
        assert states_by_stage(new)["merge"][new["merge"]] == "COMPLETED"
    finally:
        slurmcli.scancel(later)
    assert not list((paths.root / "tokens").glob(".*.tmp*"))  # the killed attempt's temp files are gone
    same_dataset(paths, clean_reference(spec_path, tmp_path, monkeypatch))
    reliability.add("faults_survived")


# ------------------------------------------------------------------------------ (b) node failure
def _slurmd_pid(node: str) -> int:
    return int((SLURM_RUN / f"slurmd-{node}.pid").read_text().split()[0])


def _restore_node(node: str) -> None:
    conf = os.environ["SLURM_CONF"]
    try:
        os.kill(_slurmd_pid(node), 0)
        alive = True
    except (OSError, ValueError):
        alive = False
    if not alive:
        subprocess.run(["slurmd", "-f", conf, "-N", node], check=True, timeout=60)
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, timeout=30)
    wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True,
                                              text=True).stdout or "mix" in subprocess.run(
        ["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True).stdout, 60, poll=0.5,
        what=f"{node} back up")


@pytest.mark.timeout(300)
def test_node_failure_under_a_running_task_is_retried_by_itself(slurm_cluster: str, tmp_path: Path,
                                                                reliability: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A node dies under tokenize[0]: the task runs again on another node with no `harness resume` (Slurm requeues
    it, the restarted task counts the NODE_FAIL against tokenize.retries), the run completes and status says so.
    Beside it, a run whose tokenize[1] fails in its own code (its manifest path blocked) fails once, unretried."""
    spec_path = tiny_spec(tmp_path, name="node", shards=3, clips=9)
    paths, ids = submit_partial(spec_path, DATA, tmp_path)
    own_paths, own_ids = submit_partial(tiny_spec(tmp_path, name="own", shards=2, clips=9), DATA, tmp_path)
    blocker = own_paths.shard_manifest(1)
    blocker.mkdir(parents=True)  # the atomic rename onto it fails: an error of the task, not of its node
    reliability.add("slurm_jobs_submitted", len(ids) + len(own_ids))
    tok, victim, node = ids["tokenize"], 0, ""
    later = list(ids.values()) + list(own_ids.values())
    try:
        proc = wait_for(lambda: task_process(tok, victim), 90, poll=0.05, what="tokenize[0] to start")
        proc.send_signal(signal.SIGSTOP)  # hold it running on its node
        node = slurmcli.squeue([tok])[f"{tok}_{victim}"].node
        assert node and (SLURM_RUN / f"slurmd-{node}.pid").exists(), node
        os.kill(_slurmd_pid(node), signal.SIGKILL)  # the node's daemon dies ...
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=reliability-test"],
                       check=True, timeout=30)  # ... and the controller declares it down (SlurmdTimeout, sooner)
        proc.send_signal(signal.SIGKILL)  # a dead node runs nothing
        reliability.add("faults_injected")
        reliability.note(f"node {node} failed (slurmd killed, node DOWN) under tokenize[{victim}]")
        hist = wait_for(lambda: [h for h in sacct_history(f"{tok}_{victim}") if "NODE_FAIL" in h], 60, poll=0.5,
                        what="NODE_FAIL")
        reliability.note(f"node failure reported by Slurm: {hist}; retried without resume")
        # Slurm requeued the task; it starts again once its begin time (the credential lifetime) passes
        by = wait_stages(ids, list(DATA), timeout=230)
        assert by["merge"][ids["merge"]] == "COMPLETED", (by, sacct_history(f"{tok}_{victim}"))
        own = wait_stages(own_ids, list(DATA), timeout=30)
    finally:
        slurmcli.scancel(later)
        if node:
            _restore_node(node)
    attempts = [h.split("|") for h in sacct_history(f"{tok}_{victim}")]
    assert [a[1] for a in attempts] == ["NODE_FAIL", "COMPLETED"] and attempts[0][2] == node, attempts
    assert attempts[1][2] != node, attempts  # the retry ran on another node
    times = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", f"{tok}_{victim}", "-o", "End,Start"],
                           capture_output=True, text=True, timeout=30).stdout.split()
    gap = slurmcli.epoch(times[1].split("|")[1]) - slurmcli.epoch(times[0].split("|")[0])
    reliability.note(f"the retry started {gap:.0f} s after the node failure (Slurm's hold on a requeued job)")
    assert not any(s.get("round") for s in read_json(paths.jobs_json)["submissions"])  # no resume
    line = f"tokenize[{victim}]: retried 1/2 (NODE_FAIL on {node})"
    res = harness("status", str(paths.root), cwd=tmp_path)
    assert line in " ".join(res.stdout.split()), res.stdout
    summary = read_json(paths.dataset_summary)
    assert summary["tokenized"] == 9 and summary["shards"] == 3
    _restart_counts_against_the_limit(paths, tok, victim, node, monkeypatch)
    # a failure of the task's own code: FAILED once, never requeued, no retry recorded
    assert own["tokenize"][f"{own_ids['tokenize']}_1"] == "FAILED", own
    assert [h.split("|")[1] for h in sacct_history(f"{own_ids['tokenize']}_1")] == ["FAILED"]
    assert not own_paths.attempts("tokenize", 1).exists()
    reliability.add("faults_survived")


def _restart_counts_against_the_limit(paths: RunPaths, tok: str, victim: int, node: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The check a restarted task makes first, against the real accounting of the task just retried: counted
    once however often it is read, and a stage allowing no retry stops there, naming the failure and the key."""
    import dataclasses

    from harness.core.errors import HarnessError
    from harness.core.rundir import read_spec
    from harness.launch import retry

    for var, value in (("SLURM_ARRAY_JOB_ID", tok), ("SLURM_ARRAY_TASK_ID", str(victim)),
                       ("SLURM_RESTART_COUNT", "1"), ("SLURM_PROCID", "1")):
        monkeypatch.setenv(var, value)
    spec = read_spec(paths)
    before = paths.attempts("tokenize", victim).read_bytes()
    retry.begin(paths, spec, "tokenize", victim)
    assert paths.attempts("tokenize", victim).read_bytes() == before
    none = dataclasses.replace(spec, tokenize=dataclasses.replace(spec.tokenize, retries=0))
    with pytest.raises(HarnessError, match=re.escape(f"tokenize[{victim}]: 1 infrastructure failure(s) (NODE_FAIL "
                                                     f"on {node}), tokenize.retries = 0 retries allowed")):
        retry.begin(paths, none, "tokenize", victim)


@pytest.mark.timeout(150)
def test_a_requeued_task_leaves_its_node(slurm_cluster: str, tmp_path: Path) -> None:
    """What a task that sees a node-level failure does to itself (`harness.launch.retry`): requeue and exclude its
    node; here on a plain job, which must run again elsewhere (its begin-time hold dropped by the test, as an
    operator may: the task itself cannot, Slurm sets the hold after the task's processes end)."""
    proc = subprocess.run(["sbatch", "--parsable", "--requeue", "--time=3", "-o", str(tmp_path / "%j.out"),
                           "--wrap", "sleep 170"], capture_output=True, text=True, check=True, timeout=30)
    job = proc.stdout.strip().split(";")[0]
    try:
        first = wait_for(lambda: (q := slurmcli.squeue([job]).get(job)) is not None and q.state == "RUNNING"
                         and q.node, 90, what="the job to run")
        from harness.launch import retry

        assert retry.requeue_elsewhere(job, first)
        assert slurmcli.excluded_nodes(job) == [first]
        assert not retry.requeue_elsewhere(job, first)  # a second rank's requeue is refused, not an error
        assert slurmcli.excluded_nodes(job) == [first]
        wait_for(lambda: "BeginTime" in subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True,
                                                       text=True).stdout, 60, what="the requeue's begin-time hold")
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
        again = wait_for(lambda: (q := slurmcli.squeue([job]).get(job)) is not None and q.state == "RUNNING"
                         and q.node, 60, what="the requeued job to run again")
        assert again != first, (first, again)
    finally:
        slurmcli.scancel([job])


# ------------------------------------------------------------------------------ (c) preemption of finetune
@pytest.mark.timeout(300)
def test_finetune_requeued_mid_run_resumes_from_checkpoint(slurm_cluster: str, tmp_path: Path,
                                                           reliability: Any) -> None:
    steps, save_every = 12, 3
    spec_file = tiny_spec(tmp_path, name="pre", shards=1, clips=4, max_steps=steps, save_every=save_every)
    paths, ids = submit_partial(spec_file, DATA + ("finetune",), tmp_path)
    reliability.add("slurm_jobs_submitted", len(ids))
    ft = ids["finetune"]
    try:
        first = wait_for(lambda: latest_complete(paths), 200, poll=0.1, what="a first complete checkpoint")
        st = slurmcli.squeue([ft]).get(ft)
        assert st is not None and st.state == "RUNNING", (st, "finetune finished before it could be preempted")
        subprocess.run(["scontrol", "requeue", ft], check=True, timeout=30)
        reliability.add("faults_injected")
        reliability.note(f"scontrol requeue finetune (job {ft}) after checkpoint step {first[0]}")
        # Slurm holds a requeued job on a begin time ~2 minutes ahead; an operator may release it at once
        wait_for(lambda: (q := slurmcli.squeue([ft]).get(ft)) is not None and q.state == "PENDING", 90,
                 poll=0.2, what="the requeued finetune to be pending")
        subprocess.run(["scontrol", "update", f"jobid={ft}", "starttime=now"], check=True, timeout=30)
        wait_stages({"finetune": ft}, ["finetune"], timeout=240)
        assert states_by_stage({"finetune": ft})["finetune"][ft] == "COMPLETED", sacct_history(ft)
    finally:
        slurmcli.scancel(list(ids.values()))
    hist = sacct_history(ft)
    assert any("REQUEUED" in h or "PREEMPTED" in h or "CANCELLED" in h for h in hist) or len(hist) > 1, hist
    rows = [read_json_line(ln) for ln in paths.metrics_jsonl.read_text().splitlines() if ln.strip()]
    got = [r["step"] for r in rows if "val_loss" not in r]
    assert got == list(range(1, steps + 1)), got  # continuous: every step once, in order
    done = read_json(paths.checkpoints_json)
    assert done["steps"] == list(range(save_every, steps + 1, save_every)), done
    logs = "".join(p.read_text(errors="replace") for p in paths.logs("finetune").rglob("*_log.*"))
    assert "resumed from" in logs, "the requeued attempt did not resume from a checkpoint"
    # the SIGTERM of the requeue came after checkpoint `first`: the trainer saved one more on the signal and
    # the requeued attempt resumed from it, not from the last scheduled one
    resumed = [int(n) for n in re.findall(r"resumed from \S+ \(step (\d+)\)", logs)]
    assert resumed and resumed[0] > first[0], (resumed, first, "no checkpoint was written on the signal")
    reliability.add("faults_survived")


def read_json_line(line: str) -> dict[str, Any]:
    import json

    return json.loads(line)


# ------------------------------------------------------------------------------ (d) bad inputs
@pytest.mark.timeout(300)
def test_bad_inputs_are_reported_by_name_and_good_ones_processed(slurm_cluster: str, tmp_path: Path,
                                                                 reliability: Any) -> None:
    videos = tmp_path / "mixed"
    good = synth.make_clips(videos, 4)
    bad = synth.make_bad_files(videos)  # corrupt, truncated, zero-byte, text-as-mp4
    from harness.lib.video import write_mp4

    write_mp4(videos / "short.mp4", synth.smooth_clip(1, 40, 40, 7), 25)  # one frame: padded, not bad
    (videos / "dangling.mp4").symlink_to(videos / "no-such-target.mp4")
    locked = videos / "locked.mp4"
    good[0].rename(locked)
    locked.chmod(0)  # root reads it anyway: counted as good when running as root
    (videos / "subdir.mp4").mkdir()  # a directory with a video suffix: not an input, reported as such
    bad_names = {p.name for p in bad} | {"dangling.mp4", "subdir.mp4"}
    expect_good = 3 + 1 + 1  # clips 1..3, short.mp4, locked.mp4 (when root)
    as_root = os.geteuid() == 0
    if not as_root:
        bad_names.add("locked.mp4")
        expect_good -= 1

    # Video2World jsonl: good lines plus every kind of broken line
    base = tiny_spec(tmp_path, name="badv", shards=2, videos=videos)
    v2w_dir = tmp_path / "v2w"
    clips = synth.make_clips(v2w_dir, 3, seed=5)
    import json

    lines = [json.dumps({"prompt": "a red ball", "visual_input": c.name}) for c in clips]
    lines += ['{"prompt": "broken", "visual_input": ', json.dumps({"prompt": "no video"}),
              json.dumps({"prompt": "gone", "visual_input": "missing.mp4"}),
              json.dumps({"prompt": "again", "visual_input": clips[0].name}), "[1, 2]",
              json.dumps({"prompt": 3, "visual_input": clips[1].name})]
    jsonl = v2w_dir / "data.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    t5 = synth.write_text_encoder(tmp_path / "t5")
    synth.write_hf_snapshot(tmp_path / "hf", synth.TEXT_ENCODER_REPO, {f.name: f for f in t5.iterdir() if f.is_file()})
    v2w_spec = tiny_spec(tmp_path, name="badj", shards=2,
                         extra={**specs.V2W, "data": {"videos": None, "jsonl": str(jsonl)}})  # None: drop videos

    p1, ids1 = submit_partial(base, DATA, tmp_path)
    p2, ids2 = submit_partial(v2w_spec, DATA, tmp_path)
    reliability.add("slurm_jobs_submitted", len(ids1) + len(ids2))
    try:
        by1 = wait_stages(ids1, list(DATA), timeout=200)
        by2 = wait_stages(ids2, list(DATA), timeout=200)
    finally:
        slurmcli.scancel(list(ids1.values()) + list(ids2.values()))
    assert set(by1["merge"].values()) == {"COMPLETED"} and set(by2["merge"].values()) == {"COMPLETED"}, (by1, by2)

    s1 = read_json(p1.dataset_summary)
    skipped1 = {s["name"]: s["reason"] for s in s1["skipped"]}
    reliability.add("bad_inputs_tried", len(bad_names))
    reliability.add("bad_inputs_reported", len(bad_names & set(skipped1)))
    assert set(skipped1) == bad_names, skipped1
    assert skipped1["subdir.mp4"] == "a directory named like a video: not an input, and not searched"
    assert s1["tokenized"] == expect_good and s1["videos_in"] == expect_good + len(bad_names)
    names = {Path(d["path"]).name for d in s1["documents"]}
    assert {"short.mp4", "clip_001.mp4", "clip_002.mp4", "clip_003.mp4"} <= names
    assert ("locked.mp4" in names) == as_root
    reliability.note(f"chmod 000 input: {'read anyway (tests run as root)' if as_root else 'reported'}")

    s2 = read_json(p2.dataset_summary)
    kinds = {int(s["reason"].split(":")[0].split()[1]): s["kind"] for s in s2["skipped"]}
    assert kinds == {4: "not valid JSON", 5: "missing key", 6: "visual_input not found",
                     7: "duplicate visual_input", 8: "not a JSON object", 9: "bad value"}, s2["skipped"]
    assert s2["tokenized"] == 3 and s2["videos_in"] == 9
    reliability.add("bad_inputs_tried", 6)
    reliability.add("bad_inputs_reported", len(kinds))
    reliability.add("faults_injected", 2)
    reliability.add("faults_survived", 2)
