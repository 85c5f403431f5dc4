"""Infrastructure failures retried, a task's own failures not: the pure classifier on real-looking texts, the
retry decision and record, what status and the report show, the spec key and the sbatch flag it sets, and a
worker outside Slurm that never retries. On the local cluster: tests/test_faults.py (a node taken down under a
running task)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from harness import cli
from harness.core import plan as plan_mod
from harness.core import retries
from harness.core import spec as spec_mod
from harness.core.paths import RunPaths
from harness.launch import retry
from harness.launch.backend import TaskState
from harness.ops import state, status
from harness.ops.state import StageState

# ------------------------------------------------------------------------------------------ the classifier
NODE_LEVEL = {  # text -> whether the task's own node is excluded from its retry
    "RuntimeError: CUDA error: uncorrectable ECC error encountered\nCUDA kernel errors might be asynchronously "
    "reported at some other API call, so the stacktrace below might be incorrect.": True,
    "torch.AcceleratorError: CUDA error: unspecified launch failure\nCompile with `TORCH_USE_CUDA_DSA` to enable "
    "device-side assertions.": True,
    "RuntimeError: CUDA error: unknown error": True,
    "pynvml.NVMLError_GPUIsLost: GPU is lost": True,
    "NVRM: Xid (PCI:0000:3b:00): 79, pid=2314, GPU has fallen off the bus.": True,
    "harness.core.errors.HarnessError: gpu7: finetune asks for GPUs (finetune.gpus_per_node = 8 in run.toml) but "
    "sees none: torch.cuda.is_available() is false with CUDA_VISIBLE_DEVICES='0,1'; check the node's NVIDIA "
    "driver and the job's GPU allocation": True,
    "[rank3]:[E1206 10:01:02.123456 ProcessGroupNCCL.cpp:632] [Rank 3] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=4021, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600043 "
    "milliseconds before timing out.": False,
    "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, "
    "unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5\nncclSystemError: System "
    "call (e.g. socket, malloc) or external library call failed or device error.": False,
    "RuntimeError: NCCL communicator was aborted on rank 1.": False,
}
OWN_FAILURES = [
    "ValueError: tokenize.batch_size must divide the shard",
    "FileNotFoundError: [Errno 2] No such file or directory: '/data/clip_007.mp4'",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
    "79.11 GiB of which 1.06 GiB is free.",
    "RuntimeError: CUDA error: device-side assert triggered",
    "KeyError: 'visual_input'",
    "av.error.InvalidDataError: [Errno 1094995529] Invalid data found when processing input: 'broken.mp4'",
    "",
]


@pytest.mark.parametrize("text", list(NODE_LEVEL))
def test_a_node_level_failure_is_recognised(text: str) -> None:
    cause = retries.node_cause(text)
    assert cause is not None and cause.exclude == NODE_LEVEL[text], text
    assert "\n" not in cause.what and cause.what  # one line: the one that names the cause


@pytest.mark.parametrize("text", OWN_FAILURES)
def test_a_failure_of_the_tasks_own_code_or_input_is_not(text: str) -> None:
    assert retries.node_cause(text) is None


def test_the_cause_is_found_under_a_wrapping_exception() -> None:
    try:
        try:
            raise RuntimeError("CUDA error: uncorrectable ECC error encountered")
        except RuntimeError as inner:
            raise ValueError("while encoding batch 3") from inner
    except ValueError as e:
        text = retry._text(e)
    cause = retries.node_cause(text)
    assert cause is not None and "ECC" in cause.what and cause.exclude


# ------------------------------------------------------------------------------------------ the decision
def test_node_failures_in_slurms_history_are_counted_once() -> None:
    hist = [("NODE_FAIL", "n1"), ("RUNNING", "n2")]
    first = retries.from_history(hist, ())
    assert first == (retries.Attempt("n1", "NODE_FAIL"),)
    assert retries.from_history(hist, first) == first  # read again by a later attempt: no second record
    again = retries.from_history([("NODE_FAIL", "n1"), ("NODE_FAIL", "n2"), ("RUNNING", "n3")], first)
    assert [a.node for a in again] == ["n1", "n2"]


def test_requeues_that_are_not_node_failures_count_nothing() -> None:
    hist = [("REQUEUED", "n1"), ("PREEMPTED", "n2"), ("TIMEOUT", "n1"), ("RUNNING", "n3")]
    assert retries.from_history(hist, ()) == ()
    worker_recorded = (retries.Attempt("n1", "CUDA error: unspecified launch failure", "7_0", 1.0),)
    assert retries.from_history(hist, worker_recorded) == worker_recorded  # its REQUEUED line is not a second


def test_the_limit() -> None:
    one, two, three = (retries.Attempt(f"n{i}", "NODE_FAIL") for i in (1, 2, 3))
    assert retries.may_retry((), 0) and not retries.may_retry((one,), 0)
    assert retries.may_retry((one, two), 2) and not retries.may_retry((one, two, three), 2)
    assert retries.summary("tokenize", 0, (one,), 2) == "tokenize[0]: retried 1/2 (NODE_FAIL on n1)"
    assert retries.summary("tokenize", 0, (one, two, three), 2) == \
        "tokenize[0]: retried 2/2 (NODE_FAIL on n1; NODE_FAIL on n2; NODE_FAIL on n3, no retries left)"
    why = retries.over_limit("merge", 0, (one,), 0, "merge.retries")
    assert why == ("merge[0]: 1 infrastructure failure(s) (NODE_FAIL on n1), merge.retries = 0 retries allowed: "
                   "not retried again")


# ------------------------------------------------------------------------------------------ record, status, report
def _recorded(root: Path) -> RunPaths:
    paths = RunPaths(root)
    retries.save(paths.attempts("tokenize", 1), "tokenize", 1, (retries.Attempt("n2", "NODE_FAIL", "41_1", 5.0),),
                 2)
    return paths


def test_the_record_round_trips_and_lists_only_failed_tasks(tmp_path: Path) -> None:
    paths = _recorded(tmp_path)
    attempts, limit = retries.read(paths.attempts("tokenize", 1))
    assert attempts == (retries.Attempt("n2", "NODE_FAIL", "41_1", 5.0),) and limit == 2
    assert json.loads(paths.attempts("tokenize", 1).read_text())["stage"] == "tokenize"
    assert retries.read(paths.attempts("tokenize", 0)) == ((), 0)
    assert retries.run_lines(paths, ["stage-assets", "tokenize", "merge"]) == \
        ["tokenize[1]: retried 1/2 (NODE_FAIL on n2)"]


def test_status_shows_each_retry(tmp_path: Path) -> None:
    from test_report import make_results

    paths = _recorded(make_results(tmp_path)[0].root)
    rows = tuple(TaskState("tokenize", t, "COMPLETED") for t in range(2))
    con = Console(record=True, width=200)
    con.print(status.view(state.RunState(paths, "slurm", (StageState("tokenize", rows),))))
    assert "infrastructure retry: tokenize[1]: retried 1/2 (NODE_FAIL on n2)" in con.export_text()


def test_the_report_shows_each_retry(tmp_path: Path) -> None:
    from harness.report import build as report
    from test_report import make_results

    paths, plan, _ = make_results(tmp_path)
    _recorded(paths.root)
    rep = report.build(paths, plan.spec, [], plan.training)
    assert rep.retries == ("tokenize[1]: retried 1/2 (NODE_FAIL on n2)",)
    assert "tokenize[1]: retried 1/2 (NODE_FAIL on n2)" in report.markdown(rep)
    assert report.to_json(rep)["retries"] == list(rep.retries)


# ------------------------------------------------------------------------------------------ the key
def _spec(tmp_path: Path, text: str) -> spec_mod.RunSpec:
    (tmp_path / "run.toml").write_text('[data]\nvideos = "clips"\n' + text)
    return spec_mod.load(tmp_path / "run.toml")


def test_retries_default_two_and_its_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = _spec(tmp_path, "")
    assert s.tokenize.retries == 2 and s.finetune.retries == 2 and s.assets.retries == 2
    (tmp_path / "bad.toml").write_text('[data]\nvideos = "clips"\n[tokenize]\nretries = 11\n')
    assert cli.main(["validate", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "tokenize.retries" in err and "[0, 10]" in err


def test_a_stage_with_retries_is_requeueable_one_without_is_not(tmp_path: Path) -> None:
    facts = plan_mod.Facts(num_inputs=10, max_array_size=1001, nodes_available=1)
    default = plan_mod.build(_spec(tmp_path, ""), facts)
    assert all(s.requeue for s in default.stages)
    off = plan_mod.build(_spec(tmp_path, "[tokenize]\nretries = 0\n[finetune]\nretries = 0\n"), facts)
    assert not off.stage("tokenize").requeue
    assert off.stage("finetune").requeue  # its checkpoint-then-requeue on a time limit needs it whatever retries


# ------------------------------------------------------------------------------------------ outside Slurm
def test_outside_slurm_a_node_level_failure_is_raised_not_retried(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    paths = RunPaths(tmp_path)
    s = _spec(tmp_path, "")
    retry.begin(paths, s, "tokenize", 0)  # no Slurm: nothing to count
    err = RuntimeError("CUDA error: uncorrectable ECC error encountered")
    assert retry.after_failure(paths, s, "tokenize", 0, err) is None  # the caller re-raises it: the task fails
    assert not paths.attempts("tokenize", 0).exists()
