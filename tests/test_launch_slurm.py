"""The backbone against the project's real local Slurm cluster: submit, dependencies, arrays split at
MaxArraySize, cancelled dependents, distinct run dirs, local fallback. No Slurm command is faked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import specs
from harness.core import plan, spec
from harness.core.atomic import read_json
from harness.core.stages import IMPORT_IMAGE
from harness.core.stages import NAMES as ALL_NAMES
from harness.launch import slurm, slurmcli
from harness.launch.backend import TaskState
from harness.lib import synth
from harness.ops import submit as launching

pytestmark = pytest.mark.slurm
NAMES = tuple(n for n in ALL_NAMES if n != IMPORT_IMAGE)
"""The stages of a run without a registry image (import-image is not planned)."""
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}


def write_spec(tmp: Path, encoder: str, extra: specs.Layer = None) -> Path:
    clips = tmp / "videos"
    if not clips.exists():
        synth.make_clips(clips, 8)
    return specs.write(tmp / "run.toml",
                       specs.tiny_run(tmp, name="t", videos=clips, hf=tmp / "hf", tokenizer=encoder),
                       {"finetune": {"max_steps": 4, "save_every": 2}}, extra)


def wait_final(job_ids: list[str], timeout: float = 120.0) -> dict[str, TaskState]:
    """Poll sacct until every task of these jobs is final (sacct lags squeue by ~1 s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = slurmcli.squeue(job_ids)
        states = slurmcli.sacct(job_ids)
        if not queued and states and all(s.state in FINAL for s in states.values()):
            return states
        time.sleep(0.5)
    raise AssertionError(f"jobs {job_ids} not final after {timeout}s: {slurmcli.sacct(job_ids)}")


def test_failed_stage_cancels_every_dependent(slurm_cluster: str, tmp_path: Path) -> None:
    """stage-assets fails on a tokenizer directory that does not exist; nothing stays PENDING."""
    res = launching.submit(write_spec(tmp_path, str(tmp_path / "no-such-tokenizer")), "slurm")
    assert res.choice.executor == "slurm"
    ids = {s.stage: s.job_id for s in res.submissions}
    assert list(ids) == list(NAMES)
    states = wait_final(list(ids.values()))
    by_stage = {stage: {k: v.state for k, v in states.items() if k.split("_")[0] == jid}
                for stage, jid in ids.items()}
    assert set(by_stage["stage-assets"].values()) == {"FAILED"}
    for stage in NAMES[1:-1]:
        assert by_stage[stage] and set(by_stage[stage].values()) == {"CANCELLED"}, (stage, by_stage[stage])
    # report is afterany: it still runs, and reports the failure rather than failing itself.
    assert set(by_stage["report"].values()) == {"COMPLETED"}
    err = next((tmp_path / "runs").glob("t-*/logs/stage-assets/*/*_0_log.err"))
    assert "no-such-tokenizer" in err.read_text()


def test_sbatch_receives_the_rendered_script(slurm_cluster: str, tmp_path: Path) -> None:
    """What sbatch received for each stage (submitit keeps the submitted file as <job>_submission.sh) is byte for
    byte `slurm.script`, the function `harness plan --out` and the golden files (test_plan) render through."""
    tok = synth.write_tokenizer(tmp_path / "tok")
    res = launching.submit(write_spec(tmp_path, str(tok)), "slurm")
    try:
        parents = {s.stage: [s.job_id] for s in res.submissions}
        assert len(parents) == len(res.submissions) == len(NAMES)  # one chunk per stage here
        for sub in res.submissions:
            sent = (res.paths.logs(sub.stage) / sub.job_id / f"{sub.job_id}_submission.sh").read_text()
            assert sent == slurm.script(res.plan, res.plan.stage(sub.stage), res.paths, parents, 0), sub.stage
            assert f"#SBATCH --job-name=t.{sub.stage}\n" in sent
    finally:
        slurmcli.scancel([s.job_id for s in res.submissions])


def test_sbatch_variables_of_the_shell_do_not_override_the_scripts(slurm_cluster: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch lets SBATCH_* override #SBATCH lines: a shell's SBATCH_ARRAY_INX=0 would submit one task of each
    array (the others then read as never run), SBATCH_TIMELIMIT would cut every stage's limit."""
    tok = synth.write_tokenizer(tmp_path / "tok")
    monkeypatch.setenv("SBATCH_ARRAY_INX", "0")
    monkeypatch.setenv("SBATCH_TIMELIMIT", "1")
    res = launching.submit(write_spec(tmp_path, str(tok)), "slurm")
    try:
        tokenize = next(s for s in res.submissions if s.stage == "tokenize")
        shown = subprocess.run(["scontrol", "show", "job", tokenize.job_id], capture_output=True, text=True,
                               check=True).stdout
        tasks = res.plan.stage("tokenize").tasks
        assert tasks > 1 and f"ArrayTaskId=0-{tasks - 1}" in shown.replace("\n", " ") or \
            all(f"ArrayTaskId={t}" in shown for t in range(tasks)), shown
        limit = res.plan.stage("tokenize").resources.time_min
        assert f"TimeLimit={limit // 60:02d}:{limit % 60:02d}:00" in shown, shown
    finally:
        slurmcli.scancel([s.job_id for s in res.submissions])
    assert os.environ["SBATCH_ARRAY_INX"] == "0"  # the shell's own environment is left as it was


def test_jobs_json_and_run_dir(slurm_cluster: str, tmp_path: Path) -> None:
    tok = synth.write_tokenizer(tmp_path / "tok")
    res = launching.submit(write_spec(tmp_path, str(tok)), "slurm")
    try:
        jobs = read_json(res.paths.jobs_json)
        assert jobs["executor"] == "slurm"
        assert [s["stage"] for s in jobs["submissions"]] == list(NAMES)
        assert jobs["submissions"][1]["tasks"] == [[0, res.plan.stage("tokenize").tasks]]
        assert (res.paths.root.stat().st_mode & 0o777) == 0o700
        frozen = spec.from_dict(read_json(res.paths.spec_json))
        assert frozen.tokenize.shards == res.plan.stage("tokenize").tasks
        assert Path(frozen.data.videos).is_absolute()
    finally:
        slurmcli.scancel([s.job_id for s in res.submissions])


def test_array_split_at_max_array_size_depends_on_all_chunks(slurm_cluster: str, tmp_path: Path) -> None:
    """With MaxArraySize 3, 4 tokenize shards become 2 arrays ([0-2], [3]) and merge waits for both."""
    tok = synth.write_tokenizer(tmp_path / "tok")
    s = spec.absolutize(spec.load(write_spec(tmp_path, str(tok), {"tokenize": {"shards": 4}})), tmp_path)
    facts = plan.Facts(num_inputs=8, max_array_size=3, nodes_available=3)
    p = plan.build(s, facts)
    paths = launching.new_run_dir(Path(s.run.workdir), "split")
    choice = launching.Choice("slurm", "test")
    launching.write_run(paths, "", p, facts, choice)
    from harness.ops.inputs import discover
    from harness.stages.inputs import write_inputs

    write_inputs(paths, discover(s))
    todo = {"stage-assets": [0], "tokenize": list(range(4)), "merge": [0]}
    subs = launching.submit_stages(p, paths, todo, facts, choice)
    tok_ids = [x.job_id for x in subs if x.stage == "tokenize"]
    assert [x.tasks for x in subs if x.stage == "tokenize"] == [((0, 3),), ((3, 4),)]
    merge_id = next(x.job_id for x in subs if x.stage == "merge")
    dep = subprocess.run(["scontrol", "show", "job", merge_id], capture_output=True, text=True).stdout
    for j in tok_ids:
        assert j in dep
    states = wait_final([x.job_id for x in subs], timeout=300)
    assert {v.state for v in states.values()} == {"COMPLETED"}, states
    assert read_json(paths.dataset_summary)["tokenized"] == 8


def test_two_submits_of_one_spec_never_share_a_run_dir(slurm_cluster: str, tmp_path: Path) -> None:
    tok = synth.write_tokenizer(tmp_path / "tok")
    path = write_spec(tmp_path, str(tok))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: launching.submit(path, "slurm"), range(2)))
    try:
        roots = {r.paths.root for r in results}
        assert len(roots) == 2
        ids = [s.job_id for r in results for s in r.submissions]
        assert len(set(ids)) == len(ids) == 14
    finally:
        slurmcli.scancel([s.job_id for r in results for s in r.submissions])


def test_submit_cli_returns_at_once(slurm_cluster: str, tmp_path: Path) -> None:
    tok = synth.write_tokenizer(tmp_path / "tok")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "harness.cli", "submit", str(write_spec(tmp_path, str(tok)))],
                       capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    assert "executor: slurm" in p.stdout and "run t-" in p.stdout
    ids = [ln.split()[-1] for ln in p.stdout.splitlines() if " job " in ln]
    assert len(ids) == 7
    slurmcli.scancel(ids)
    assert took < 30


def test_auto_falls_back_to_local_without_sbatch(no_slurm: None) -> None:
    choice = launching.choose_executor("auto")
    assert choice.executor == "local" and "sbatch not found" in choice.reason


def test_executor_slurm_without_controller_is_a_clear_error(no_slurm: None) -> None:
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError, match="sbatch not found"):
        launching.choose_executor("slurm")
