"""`harness compare`: two run directories built as the report tests build one (the producers' file formats),
then changed the way two real runs differ (another seed, another input set, validation logged): the table
names both runs and only the keys that differ, the best row of each metric is marked, means over different
videos are recomputed over the common ones and said so, and the HTML page opens in a headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli
from harness.core.atomic import atomic_write_json, read_json
from harness.core.paths import RunPaths, mark_done
from test_report import PREDICTED, PSNR, SSIM, make_results, with_predicted
from test_report_html import CHROMIUM, media_state


def _set_seed(paths: RunPaths, seed: int) -> None:
    spec = read_json(paths.spec_json)
    spec["run"]["seed"] = seed
    atomic_write_json(paths.spec_json, spec)


def _rename_videos(paths: RunPaths, renames: dict[str, str]) -> None:
    for f in paths.eval_json(10).parent.glob("step-*.json"):
        d = read_json(f)
        for v in d["videos"]:
            v["name"] = renames.get(v["name"], v["name"])
        atomic_write_json(f, d)


def _run(tmp_path: Path, *names: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["compare", *names, "--workdir", str(tmp_path / "runs")])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _doc(out: str) -> dict:
    path = next(line.split("wrote ", 1)[1] for line in out.splitlines() if line.endswith("compare.json"))
    return json.loads(Path(path).read_text())


def test_predicted_frames_columns_with_their_best(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Where evaluate has predicted-frames means, compare shows them beside the all-frames ones, each column
    with its best row marked."""
    monkeypatch.setenv("COLUMNS", "250")
    a, _, _ = make_results(tmp_path)
    b, _, _ = make_results(tmp_path)
    _set_seed(b, 99)
    with_predicted(a, PREDICTED)
    with_predicted(b, {s: (p - 1.0, q) for s, (p, q) in PREDICTED.items()})
    rc, out, _ = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    assert rc == 0
    rows = _doc(out)["rows"]
    assert [r["predicted_psnr"] for r in rows[:4]] == [p for p, _ in PREDICTED.values()]
    assert [(r["run_id"], r["step"]) for r in rows if "predicted_psnr" in r["best"]] == [(a.run_id, 20)]
    assert [(r["run_id"], r["step"]) for r in rows if "predicted_ssim" in r["best"]] == [(a.run_id, 40),
                                                                                         (b.run_id, 40)]
    md = (Path(_doc_path(out)).parent / "compare.md").read_text()
    assert "| SSIM | predicted PSNR (dB) | predicted SSIM | videos |" in md and "| 25.50 * | 0.6100 |" in md


def test_two_runs_differing_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    a, _, _ = make_results(tmp_path)
    b, _, _ = make_results(tmp_path)
    _set_seed(b, 99)
    with b.metrics_jsonl.open("a") as fh:  # b logs validation; a torn line before it stays skipped
        fh.write("\n" + "".join(json.dumps({"step": s, "val_loss": 3.0 - s / 100}) + "\n" for s in (10, 20, 30, 40)))
    with a.metrics_jsonl.open("a") as fh:  # a NaN validation loss is none (it once took every best mark away)
        fh.write("\n" + json.dumps({"step": 10, "val_loss": float("nan")}) + "\n")
    rc, out, _ = _run(tmp_path, a.run_id, str(b.root), capsys=capsys)
    assert rc == 0
    assert a.run_id in out and b.run_id in out and "run.seed" in out
    doc = _doc(out)
    assert doc["differing_keys"] == ["run.seed"]
    assert doc["common_videos"] is None
    rows = doc["rows"]
    assert [(r["run_id"], r["step"]) for r in rows] == [(a.run_id, s) for s in PSNR] + [(b.run_id, s) for s in PSNR]
    assert [r["psnr"] for r in rows[:4]] == list(PSNR.values()) and rows[0]["ssim"] == SSIM[10]
    assert [r["spec"] for r in rows] == [{"run.seed": "1234"}] * 4 + [{"run.seed": "99"}] * 4
    assert rows[0]["val_loss"] is None and rows[4]["val_loss"] == pytest.approx(2.9)
    assert [r["run_id"] for r in rows if "psnr" in r["best"]] == [a.run_id, b.run_id]  # tie at step 30: both marked
    assert [r["step"] for r in rows if "val_loss" in r["best"]] == [40]
    assert {r["videos"] for r in rows} == {2}
    # generation rate per checkpoint from the infer manifests (steps 10 and 20: 2 x 768 tokens in 4 s each)
    assert [r["gen_tokens_per_s"] for r in rows] == [384.0, 384.0, None, None] * 2
    md = (Path(_doc_path(out)).parent / "compare.md").read_text()
    assert f"{PSNR[30]:.2f} *" in md and "run.name, run.workdir, run.results_dir, data.cache_dir" in md
    assert "| gen tok/s |" in md and "| 384.0 |" in md
    page = (Path(_doc_path(out)).parent / "compare.html").read_text()
    assert "data:image/png;base64," in page and a.run_id in page


def _doc_path(out: str) -> str:
    return next(line.split("wrote ", 1)[1] for line in out.splitlines() if line.endswith("compare.json"))


def test_identical_runs_have_no_differing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _, _ = make_results(tmp_path)
    b, _, _ = make_results(tmp_path)
    rc, out, _ = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    assert rc == 0 and _doc(out)["differing_keys"] == []
    assert "differ between the runs: none" in out
    (tmp_path / "link").symlink_to(a.root)  # the same run under another name is still one run
    rc, _, err = _run(tmp_path, a.run_id, str(tmp_path / "link"), capsys=capsys)
    assert rc == 2 and "compare needs at least two runs" in err


def test_different_inputs_are_compared_on_common_videos(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _, _ = make_results(tmp_path)
    b, _, _ = make_results(tmp_path)
    _rename_videos(b, {"clip1.mp4": "other.mp4"})
    rc, out, _ = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    assert rc == 0
    doc = _doc(out)
    assert doc["common_videos"] == ["clip0.mp4"]
    assert {r["videos"] for r in doc["rows"]} == {1}
    assert doc["rows"][0]["psnr"] == pytest.approx(PSNR[10])  # clip0 alone, not the file's mean over both
    assert "common to all rows" in doc["notes"][0] and "different evaluated videos" in doc["notes"][0].lower()
    assert "common to all rows" in (Path(_doc_path(out)).parent / "compare.html").read_text()


def test_no_common_video_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _, _ = make_results(tmp_path)
    b, _, _ = make_results(tmp_path)
    _rename_videos(b, {"clip0.mp4": "x.mp4", "clip1.mp4": "y.mp4"})
    rc, out, err = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no video was evaluated in every run" in err


def test_one_run_is_not_a_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _, _ = make_results(tmp_path)
    rc, _, err = _run(tmp_path, a.run_id, str(a.root), capsys=capsys)
    assert rc == 2 and "at least two runs" in err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_compare_html_in_headless_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _, _ = make_results(tmp_path)
    b, _, _ = make_results(tmp_path)
    _set_seed(b, 8)
    rc, out, _ = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    assert rc == 0
    assert media_state(Path(_doc_path(out)).parent / "compare.html") == "ok=1 bad=0 wait=0"  # the plot


def test_baseline_rows_come_first_labelled(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    runs = [make_results(tmp_path)[0] for _ in range(2)]
    for p in runs:
        spec = read_json(p.spec_json)
        spec["infer"]["baseline"] = "on"
        atomic_write_json(p.spec_json, spec)
        videos = [{"name": f"clip{i}.mp4", "psnr": 99.0, "ssim": 0.99} for i in range(2)]
        atomic_write_json(p.eval_json(0), {"step": 0, "videos": videos, "mean": {"psnr": 99.0, "ssim": 0.99}})
    rc, out, _ = _run(tmp_path, *(p.run_id for p in runs), capsys=capsys)
    assert rc == 0
    rows = _doc(out)["rows"]
    assert [(r["step"], r["label"]) for r in rows[:2]] == [(0, "0 (random initialisation)"), (10, "10")]
    assert rows[5]["label"] == "0 (random initialisation)" and rows[0]["psnr"] == 99.0
    # the baseline scores highest here, yet it is compared against, never the best (as in each run's report)
    assert rows[0]["best"] == [] == rows[5]["best"] and "psnr" in rows[3]["best"]
    assert "0 (random initialisation)" in out


def test_a_run_not_done_is_named_in_the_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Best-marked rows of a run still going (or stopped short) may change: compare says which run that is and
    what to do, and says nothing of a run whose every task completed."""
    a, plan, _ = make_results(tmp_path)
    b, _, _ = make_results(tmp_path)
    for paths in (a, b):
        for s in plan.stages:
            for t in range(s.tasks):
                mark_done(paths, s.name, t)
    rc, out, _ = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    assert rc == 0 and not [n for n in _doc(out)["notes"] if "Run " in n]
    b.marker("evaluate", 0).unlink()
    rc, out, _ = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    assert rc == 0
    assert [n for n in _doc(out)["notes"] if "Run " in n] == [
        f"Run {b.run_id} incomplete: `harness status {b.run_id}` says which tasks, `harness resume` runs them again"]


def test_a_run_whose_evaluations_are_gone_is_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run's rows of '-' with no word of why (its eval folder deleted) looked like a run that scored nothing."""
    import shutil

    from harness.core.paths import mark_done

    a, _, _ = make_results(tmp_path)
    b, plan, _ = make_results(tmp_path)
    for run in (a, b):  # both complete
        for stage in plan.stages:
            for task in range(stage.tasks):
                mark_done(run, stage.name, task)
    shutil.rmtree(b.eval_dir)
    rc, out, _ = _run(tmp_path, a.run_id, b.run_id, capsys=capsys)
    flat = " ".join(out.split())
    assert rc == 0 and f"Run {b.run_id} is" in flat and "have no evaluation results" in flat, flat
    assert f"Run {a.run_id} is" not in flat
