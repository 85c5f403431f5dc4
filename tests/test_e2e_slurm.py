"""The whole DAG through `harness submit --wait` on the local Slurm cluster: 40 clips (plus broken files)
over 4 shards, tiny model, 2 checkpoints, infer + evaluate per checkpoint and for the baseline (step 0, a random
initialisation here), report. Checks what each stage promised, from the run directory alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import specs
from harness.core.atomic import read_json
from harness.core.paths import RunPaths
from harness.launch.worker import load_run_spec
from harness.lib import synth
from harness.lib.video import ClipShape, load_clip
from harness.stages.dataset import open_dataset
from harness.stages.staged import resolve

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def finished_run(slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    tmp = tmp_path_factory.mktemp("e2e")
    synth.make_clips(tmp / "videos", 40)
    bad = synth.make_bad_files(tmp / "videos")
    tok = synth.write_tokenizer(tmp / "tok")
    hf = tmp / "hf"
    synth.write_hf_snapshot(hf, synth.TOKENIZER_REPO, {n: tok / n for n in ("encoder.jit", "decoder.jit",
        "config.json")})
    spec = specs.write(tmp / "run.toml", specs.tiny_run(tmp, name="e2e", videos=tmp / "videos", hf=hf), {
        "video": {"width": 64, "height": 48, "num_frames": 9, "fps": 8}, "data": {"split": [8, 1, 1]},
        "tokenize": {"shards": 4},
        "finetune": {"engine": "mcore", "max_steps": 6, "save_every": 3, "lr": 3e-3, "precision": "fp32"},
        "infer": {"max_inputs": 2, "batch_size": 2, "baseline": "on"}})
    p = subprocess.run([sys.executable, "-m", "harness.cli", "submit", str(spec), "--wait", "--timeout", "900"],
                       capture_output=True, text=True, timeout=960, cwd=tmp)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run_dir = next((tmp / "runs").glob("e2e-*"))
    paths = RunPaths(run_dir)
    paths.root.joinpath("bad.json").write_text(json.dumps([str(b) for b in bad]))
    return paths


@pytest.mark.timeout(1000)
def test_data_stages_tokens_match_token_math_and_decode_back(finished_run: RunPaths) -> None:
    spec = load_run_spec(finished_run)
    tm = spec.token_math
    ds = open_dataset(finished_run)
    assert len(ds) == 40
    dec = torch.jit.load(str(resolve(finished_run, "decoder") / "decoder.jit"))
    shape = ClipShape(tm.frames, tm.height, tm.width)
    worst = np.inf
    for i in range(0, 40, 5):
        ids = ds.tokens(i)
        assert ids.size == tm.video_tokens
        clip = load_clip(ds.document(i)["path"], shape)
        grid = torch.from_numpy(ids).reshape(1, tm.grid.t, tm.grid.h, tm.grid.w)
        out = ((dec(grid)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).numpy()
        worst = min(worst, 10 * np.log10(255**2 / ((out - clip) ** 2).mean()))
    assert worst > 22, f"decode-back PSNR {worst:.1f} dB"
    summary = read_json(finished_run.dataset_summary)
    assert summary["tokenized"] == 40 and summary["tokens"] == 40 * tm.video_tokens
    named = json.dumps(summary)
    for bad in json.loads(finished_run.root.joinpath("bad.json").read_text()):
        assert Path(bad).name in named, bad


@pytest.mark.timeout(1000)
def test_every_checkpoint_has_videos_and_metrics(finished_run: RunPaths) -> None:
    spec = load_run_spec(finished_run)
    assert read_json(finished_run.checkpoints_json)["steps"] == [3, 6]  # the baseline is no finetune save
    # keep_optimizer = "last": step 3 is weights-only, and the infer stage below generated from it all the same
    assert [(finished_run.checkpoint_dir(s) / "optimizer").is_dir() for s in (3, 6)] == [False, True]
    for step in (0, 3, 6):
        mp4s = sorted(finished_run.infer_dir(step).glob("*.mp4"))
        assert len(mp4s) == 2
        for m in mp4s:
            assert m.with_suffix(".json").exists()
        ev = read_json(finished_run.eval_json(step))
        assert ev["mean"]["psnr"] > 0 and 0 < ev["mean"]["ssim"] <= 1
        assert len(ev["videos"]) == 2
    rows = [json.loads(ln) for ln in finished_run.metrics_jsonl.read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" not in r] == list(range(1, spec.finetune.max_steps + 1))
    # val_every omitted = save_every: step 0 and each checkpoint, before its save, over the 4 validation videos
    assert [(r["step"], r["val_videos"]) for r in rows if "val_loss" in r] == [(0, 4), (3, 4), (6, 4)]


@pytest.mark.timeout(1000)
def test_report_written(finished_run: RunPaths) -> None:
    spec = load_run_spec(finished_run)
    out = Path(spec.run.results_dir) / finished_run.run_id
    assert (out / "report.md").stat().st_size > 0
    report = read_json(out / "report.json")
    assert report is not None
    assert [s for s, _ in report["val_curve"]] == [0, 3, 6]  # the starting weights and each checkpoint
    rows = report["checkpoints"]
    assert [(r["step"], r["baseline"]) for r in rows] == [(0, "random initialisation"), (3, None), (6, None)]
    assert all(c["val_loss"] == dict(report["val_curve"])[c["step"]] for c in rows)
    assert sum(c["best_val_loss"] for c in rows) == 1 and not rows[0]["best_val_loss"]
    assert "loss.png" in report["plots"]
    assert rows[0]["psnr"] > 0 and 0 < rows[0]["ssim"] <= 1 and rows[0]["videos"] == 2
    assert not rows[0]["best"] and report["best_checkpoint"] in (3, 6)  # compared against, never chosen
    assert "0 (random initialisation)" in (out / "report.md").read_text()
