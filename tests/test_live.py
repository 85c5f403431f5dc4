"""Live progress: the live table's rendering and the non-terminal output, one line per change."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.paths import RunPaths
from harness.launch.backend import TaskState
from harness.ops import live
from harness.ops.state import RunState, StageState

REPO = Path(__file__).resolve().parents[1]


def quick_plan() -> plan_mod.Plan:
    spec = spec_mod.load(REPO / "configs" / "quickstart.toml")
    return plan_mod.build(spec, plan_mod.Facts(num_inputs=12, max_array_size=1001, nodes_available=1))


def run_state(root: Path, states: dict[str, list[str]], reasons: dict[tuple[str, int], str] | None = None,
              logs: dict[tuple[str, int], str] | None = None) -> RunState:
    stages = tuple(StageState(name, tuple(TaskState(name, i, st, job_id=f"10{i}",
                                                    reason=(reasons or {}).get((name, i), ""),
                                                    log=(logs or {}).get((name, i), ""))
                                          for i, st in enumerate(sts)))
                   for name, sts in states.items())
    return RunState(RunPaths(root), "slurm", stages)


def test_non_terminal_output_is_one_line_per_change(tmp_path: Path) -> None:
    a = run_state(tmp_path, {"stage-assets": ["RUNNING"], "tokenize": ["PENDING", "PENDING"]})
    b = run_state(tmp_path, {"stage-assets": ["COMPLETED"], "tokenize": ["PENDING", "PENDING"]})
    c = run_state(tmp_path, {"stage-assets": ["COMPLETED"], "tokenize": ["COMPLETED", "FAILED"]},
                  reasons={("tokenize", 1): "cannot decode: bad.mp4"})
    assert live.changes(None, a, 0) == ["[0:00] stage-assets: 0/1 done (1 RUNNING)",
                                        "[0:00] tokenize: 0/2 done (2 PENDING)"]
    assert live.changes(a, a, 2) == []  # nothing changed: nothing printed
    assert live.changes(a, b, 65) == ["[1:05] stage-assets: 1/1 done (1 COMPLETED)"]
    assert live.changes(b, c, 3725) == ["[1:02:05] tokenize: 1/2 done (1 COMPLETED, 1 FAILED)",
                                        "[1:02:05] failed: tokenize[1] FAILED: cannot decode: bad.mp4"]
    assert live.changes(c, c, 3730) == []  # a failure is reported once


def test_live_table_renders_bars_states_and_task_progress(tmp_path: Path) -> None:
    plan = quick_plan()
    paths = RunPaths(tmp_path)
    paths.metrics_jsonl.parent.mkdir(parents=True)
    recs = [{"step": s, "loss": 5.0 - s / 10, "tokens_per_s": 1000.0, "lr": 1e-3} for s in (11, 12)]
    paths.metrics_jsonl.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs) + '{"step": 13, "lo')
    log = tmp_path / "logs" / "tok_1_0_log.out"
    log.parent.mkdir()
    log.write_text("")
    log.with_suffix(".err").write_text("INFO tokenize[1]: 2/6 inputs\nINFO tokenize[1]: 4/6 inputs\n")
    rs = run_state(tmp_path, {"stage-assets": ["COMPLETED"], "tokenize": ["COMPLETED", "RUNNING"],
                              "finetune": ["RUNNING"], "infer": ["PENDING"] * 3},
                   logs={("tokenize", 1): str(log)})
    extras = live.extras_of(rs, plan)
    # shard 0 of 2 holds inputs 0, 2, ..., 10 (6 of 12), shard 1 logged 4 of its 6
    assert extras["tokenize"] == "10/12 clips"
    # ETA: 18 steps left x global batch 2 x the sample length, at the last logged 1,000 tokens/s
    left = (30 - 12) * 2 * plan.token_math.sample_length / 1000.0
    assert extras["finetune"] == f"step 12/30, loss 3.800, ETA {live._fmt(left)}"  # the torn last line is skipped
    val = [{"step": s, "val_loss": v, "val_videos": 1} for s, v in ((10, 4.5), (12, 4.4))]
    paths.metrics_jsonl.write_text("".join(json.dumps(r) + "\n" for r in [val[0], *recs, val[1]]))
    eta = f"ETA {live._fmt(left)}"
    assert live.extras_of(rs, plan)["finetune"] == f"step 12/30, loss 3.800, val loss 4.400 at 12, {eta}"
    paths.metrics_jsonl.write_text("".join(json.dumps(r) + "\n" for r in [val[0], *recs]))
    assert live.extras_of(rs, plan)["finetune"] == f"step 12/30, loss 3.800, val loss 4.500 at 10, {eta}"
    paths.metrics_jsonl.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))
    con = Console(record=True, width=160, color_system=None)
    con.print(live.view(rs, extras, 75.0))
    text = con.export_text()
    assert f"run {tmp_path.name} (slurm), 1:15 elapsed: running" in text
    rows = {ln.split("│")[1].strip(): ln for ln in text.splitlines() if ln.count("│") >= 5}
    assert all(s in rows["tokenize"] for s in ("1/2", "1 COMPLETED, 1 RUNNING", "10/12 clips"))
    assert "0/3" in rows["infer"] and "3 PENDING" in rows["infer"]
    assert "step 12/30, loss 3.800" in rows["finetune"]
    assert "━" in rows["tokenize"]  # the bar
    failed = run_state(tmp_path, {"tokenize": ["FAILED"]}, reasons={("tokenize", 0): "OOM on node n2"})
    con = Console(record=True, width=160, color_system=None)
    con.print(live.view(failed, {}, 5.0))
    assert "failed: tokenize[0] FAILED: OOM on node n2" in con.export_text()


def test_no_progress_before_the_first_step(tmp_path: Path) -> None:
    plan = quick_plan()
    rs = run_state(tmp_path, {"tokenize": ["PENDING", "PENDING"], "finetune": ["PENDING"]})
    assert live.extras_of(rs, plan) == {"tokenize": "", "finetune": ""}
