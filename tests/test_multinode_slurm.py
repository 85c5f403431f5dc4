"""Data x tensor parallel finetune across Slurm nodes, for real, on the project's local cluster.

`harness submit` of a spec with `finetune.nodes = 2` and TP=2 on CPU: the launcher asks for 2 nodes x 2 tasks,
`srun` starts the 4 gloo ranks on two virtual nodes, and each finds the rendezvous from the Slurm environment
alone. The job checkpoints, is requeued with `scontrol requeue` after its first checkpoint, and resumes. Its
per-step losses must equal a run of the same spec, data and seed with the same 4 ranks on one machine (the
stage's own local spawn): the rank layout (TP groups, DP ranks, data order) is identical, so fp32 over gloo
should agree to rounding.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness.core.atomic import read_json
from harness.core.paths import RunPaths
from harness.launch import slurmcli
from harness.stages.finetune.checkpoints import latest_complete
from reliability_helpers import (
    harness,
    job_ids_from,
    run_dir_from,
    sacct_history,
    states_by_stage,
    tiny_spec,
    wait_for,
    wait_stages,
)

pytestmark = pytest.mark.slurm

STEPS, SAVE_EVERY = 8, 2
"""Six steps after the first checkpoint: time for the test to see it and requeue the job while it runs."""
LOSS_TOL = 1e-6
"""Relative tolerance on each step's loss and grad norm (fp32 over gloo; seen: exactly equal)."""

MULTINODE = """
nodes = 2
tensor_parallel = 2
cpus_per_task = 1
global_batch_size = 2
precision = "fp32"
lr = 3e-3
"""


def metrics(paths: RunPaths) -> list[dict[str, Any]]:
    """The optimizer steps' records (validation points left out)."""
    rows = [json.loads(ln) for ln in paths.metrics_jsonl.read_text().splitlines() if ln.strip()]
    return [r for r in rows if "val_loss" not in r]


def single_node_reference(paths: RunPaths, root: Path) -> RunPaths:
    """The same spec on the same merged dataset, its 4 ranks spawned on this one machine, never interrupted."""
    from harness.launch.worker import load_run_spec
    from harness.stages import finetune, ranks

    ref = RunPaths(root)
    ref.root.mkdir(parents=True)
    shutil.copy2(paths.spec_json, ref.spec_json)
    shutil.copytree(paths.dataset_prefix.parent, ref.dataset_prefix.parent)
    spec = load_run_spec(ref)
    ranks.spawn(spec, 0, ref, 4, finetune.run_rank)
    return ref


@pytest.mark.timeout(1800)
def test_dp_x_tp_finetune_over_two_nodes_requeued_equals_one_node(slurm_cluster: str, tmp_path: Path,
                                                                  reliability: Any) -> None:
    spec_file = tiny_spec(tmp_path, name="mnode", shards=1, clips=4, max_steps=STEPS, save_every=SAVE_EVERY,
                          extra="[finetune]" + MULTINODE)
    t0 = time.perf_counter()
    res = harness("submit", str(spec_file), cwd=tmp_path)
    assert res.returncode == 0, (res.stdout, res.stderr)
    ids = job_ids_from(res.stdout)
    paths = RunPaths(run_dir_from(res.stdout, tmp_path / "runs"))
    reliability.add("slurm_jobs_submitted", len(ids))
    ft = ids["finetune"]
    try:
        first = wait_for(lambda: latest_complete(paths), 600, poll=0.1, what="a first complete checkpoint")
        st = slurmcli.squeue([ft]).get(ft)
        assert st is not None and st.state == "RUNNING", (st, "finetune finished before it could be requeued")
        subprocess.run(["scontrol", "requeue", ft], check=True, timeout=30)
        reliability.add("faults_injected")
        reliability.note(f"scontrol requeue of the 2-node finetune (job {ft}) after checkpoint step {first[0]}")
        wait_for(lambda: (q := slurmcli.squeue([ft]).get(ft)) is not None and q.state == "PENDING", 90,
                 poll=0.2, what="the requeued finetune to be pending")
        subprocess.run(["scontrol", "update", f"jobid={ft}", "starttime=now"], check=True, timeout=30)
        wait_stages({"finetune": ft}, ["finetune"], timeout=900)
        assert states_by_stage({"finetune": ft})["finetune"][ft] == "COMPLETED", sacct_history(ft)
    finally:
        slurmcli.scancel(list(ids.values()))
    slurm_s = time.perf_counter() - t0
    hist = sacct_history(ft)
    assert len(hist) > 1 or any("REQUEUED" in h for h in hist), hist
    assert any(re.search(r"\|n\[\d[-,]\d\]$", h) for h in hist), (hist, "not run on two nodes")

    logs = "".join(p.read_text(errors="replace") for p in sorted(paths.logs("finetune").rglob("*_log.*")))
    placed = re.findall(r"finetune rank (\d) of 4 \(local (\d)\) on node (\S+), rendezvous \S+ \(slurm\)", logs)
    assert {int(r) for r, _, _ in placed} == {0, 1, 2, 3} and all(int(r) % 2 == int(lr) for r, lr, _ in placed), placed
    assert len({n for _, _, n in placed}) >= 2, (placed, "the ranks did not run on two Slurm nodes")
    resumed = [int(n) for n in re.findall(r"resumed from \S+ \(step (\d+)\)", logs)]
    assert resumed and resumed[0] >= first[0], (resumed, first, "the requeued job did not resume from a checkpoint")

    rows = metrics(paths)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), rows  # every step once, in order
    assert read_json(paths.checkpoints_json)["steps"] == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))

    t1 = time.perf_counter()
    ref = metrics(single_node_reference(paths, tmp_path / "ref"))
    ref_s = time.perf_counter() - t1
    assert [r["step"] for r in ref] == list(range(1, STEPS + 1))
    worst = 0.0
    for a, b in zip(rows, ref):
        for key in ("loss", "grad_norm"):
            worst = max(worst, abs(a[key] - b[key]) / abs(b[key]))
    print(f"\n2 nodes x 2 ranks (requeued at step {first[0]}, resumed from {resumed[0]}): {slurm_s:.0f} s; "
          f"1 node x 4 ranks: {ref_s:.0f} s; worst relative difference {worst:.2e}")
    for a, b in zip(rows, ref):
        print(f"  step {a['step']}: loss {a['loss']:.9f} vs {b['loss']:.9f}, "
              f"grad_norm {a['grad_norm']:.9f} vs {b['grad_norm']:.9f}")
    assert worst <= LOSS_TOL, [(a["loss"], b["loss"]) for a, b in zip(rows, ref)]
    reliability.add("faults_survived")
