"""Side-by-side: upstream token_bench.py (run as a program from /tmp/upstream, outside the repository: its code
never enters it) vs the harness's evaluate.protocol = "tokenbench" on 20 pairs the harness writes. Prints JSON
(results/bench/tokenbench-parity.json). Not part of the harness package: a record of how the figures were made."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from harness.lib.synth import smooth_clip
from harness.lib.video import write_mp4
from harness.stages import evaluate

ROOT = Path("/tmp/upstream/pairs")
GEOMETRY = ([(17, 320, 512)] * 12 + [(20, 240, 320)] * 3 + [(17, 720, 1280)] * 2 + [(33, 200, 704)] * 2
            + [(9, 320, 512)])


def write_pairs() -> list[dict]:
    out = []
    for i, (t, h, w) in enumerate(GEOMETRY):
        name = f"pair{i:02d}"
        ref = smooth_clip(t, h, w, seed=100 + i)
        rng = np.random.default_rng(i)
        sigma = [2, 4, 8, 12][i % 4]
        gen = np.clip(ref.astype(np.float32) + rng.normal(0, sigma, ref.shape), 0, 255).astype(np.uint8)
        gen = np.roll(gen, i % 3, axis=2)  # a small shift on some pairs, like a model's misplacement
        write_mp4(ROOT / "ref" / f"{name}.mp4", ref, 25)
        write_mp4(ROOT / "gen" / f"{name}.mp4", gen, 25, crf=18, fast_decode=True)
        out.append({"name": name, "frames": t, "height": h, "width": w, "noise_sigma": sigma, "shift_px": i % 3})
    return out


def main() -> None:
    pairs = write_pairs()
    env = {**os.environ, "PATH": f"/tmp/upstream/bin:{os.environ['PATH']}",
           "PYTHONPATH": f"/tmp/upstream/site:{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "/tmp/upstream/token_bench.py", "--gtpath", str(ROOT / "ref"), "--targetpath",
           str(ROOT / "gen"), "--width", "320", "--num_frames", "17"]
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    up_s = time.time() - t0
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    up_psnr = dict(json.loads((ROOT / "gen/processed/psnr.json").read_text()))
    up_ssim = dict(json.loads((ROOT / "gen/processed/ssim.json").read_text()))
    t0 = time.time()
    ours = evaluate.evaluate_dirs(ROOT / "ref", ROOT / "gen", "fast", workers=2, protocol="both")
    ours_s = time.time() - t0
    tb = {v["name"]: v for v in ours["other_protocols"][0]["videos"]}
    al = {v["name"]: v for v in ours["videos"]}
    rows = []
    for pr in pairs:
        n = pr["name"]
        u_p, u_s = up_psnr[n + ".mp4"], up_ssim[n + ".mp4"]
        h_p, h_s = tb[n]["psnr"], tb[n]["ssim"]
        rows.append({**pr, "upstream_psnr": u_p, "harness_tokenbench_psnr": h_p, "psnr_diff_db": h_p - u_p,
                     "upstream_ssim": u_s, "harness_tokenbench_ssim": h_s, "ssim_diff": h_s - u_s,
                     "harness_aligned_psnr": al[n]["psnr"], "harness_aligned_ssim": al[n]["ssim"]})
    dp = [abs(r["psnr_diff_db"]) for r in rows]
    ds = [abs(r["ssim_diff"]) for r in rows]
    summary = {"pairs": len(rows), "max_abs_psnr_diff_db": max(dp), "mean_abs_psnr_diff_db": float(np.mean(dp)),
               "max_abs_ssim_diff": max(ds), "mean_abs_ssim_diff": float(np.mean(ds)),
               "upstream_mean_psnr": float(np.mean([r["upstream_psnr"] for r in rows])),
               "harness_tokenbench_mean_psnr": ours["other_protocols"][0]["mean"]["psnr"],
               "upstream_mean_ssim": float(np.mean([r["upstream_ssim"] for r in rows])),
               "harness_tokenbench_mean_ssim": ours["other_protocols"][0]["mean"]["ssim"],
               "harness_aligned_mean_psnr": ours["mean"]["psnr"], "harness_aligned_mean_ssim": ours["mean"]["ssim"],
               "upstream_wall_s": round(up_s, 1), "harness_both_protocols_wall_s": round(ours_s, 1)}
    print(json.dumps({"summary": summary, "pairs": rows}, indent=1))


if __name__ == "__main__":
    main()
