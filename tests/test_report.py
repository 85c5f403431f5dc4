"""The run report renders the numbers its producers wrote: the files here are written in the formats of
merge (dataset/summary.json), tokenize (shard manifests' stats), finetune (metrics.jsonl) and evaluate
(eval/step-*.json), with realistic values, and every number shown is checked against them."""

from __future__ import annotations

import json
import statistics
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

import specs
from harness import cli
from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json, read_json
from harness.core.paths import RunPaths, mark_done, new_run_dir
from harness.ops import submit as launching
from harness.report import build as report


def spec_text(root: Path, extra: specs.Layer = None) -> str:
    """The default (cosmos) model, so the report's throughput and MFU figures are the real model's."""
    return specs.text({"run": {"name": "rep", "workdir": f"{root}/runs", "results_dir": f"{root}/results"},
                       "data": {"videos": f"{root}/videos"}, "tokenize": {"shards": 2},
                       "finetune": {"max_steps": 40, "save_every": 10}}, extra)


PSNR = {10: 24.8123, 20: 27.4511, 30: 28.9034, 40: 28.1207}
SSIM = {10: 0.6012, 20: 0.7107, 30: 0.7561, 40: 0.7498}


def make_results(root: Path, skip_eval: int | None = None, tokenbench: bool = False,
                 val: dict[int, float] | None = None) -> tuple[RunPaths, plan_mod.Plan, list[dict]]:
    """`tokenbench`: each shard file also holds a TokenBench-protocol result, PSNR 1.5 dB below (as with
    evaluate.protocol = "both"); `val`: step -> validation loss, logged after the torn line as a resumed
    attempt appends."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    text = spec_text(root)
    (root / "run.toml").write_text(text)
    spec = spec_mod.absolutize(spec_mod.load(root / "run.toml"), root)
    facts = plan_mod.Facts(num_inputs=12, max_array_size=1001, nodes_available=1)
    plan = plan_mod.build(spec, facts)
    paths = new_run_dir(root / "runs", "rep")
    choice = launching.Choice("local", "test")
    launching.write_run(paths, text, plan, facts, choice)
    launching.record_jobs(paths, choice, [])
    atomic_write_json(paths.dataset_summary, {
        "recipe": "base", "shards": 2, "videos_in": 12, "tokenized": 10, "tokens": 10 * 1281,
        "skipped": [{"index": 3, "path": "/data/broken.mp4", "name": "broken.mp4", "reason": "no video stream",
                     "kind": "unreadable"},
                    {"index": 7, "path": "/data/empty.mp4", "name": "empty.mp4", "reason": "0 frames",
                     "kind": "empty"}],
        "skipped_by_kind": {"unreadable": ["broken.mp4"], "empty": ["empty.mp4"]},
        "tokens_per_video": 1280, "sample_length": 1281, "grid": "5x8x32", "dtype": "uint16",
        "splits": {"train": 8, "validation": 1, "test": 1},
        "documents": [{"doc": i, "path": f"/data/clip{i}.mp4", "tokens": 1281} for i in range(10)]})
    for s, (clips, secs) in enumerate(((6, 2.5), (4, 1.5))):
        atomic_write_json(paths.shard_manifest(s), {"shard": s, "stats": {"clips": clips, "seconds": secs,
                                                                          "clips_per_s": clips / secs}})
    metrics = [{"step": i, "loss": 11.2 * 0.93 ** i, "lr": 1e-4, "grad_norm": 2.0 / i,
                "tokens_per_s": 900.0 + 7 * i + (300 if i == 1 else 0), "tflops": 0.9 + 0.01 * i}
               for i in range(1, 41)]
    paths.metrics_jsonl.parent.mkdir(parents=True, exist_ok=True)
    paths.metrics_jsonl.write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 41, "lo'
                                   + "".join("\n" + json.dumps({"step": s, "val_loss": v, "val_videos": 1})
                                             for s, v in (val or {}).items()))
    for c, (step, cache) in enumerate(((10, "fp8"), (20, None))):  # the infer stage's manifest (one predates kv_cache)
        key = plan_mod.infer_task(plan.spec, plan_mod.infer_task_index(plan.spec, c, 0)).key
        atomic_write_json(paths.infer_manifest(step, key), {
            "step": step, "shard": 0, "shards": 1, "input_range": [0, 2], "inputs": 2, "names": ["clip0", "clip1"],
            "batches": [{"batch": 2, "new_tokens": 768, "prefill_s": 1.0, "decode_s": 4.0, "tokens_per_s": 383.5}],
            "time": 0.0, "generated": 2, "grid": "5x8x32", "device": "cuda:0",
            **({"kv_cache": cache} if cache else {})})
    for step in plan.checkpoint_steps:
        if step == skip_eval:
            continue
        videos = [{"name": f"clip{i}.mp4", "psnr": PSNR[step] + i * 0.1, "ssim": SSIM[step]} for i in range(2)]
        tb = {"protocol": "tokenbench", "resize": "", "frames": "tokenbench protocol: the first 17 frames",
              "videos": [{**v, "psnr": v["psnr"] - 1.5} for v in videos],
              "mean": {"psnr": PSNR[step] - 1.5, "ssim": SSIM[step], "videos": 2}}
        atomic_write_json(paths.eval_json(step), {"step": step, "frames": "generated frames 9-16 vs reference 9-16",
                                                  "videos": videos, "mean": {"psnr": PSNR[step], "ssim": SSIM[step],
                                                                             "videos": 2},
                                                  "protocol": "aligned", "resize": "upstream",
                                                  **({"other_protocols": [tb]} if tokenbench else {})})
    return paths, plan, metrics


def line_with(text: str, *needles: str) -> str:
    return next(ln for ln in text.splitlines() if all(n in ln for n in needles))


def test_tables_show_the_producers_numbers(tmp_path: Path) -> None:
    paths, plan, metrics = make_results(tmp_path)
    rep = report.build(paths, plan.spec, [], plan.training)
    con = Console(record=True, width=220)
    report.render(rep, con)
    text = con.export_text()

    steady = metrics[1:]  # the first step pays for warm-up
    tflops = statistics.median(m["tflops"] for m in steady)
    assert rep.training is not None and rep.training.steps == 40 and rep.training.logged == 40  # torn line skipped
    row = line_with(text, "│ 40 ")
    assert f"{metrics[-1]['loss']:.4f}" in row
    assert f"{statistics.median(m['tokens_per_s'] for m in steady):,.1f}" in row
    assert f"{tflops:.3g}" in row and f"{100 * tflops / 989.0:.3g}%" in row
    for step in plan.checkpoint_steps:
        row = line_with(text, f"│ {step} ", f"{PSNR[step]:.2f}")
        assert f"{SSIM[step]:.4f}" in row
        assert ("*" in row) == (step == max(PSNR, key=PSNR.get))
    assert line_with(text, "│ 2 ", "│ 10 ", "4.0", "2.5")  # tokenize: 10 clips in 4.0 s -> 2.5 clips/s
    # generation: 2 infer tasks, 4 videos x 768 tokens in 8 s of decoding -> 384 tokens/s per task
    assert line_with(text, "│ 2 ", "│ 4 ", "3,072", "8.0", "2.0", "384.0", "fp8+model")
    assert "broken.mp4" in line_with(text, "skipped ")
    assert "│ videos_in " in text and "│ 12 " in line_with(text, "videos_in")
    assert "documents" not in text  # one row per video stays out of the table
    assert text.count("generated frames 9-16 vs reference 9-16") == 1  # the same for every checkpoint: once


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_results_files_json_markdown_and_plots(tmp_path: Path) -> None:
    paths, plan, metrics = make_results(tmp_path)
    failures = [{"stage": "infer", "task": 2, "state": "OUT_OF_MEMORY", "exit_code": "0:125",
                 "reason": "", "log": "/x/logs/infer/7_2/7_2_0_log.out"}]
    rep = report.build(paths, plan.spec, failures, plan.training)
    out = report.results_dir(plan.spec, paths)
    files = report.write(rep, out)
    assert out == tmp_path / "results" / paths.run_id
    assert {f.name for f in files} == {"report.json", "report.md", "loss.png", "eval.png", "report.html"}
    doc = json.loads((out / "report.json").read_text())
    assert doc["best_checkpoint"] == 30
    assert [c["psnr"] for c in doc["checkpoints"]] == [PSNR[s] for s in plan.checkpoint_steps]
    assert doc["training"]["final_loss"] == metrics[-1]["loss"]
    assert doc["loss_curve"][0] == [1, metrics[0]["loss"]] and len(doc["loss_curve"]) == 40
    assert doc["tokenize"]["clips_per_s"] == 2.5 and doc["failures"] == failures
    md = (out / "report.md").read_text()
    assert f"| 30 | {PSNR[30]:.2f} * | {SSIM[30]:.4f} * | aligned, resize upstream | 2 | * |" in md
    assert all(c["protocol"] == "aligned, resize upstream" and c["other_protocols"] == {}
               for c in doc["checkpoints"])
    assert "| generated frames 9-16 vs reference 9-16 |" in md
    assert "| infer | 2 | OUT_OF_MEMORY | 0:125 |" in md and "![eval.png](eval.png)" in md
    for name in ("loss.png", "eval.png"):
        data = (out / name).read_bytes()
        w, h = png_size(data)
        assert w > 300 and h > 200 and len(data) > 5_000


def test_missing_results_are_listed_not_invented(tmp_path: Path) -> None:
    paths, plan, _ = make_results(tmp_path, skip_eval=40)
    paths.metrics_jsonl.unlink()
    rep = report.build(paths, plan.spec, [], plan.training)
    assert rep.training is None and rep.loss_curve == ()
    assert [c.step for c in rep.checkpoints] == [10, 20, 30]
    assert set(rep.missing) == {str(paths.metrics_jsonl), str(paths.eval_json(40))}
    files = report.write(rep, tmp_path / "out")
    assert {f.name for f in files} == {"report.json", "report.md", "eval.png", "report.html"}


@pytest.mark.timeout(60)
def test_report_stage_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.report import stage

    paths, plan, metrics = make_results(tmp_path)
    for s in plan.stages:
        for t in range(s.tasks):
            if (s.name, t) not in (("evaluate", 3), ("report", 0)):
                mark_done(paths, s.name, t)
    stage.run(plan.spec, 0, paths)
    doc = json.loads((tmp_path / "results" / paths.run_id / "report.json").read_text())
    assert [(f["stage"], f["task"], f["state"]) for f in doc["failures"]] == [("evaluate", 3, "INCOMPLETE")]

    monkeypatch.setenv("COLUMNS", "250")
    assert cli.main(["report", paths.run_id, "--workdir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert f"{metrics[-1]['loss']:.4f}" in out and f"{PSNR[30]:.2f}" in out
    assert "NOT_SUBMITTED" in line_with(out, "evaluate", "│ 3 ")  # no job ever ran it in this run dir
    assert str(tmp_path / "results" / paths.run_id / "report.md") in out


def test_report_shows_only_the_selected_metrics(tmp_path: Path) -> None:
    """evaluate.metrics = ['ssim']: no PSNR column, value or plot, and the best checkpoint is the best SSIM."""
    import dataclasses

    paths, plan, _ = make_results(tmp_path)
    spec = dataclasses.replace(plan.spec, evaluate=dataclasses.replace(plan.spec.evaluate, metrics=("ssim",)))
    rep = report.build(paths, spec, [], plan.training)
    con = Console(record=True, width=220)
    report.render(rep, con)
    text = con.export_text()
    assert "SSIM" in text and "PSNR" not in text and f"{PSNR[30]:.2f}" not in text
    assert rep.best is not None and rep.best.step == max(SSIM, key=SSIM.get) == 30
    doc = report.to_json(rep)
    assert doc["metrics"] == ["ssim"] and all("psnr" not in c for c in doc["checkpoints"])
    md = report.markdown(rep)
    assert f"| 40 | {SSIM[40]:.4f} | aligned, resize upstream | 2 |  |" in md
    assert rep.training is not None and rep.training.last_step == plan.training.last_step == 40


def test_both_protocols_side_by_side_each_number_named(tmp_path: Path) -> None:
    """evaluate.protocol = "both": every checkpoint row shows the aligned means with their protocol and the
    TokenBench means under columns that name it; the best checkpoint is the main protocol's; report.json keeps both."""
    paths, plan, _ = make_results(tmp_path, tokenbench=True)
    rep = report.build(paths, plan.spec, [], plan.training)
    md = report.markdown(rep)
    assert ("| step | PSNR (dB) | SSIM | protocol | PSNR (dB) tokenbench | SSIM tokenbench | videos tokenbench "
            "| videos | best |") in md
    assert (f"| 30 | {PSNR[30]:.2f} * | {SSIM[30]:.4f} * | aligned, resize upstream | {PSNR[30] - 1.5:.2f} | "
            f"{SSIM[30]:.4f} | 2 | 2 | * |") in md
    row = next(c for c in report.to_json(rep)["checkpoints"] if c["step"] == 30)
    assert row["psnr"] == PSNR[30] and row["protocol"] == "aligned, resize upstream"
    assert row["other_protocols"] == {"tokenbench": {"psnr": PSNR[30] - 1.5, "ssim": SSIM[30], "videos": 2}}
    doc = json.loads(paths.eval_json(20).read_text())  # clip1 scored aligned, but TokenBench could not take it
    tb = doc["other_protocols"][0]
    tb["videos"], tb["failed"] = tb["videos"][:1], [{"name": "clip1.mp4", "error": "shape mismatch"}]
    atomic_write_json(paths.eval_json(20), doc)
    md = report.markdown(report.build(paths, plan.spec, [], plan.training))
    assert f"| 20 | {PSNR[20]:.2f} | {SSIM[20]:.4f} | aligned, resize upstream | {PSNR[20] - 1.5:.2f} | " in md
    assert line_with(md, "| 20 |").endswith(f"| {SSIM[20]:.4f} | 1 | 2 |  |")
    assert "## videos not compared under tokenbench (1, in none of its means)" in md
    assert "| 20 | clip1.mp4 | failed: shape mismatch |" in md and "## videos not compared (" not in md


def sharded_run(tmp_path: Path, max_inputs: int) -> tuple[plan_mod.Plan, RunPaths]:
    """A run of the default model whose infer inputs are split into shards of 3 (no results written yet)."""
    (tmp_path / "videos").mkdir()
    text = spec_text(tmp_path, {"infer": {"max_inputs": max_inputs, "inputs_per_task": 3, "inputs": "/data/eval"}})
    (tmp_path / "run.toml").write_text(text)
    spec = spec_mod.absolutize(spec_mod.load(tmp_path / "run.toml"), tmp_path)
    return plan_mod.build(spec, plan_mod.Facts(num_inputs=12)), new_run_dir(tmp_path / "runs", "rep")


def test_sharded_checkpoints_aggregate_all_videos_and_name_missing_shards(tmp_path: Path) -> None:
    """Evaluate fanned out over 3 input shards: a checkpoint's means are over every per-video record of the
    shards that were evaluated (not a mean of shard means), and a shard without its file is named."""
    plan, paths = sharded_run(tmp_path, 7)
    assert plan_mod.infer_shards(plan.spec.infer) == 3 and plan.stage("evaluate").tasks == 12
    per_video: dict[int, list[dict]] = {}
    for c, step in enumerate(plan.checkpoint_steps):
        for k in range(3):
            t = plan_mod.infer_task(plan.spec, plan_mod.infer_task_index(plan.spec, c, k))
            if (step, k) == (20, 1):
                continue
            videos = [{"name": f"v{i}", "psnr": 20.0 + step / 10 + i * 0.37, "ssim": 0.5 + i / 50 + step / 1000,
                       "identical": False, "alignment": "sidecar", "context_frames": 5}
                      for i in range(t.start, t.stop)]
            per_video.setdefault(step, []).extend(videos)
            shard_mean = {"psnr": statistics.mean(v["psnr"] for v in videos), "videos": len(videos)}
            atomic_write_json(paths.eval_json(step, t.key), {"step": step, "shard": k, "videos": videos,
                                                             "mean": shard_mean, "failed": []})
    failures = [{"stage": "infer", "task": 4, "state": "CANCELLED", "reason": "harness cancel"},
                {"stage": "evaluate", "task": 4, "state": "CANCELLED", "reason": "DependencyNeverSatisfied"}]
    rep = report.build(paths, plan.spec, failures, plan.training)
    for c in rep.checkpoints:
        vids = per_video[c.step]
        assert c.videos == len(vids) == (7 if c.step != 20 else 4)
        assert c.value("psnr") == pytest.approx(statistics.mean(v["psnr"] for v in vids), abs=1e-12)
        assert c.value("ssim") == pytest.approx(statistics.mean(v["ssim"] for v in vids), abs=1e-12)
        assert (c.shards, c.shards_planned) == ((3, 3) if c.step != 20 else (2, 3))
    (lost,) = rep.missing_shards
    assert (lost.step, lost.shard, lost.task) == (20, 1, 4)
    assert "infer[4] CANCELLED (harness cancel)" in lost.why and "evaluate[4] CANCELLED" in lost.why
    assert [m for m in rep.missing if "/eval/" in m] == [str(paths.eval_json(20, 1))]
    con = Console(record=True, width=250)
    report.render(rep, con)
    text = con.export_text()
    assert "2/3" in line_with(text, "│ 20 ", "│ 4 ") and "3/3" in line_with(text, "│ 30 ", "│ 7 ")
    assert "harness cancel" in line_with(text, "│ 20 ", "│ 1 ", "│ 4 ")
    doc = report.to_json(rep)
    assert doc["missing_shards"] == [{"step": 20, "shard": 1, "task": 4, "why": lost.why}]


def test_a_run_stopped_early_shows_the_step_reached_and_the_planned_one(tmp_path: Path) -> None:
    paths, plan, metrics = make_results(tmp_path)
    paths.metrics_jsonl.write_text("".join(json.dumps(m) + "\n" for m in metrics[:10]))  # failed after step 10
    rep = report.build(paths, plan.spec, [], plan.training)
    con = Console(record=True, width=220)
    report.render(rep, con)
    text = con.export_text()
    assert "step reached" in text and "planned steps" in text
    row = line_with(text, "stopped before the planned end")
    assert row.split("│")[1].strip().startswith("10 ") and row.split("│")[2].strip() == "40", row


def test_cut_and_empty_prompts_are_named(tmp_path: Path) -> None:
    paths, plan, _ = make_results(tmp_path)
    summary = json.loads(paths.dataset_summary.read_text())
    summary["prompt_notes"] = [
        {"index": 2, "path": "/data/clip2.mp4", "name": "clip2.mp4",
         "note": "prompt of 731 T5 tokens cut to the first 512"},
        {"index": 5, "path": "/data/clip5.mp4", "name": "clip5.mp4",
         "note": "empty prompt: the video is conditioned on no text"}]
    atomic_write_json(paths.dataset_summary, summary)
    con = Console(record=True, width=220)
    report.render(report.build(paths, plan.spec, [], plan.training), con)
    text = con.export_text()
    assert "prompt of 731 T5 tokens cut to the first 512" in line_with(text, "clip2.mp4")
    assert "empty prompt" in line_with(text, "clip5.mp4")


VAL = {0: 11.0, 10: 8.0, 20: 7.1, 30: 7.3, 40: 7.6}
"""Validation loss per validation point: lowest at 20, while PSNR is best at 30."""


def test_validation_loss_beside_psnr_with_its_own_best(tmp_path: Path) -> None:
    paths, plan, metrics = make_results(tmp_path, val=VAL)
    rep = report.build(paths, plan.spec, [], plan.training)
    assert rep.training is not None and rep.training.logged == 40  # validation points are not optimizer steps
    assert rep.val_curve == tuple(VAL.items()) and len(rep.loss_curve) == 40
    out = report.results_dir(plan.spec, paths)
    report.write(rep, out)
    doc = json.loads((out / "report.json").read_text())
    assert doc["val_curve"] == [list(p) for p in VAL.items()]
    assert [c["val_loss"] for c in doc["checkpoints"]] == [VAL[s] for s in plan.checkpoint_steps]
    assert (doc["best_checkpoint"], doc["best_checkpoint_val_loss"]) == (30, 20)
    assert [c["step"] for c in doc["checkpoints"] if c["best_val_loss"]] == [20]
    md = (out / "report.md").read_text()
    assert "## checkpoints (* best of its column)" in md and "| val loss | videos | best |" in md
    assert f"| 20 | {PSNR[20]:.2f} | {SSIM[20]:.4f} | aligned, resize upstream | 7.1000 * | 2 |  |" in md
    assert f"| 30 | {PSNR[30]:.2f} * | {SSIM[30]:.4f} * | aligned, resize upstream | 7.3000 | 2 | * |" in md
    assert doc["best_checkpoints"] == {"psnr": [30], "ssim": [30], "val_loss": [20]}
    w, h = png_size((out / "loss.png").read_bytes())
    assert w > 300 and h > 200


def test_loss_plot_has_both_curves_and_the_seed_band(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.report import files

    paths, plan, metrics = make_results(tmp_path, val=VAL)
    fig = files.loss_figure(report.build(paths, plan.spec, [], plan.training), plt)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "seed's target for the real models (6-7)", "training loss", "validation loss"]
    train, val = ax.get_lines()
    assert list(train.get_xdata()) == list(range(1, 41)) and list(train.get_ydata()) == [m["loss"] for m in metrics]
    assert list(val.get_xdata()) == list(VAL) and list(val.get_ydata()) == list(VAL.values())
    (band,) = ax.patches
    assert (band.get_y(), band.get_y() + band.get_height()) == (6.0, 7.0)  # a Rectangle spanning the x axis
    plt.close(fig)


def test_baseline_is_the_first_row_labelled_and_never_the_best(tmp_path: Path) -> None:
    """infer.baseline = "on" without model.checkpoint: step 0 is a random initialisation, shown first with its
    label in every form; better numbers than every checkpoint still do not make it the best checkpoint."""
    from harness.core.atomic import read_json
    from harness.launch.backend import load_plan

    paths, _, _ = make_results(tmp_path)
    spec = read_json(paths.spec_json)
    assert spec["model"]["checkpoint"] == ""
    spec["infer"]["baseline"] = "on"
    atomic_write_json(paths.spec_json, spec)
    plan = load_plan(paths)
    videos = [{"name": f"clip{i}.mp4", "psnr": 40.0 + i, "ssim": 0.9} for i in range(2)]
    atomic_write_json(paths.eval_json(0), {"step": 0, "videos": videos, "mean": {"psnr": 40.5, "ssim": 0.9,
                                                                                 "videos": 2}})
    rep = report.build(paths, plan.spec, [], plan.training)
    assert [c.step for c in rep.checkpoints] == [0, *PSNR]
    assert rep.checkpoints[0].label == "0 (random initialisation)" and rep.best is not None
    assert rep.best.step == max(PSNR, key=PSNR.get)
    doc = report.to_json(rep)
    assert doc["checkpoints"][0]["baseline"] == "random initialisation" and doc["checkpoints"][0]["psnr"] == 40.5
    assert doc["checkpoints"][1]["baseline"] is None and not doc["checkpoints"][0]["best"]
    assert "| 0 (random initialisation) | 40.50 | 0.9000 |" in report.markdown(rep)
    spec["model"]["checkpoint"] = "org/pretrained"
    atomic_write_json(paths.spec_json, spec)
    assert report.build(paths, load_plan(paths).spec, [], plan.training).checkpoints[0].label == "0 (pretrained)"


PREDICTED = {10: (22.0, 0.55), 20: (25.5, 0.61), 30: (24.9, 0.60), 40: (25.1, 0.64)}
"""(PSNR, SSIM) over the predicted frames alone per checkpoint: best at 20 and 40, while all frames are best at 30."""


def with_predicted(paths: RunPaths, predicted: dict[int, tuple[float, float]]) -> None:
    """The evaluate files as evaluate writes them where a sidecar names the context frames: each video's
    `predicted` scores and the means over them."""
    for step, (psnr, ssim) in predicted.items():
        d = read_json(paths.eval_json(step))
        for v in d["videos"]:
            v.update(alignment="sidecar", context_frames=9, predicted={"frames": 8, "psnr": psnr, "ssim": ssim,
                                                                       "identical": False})
        d["mean"].update(predicted_psnr=psnr, predicted_ssim=ssim)
        atomic_write_json(paths.eval_json(step), d)


def test_predicted_frames_columns_each_with_its_best(tmp_path: Path) -> None:
    """The checkpoint table and report.json show PSNR and SSIM over all compared frames and over the predicted
    frames only, and mark the best checkpoint by each of the four and by the validation loss."""
    paths, plan, _ = make_results(tmp_path, val=VAL)
    with_predicted(paths, PREDICTED)
    rep = report.build(paths, plan.spec, [], plan.training)
    md = report.markdown(rep)
    assert ("| step | PSNR (dB) | SSIM | predicted PSNR (dB) | predicted SSIM | protocol | val loss | videos | best |"
            in md)
    assert f"| 20 | {PSNR[20]:.2f} | {SSIM[20]:.4f} | 25.50 * | 0.6100 | aligned, resize upstream | 7.1000 * |" in md
    assert f"| 40 | {PSNR[40]:.2f} | {SSIM[40]:.4f} | 25.10 | 0.6400 * | aligned, resize upstream | 7.6000 |" in md
    doc = report.to_json(rep)
    row = next(c for c in doc["checkpoints"] if c["step"] == 20)
    assert (row["predicted_psnr"], row["predicted_ssim"], row["best_of"]) == (25.5, 0.61, ["predicted_psnr",
                                                                                          "val_loss"])
    assert doc["best_checkpoints"] == {"psnr": [30], "ssim": [30], "predicted_psnr": [20], "predicted_ssim": [40],
                                       "val_loss": [20]}
    assert doc["best_checkpoint"] == 30  # the checkpoint the report picks stays the first metric's


def test_report_of_a_slurm_run_where_slurm_is_gone_builds_from_the_run_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A Slurm run reported where no Slurm client runs (the run directory copied off the cluster): the report
    is built from the files, tasks with a completion marker COMPLETED, and a note says the states are not live."""
    from harness import cli
    from harness.core.paths import mark_done
    from harness.core.rundir import Submission

    paths, plan, _ = make_results(tmp_path)
    launching.record_jobs(paths, launching.Choice("slurm", "test"),
                          [Submission(s.name, str(100 + i), ((0, s.tasks),), s.tasks > 1, 1.0)
                           for i, s in enumerate(plan.stages)])
    mark_done(paths, "stage-assets", 0)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no squeue, no sacct
    assert cli.main(["report", str(paths.root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the Slurm controller does not answer" in out and "no states were stored" in out, out
    doc = json.loads((tmp_path / "results" / paths.run_id / "report.json").read_text())
    failed = {(f["stage"], f["task"]) for f in doc["failures"]}
    assert ("stage-assets", 0) not in failed and ("finetune", 0) in failed


def test_videos_in_no_mean_and_shards_without_inputs_are_named(tmp_path: Path) -> None:
    """A pair that failed, a video with no reference, one not generated (or skipped by infer) are in no mean:
    the report names each with why, beside the means; a shard infer had no inputs for (the test split came out
    shorter than planned) is a missing shard that says so, not a shard counted with 0 videos."""
    plan, paths = sharded_run(tmp_path, 6)
    for c, step in enumerate(plan.checkpoint_steps):
        for k in range(2):
            t = plan_mod.infer_task(plan.spec, plan_mod.infer_task_index(plan.spec, c, k))
            videos = [{"name": f"v{i}", "psnr": 20.0 + i, "ssim": 0.5} for i in range(t.start, t.stop)]
            doc: dict = {"step": step, "shard": k, "videos": videos, "mean": {"psnr": 21.0, "videos": 3}}
            if (step, k) == (30, 1):
                doc = {"step": step, "shard": k, "videos": [], "mean": {"videos": 0}, "failed": []}
            if (step, k) == (40, 0):
                doc = {**doc, "videos": videos[:1], "failed": [{"name": "v1", "error": "infer skipped this input: "
                                                                                       "empty file"}],
                       "missing_reference": ["v2"], "missing_generated": ["v9"]}
            atomic_write_json(paths.eval_json(step, t.key), doc)
    rep = report.build(paths, plan.spec, [], plan.training)
    assert [(u.step, u.video, u.why) for u in rep.uncompared] == [
        (40, "v1", "failed: infer skipped this input: empty file"), (40, "v2", "no reference found"),
        (40, "v9", "not generated")]
    (empty,) = rep.missing_shards
    assert (empty.step, empty.shard, empty.why) == (30, 1, report.EMPTY_LISTED)  # infer.inputs lists fewer
    split = replace(plan.spec, infer=replace(plan.spec.infer, inputs=""))  # the test split: some did not tokenize
    assert report.build(paths, split, [], plan.training).missing_shards[0].why == report.EMPTY_SHARD
    by_step = {c.step: c for c in rep.checkpoints}
    assert (by_step[30].videos, by_step[30].shards) == (3, 1) and by_step[40].videos == 4
    md = (report.markdown(rep))
    assert "## videos not compared (3, in no mean)" in md and "| 40 | v2 | no reference found |" in md
    assert "no inputs: the input list ended before this shard" in md
    assert report.to_json(rep)["uncompared"][0] == {"step": 40, "video": "v1",
                                                    "why": "failed: infer skipped this input: empty file"}


def test_names_and_errors_are_printed_as_written_not_as_markup(tmp_path: Path) -> None:
    """An error text holding `[/old]` (a path) once crashed the terminal render before any file was written;
    `[g]` and `[bold]` vanished from notes and names. Every cell is literal text."""
    paths, plan, _ = make_results(tmp_path)
    step = plan.checkpoint_steps[0]
    doc = json.loads(paths.eval_json(step).read_text())
    doc["videos"][0]["name"] = "[bold]x"
    doc["frames"] = "generated frame g is reference frame reference_frames[g]"
    doc["failed"] = [{"name": "clip_x", "error": "VideoError: /data/take[/old]/clip_x.mp4: empty file"}]
    atomic_write_json(paths.eval_json(step), doc)
    rep = report.build(paths, plan.spec, [], plan.training)
    con = Console(record=True, width=250)
    report.render(rep, con)
    text = con.export_text()
    assert "reference_frames[g]" in text and "take[/old]/clip_x.mp4" in text, text


def test_a_file_where_the_results_folder_goes_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file system refusing a write (here a file named as the run's results folder) is one line naming the
    path and exit 2, not a traceback; the file is kept."""
    from harness import cli

    paths, plan, _ = make_results(tmp_path)
    blocker = report.results_dir(plan.spec, paths)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("keep")
    assert cli.main(["report", str(paths.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0], err
    assert blocker.read_text() == "keep"


def test_manifests_that_are_not_objects_and_a_binary_tail_in_the_metrics_log(tmp_path: Path) -> None:
    """An infer manifest `[1, 2]`, a tokenize manifest `null`, and bytes that are not UTF-8 appended to the
    metrics log (a torn write) once each stopped the report with a traceback; they now leave their rows out."""
    paths, plan, metrics = make_results(tmp_path)
    atomic_write_json(paths.infer_manifest(10, plan_mod.infer_task(plan.spec, 0).key), [1, 2])
    paths.shard_manifest(0).write_text("null")
    with paths.metrics_jsonl.open("ab") as fh:
        fh.write(b"\n\xff\xfe\x00garbage\x80\n")
    rep = report.build(paths, plan.spec, [], plan.training)
    assert rep.training is not None and rep.training.logged == len(metrics)
    assert rep.tokenize is not None and rep.tokenize.shards == 1
    assert rep.generation is not None and rep.generation.tasks == 1


def test_markdown_cells_stay_one_line_and_literal() -> None:
    from harness.report.tables import markdown_tables

    lines = markdown_tables([("t", ["video"], [["two\nlines | <script>alert(1)</script>"]])])
    assert lines[4] == "| two lines \\| &lt;script&gt;alert(1)&lt;/script&gt; |" and lines[5] == ""


@pytest.mark.parametrize("content, why", [
    ('{"step": 10, "mean": {"psnr": 14.3, "videos": 2}}', "no 'videos' list of objects"),
    ('{"step": 10, "videos": [1, "x", null], "mean": {}}', "no 'videos' list of objects"),
    ('[1, 2, 3]', "a JSON list, not an object"),
    ('{"step": 10, "videos": []}', "no 'mean' object"),
    ('{"step": 10, "vid', "unreadable"),
])
def test_a_damaged_evaluation_file_is_named_as_damaged(tmp_path: Path, content: str, why: str) -> None:
    """Such files read as a shard with no inputs, as "no result file" although it was there, or as a row of
    '-' means; each is now a missing shard whose reason says the file is damaged, and the file is listed."""
    paths, plan, _ = make_results(tmp_path)
    paths.eval_json(10).write_text(content)
    rep = report.build(paths, plan.spec, [], plan.training)
    (lost,) = [m for m in rep.missing_shards if m.step == 10]
    assert lost.why == f"its result file is damaged ({why})", lost.why
    assert any(str(paths.eval_json(10)) in m for m in rep.missing)


def test_the_frames_note_names_videos_compared_on_context_frames_only() -> None:
    """A source of 1 or 3 frames under 9 generated ones with 4 context frames: those videos measure the tokenizer
    alone, and the predicted means leave them out; the note says which and over how many the means are."""
    from harness.core.evalrecords import Scores, VideoRecord
    from harness.core.evalstats import frames_note

    def rec(name: str, n: int) -> VideoRecord:
        return VideoRecord(name, "g", "r", "sidecar", tuple(range(n)), tuple(range(n)), tuple(range(n, 9)), 4, {},
                           Scores(n, {"psnr": 30.0}))

    note = frames_note([rec("one_frame", 1), rec("three", 3), rec("whole", 9)])
    assert "2 of them compared on context frames only" in note and "predicted means are over 1: one_frame, three" \
        in note, note


def test_a_copied_run_never_replaces_the_originals_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A copy of a run directory has its id, so its report went to the original's results folder; a run moved
    (the original gone) takes its folder over."""
    import shutil

    from harness import cli

    paths, _, _ = make_results(tmp_path)
    assert cli.main(["report", str(paths.root)]) == 0
    written = (tmp_path / "results" / paths.run_id / "report.json").read_bytes()
    copy = tmp_path / "elsewhere" / paths.run_id
    shutil.copytree(paths.root, copy)
    capsys.readouterr()
    assert cli.main(["report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"holds the report of {paths.root.resolve()}" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "results" / paths.run_id / "report.json").read_bytes() == written
    shutil.rmtree(paths.root)  # moved, not copied
    assert cli.main(["report", str(copy)]) == 0
    assert json.loads((tmp_path / "results" / paths.run_id / "report.json").read_text())["run_dir"] == \
        str(copy.resolve())
