"""report.html: the page's media made from real mp4 files, and the page opened in a real headless Chromium
(Debian's `chromium`): every video and image loads, a broken video src is reported, and a screenshot is taken."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness.core.atomic import atomic_write_json
from harness.core.evalrecords import ShardRecord
from harness.lib.video import load_frames, write_mp4
from harness.report import build as report
from harness.report import html as report_html
from test_report import VAL, make_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T, H, W, CTX = 17, 64, 96, 9


def clip(seed: int, t: int = T, h: int = H, w: int = W) -> np.ndarray:
    """A moving gradient with a bright square: frames differ, so frame order is visible on the sheet."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        out[i, ..., 0] = (xx * 2 + i * 9 + seed * 40) % 256
        out[i, ..., 1] = (yy * 3 + seed * 70) % 256
        out[i, ..., 2] = 90
        out[i, 8:24, 4 + 4 * i: 20 + 4 * i] = 255
    return out


def make_run_with_videos(root: Path) -> tuple[Path, report.Report]:
    """make_results' run, with evaluate files whose videos are real mp4s: references at another size and
    longer than the generation (source frames 2..18 compared), generated clips of the generated size; and
    validation points, so the loss plot has both curves."""
    paths, plan, _ = make_results(root, val=VAL)
    for step in plan.checkpoint_steps:
        videos = []
        for i in range(3):
            ref = root / "videos" / f"clip{i}.mp4"
            if not ref.exists():
                write_mp4(ref, clip(i, T + 4, 2 * H, 2 * W), 8)
            gen = paths.infer_dir(step) / f"clip{i}.mp4"
            noisy = clip(i).astype(np.int16) + np.random.default_rng(step + i).integers(-20, 20, (T, H, W, 3))
            write_mp4(gen, np.clip(noisy, 0, 255).astype(np.uint8), 8, fast_decode=True)
            videos.append({"name": f"clip{i}", "generated": str(gen), "reference": str(ref), "psnr": 25.0 + i,
                           "ssim": 0.7, "context_frames": CTX,
                           "compared_frames": {"generated": list(range(T)), "reference": list(range(2, T + 2))}})
        atomic_write_json(paths.eval_json(step), {"step": step, "videos": videos,
                                                  "mean": {"psnr": 26.0, "ssim": 0.7, "videos": 3}})
    rep = report.build(paths, plan.spec, [], plan.training)
    out = report.results_dir(plan.spec, paths)
    report.write(rep, out)
    return out, rep


def test_subsample_and_pick_samples() -> None:
    assert report_html.subsample(5, 8) == [0, 1, 2, 3, 4]
    assert report_html.subsample(33, 8) == [0, 5, 9, 14, 18, 23, 27, 32]
    assert report_html.subsample(9, 8, keep=(4, 5)) == list(range(9))  # the context boundary always shown
    assert report_html.subsample(33, 8, keep=(16, 17, 40)) == [0, 5, 9, 14, 16, 17, 18, 23, 27, 32]
    evals = {20: [{"videos": [{"name": "b", "generated": "g", "reference": "r", "context_frames": 1,
                               "compared_frames": {"generated": [0, 1], "reference": [4, 5]}}]}],
             10: [{"videos": [{"name": f"a{i}", "generated": "g", "reference": "r", "context_frames": 1,
                               "compared_frames": {"generated": [0], "reference": [0]}} for i in range(3)]}]}
    got = report_html.pick_samples({k: [ShardRecord.from_json(e) for e in v] for k, v in evals.items()})
    assert [(s.step, s.name) for s in got] == [(10, "a0"), (10, "a1"), (20, "b")]
    assert got[2].reference_frames == (4, 5)


def test_page_media_files_and_contact_sheet(tmp_path: Path) -> None:
    from PIL import Image

    out, rep = make_run_with_videos(tmp_path)
    assert len(rep.samples) == 2 * 4  # 2 of the 3 videos of each of the 4 checkpoints
    page = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    local = [s for s in srcs if not s.startswith("data:")]
    assert len(local) == 8 * 3 and all(not s.startswith("/") for s in local)  # relative: the folder can move
    assert all((out / s).is_file() for s in local)
    assert sum(s.startswith("data:image/png;base64,") for s in srcs) == 2  # loss.png and eval.png inline
    assert "PSNR (dB)" in page and "<td>30</td>" in page
    ref = load_frames(out / "media/step-00000010/clip0.reference.mp4")
    gen = load_frames(out / "media/step-00000010/clip0.generated.mp4")
    assert ref.shape == gen.shape == (T, H, W, 3)  # the compared frames only, at the generated size
    source = load_frames(tmp_path / "videos/clip0.mp4", (H, W))
    assert np.abs(ref[0].astype(int) - source[2]).mean() < 6  # pair 0 is source frame 2
    sheet = np.asarray(Image.open(io.BytesIO((out / "media/step-00000010/clip0.frames.png").read_bytes())))
    assert sheet.shape[1] > 8 * report_html.THUMB_WIDTH
    border_colours = {tuple(sheet[30, x]) for x in range(sheet.shape[1])}
    assert report_html.CONTEXT_RGB in border_colours and report_html.PREDICTED_RGB in border_colours


def test_a_video2world_sample_shows_its_prompt_escaped(tmp_path: Path) -> None:
    s = report_html.Sample(10, "x", "g.mp4", "r.mp4", (0,), (0,), 1, prompt="a <b>red</b> car & a dog")
    page = report_html.page("t", [], {}, [report_html.Media(s, error="gone")])
    assert '<p class="prompt">prompt: a &lt;b&gt;red&lt;/b&gt; car &amp; a dog</p>' in page
    assert 'class="prompt"' not in report_html.page("t", [], {}, [report_html.Media(replace(s, prompt=None))])


def test_unreadable_reference_is_named_not_fatal(tmp_path: Path) -> None:
    s = report_html.Sample(10, "x", str(tmp_path / "nope.mp4"), str(tmp_path / "ref.mp4"), (0,), (0,), 1)
    m = report_html.write_media(s, tmp_path)
    assert "nope.mp4" in m.error and not m.generated
    assert "not shown:" in report_html.page("t", [], {}, [m])


def chromium(*args: str) -> str:
    cmd = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--mute-audio",
           "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def colour_pixels(png: Path, rgb: tuple[int, int, int], tol: int = 12) -> int:
    from PIL import Image

    px = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return int((np.abs(px - np.array(rgb)).max(axis=-1) <= tol).sum())


def media_state(page: Path) -> str:
    dom = chromium("--dump-dom", page.as_uri())
    m = re.search(r'data-media="([^"]*)"', dom)
    assert m, dom[:500]
    return m.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)")
def test_report_html_in_headless_chromium(tmp_path: Path) -> None:
    out, _ = make_run_with_videos(tmp_path)
    moved = shutil.move(out, tmp_path / "moved")  # the page links relatively: it works anywhere
    page = Path(moved) / "report.html"
    assert media_state(page) == f"ok={8 * 3 + 2} bad=0 wait=0"
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert shot.stat().st_size > 50_000
    # the loss plot as Chromium draws it: the validation curve (tab:orange, on no other plot) and the seed's
    # shaded target band (tab:green at 15% over white)
    assert colour_pixels(shot, (255, 127, 14)) > 100 and colour_pixels(shot, (222, 240, 222)) > 2_000
    (Path(moved) / "media/step-00000020/clip1.generated.mp4").write_bytes(b"not a video")
    (Path(moved) / "media/step-00000030/clip0.reference.mp4").unlink()
    assert media_state(page) == f"ok={8 * 3} bad=2 wait=0"


def test_a_video_name_cannot_place_media_outside_the_media_folder() -> None:
    """Names come from evaluation files: `../../../pwned` once wrote pwned.generated.mp4 beside results/."""
    from harness.report.html import Sample, media_names

    for name in ("../../../../pwned", "a/b", "..", ".hidden"):
        paths = media_names(Sample(10, name, "g.mp4", "r.mp4", (0,), (0,), 0))
        for rel in paths:
            parts = Path(rel).parts
            assert parts[:2] == ("media", "step-00000010") and len(parts) == 3 and ".." not in parts, rel
