"""Shell injection through every string a user controls.

Names Slurm cannot take (run name, partition, account, qos, constraint) and line breaks anywhere are rejected
by `harness validate` with one line naming the key. Paths, prompts, container env values and mounts may hold
`$(...)`, backticks, `;`, quotes and `#`: a real run with all of them is SUBMITTED to the local cluster, and
canary files prove that no injected command ran; every generated sbatch script passes `bash -n`, and bash
reads the container flags and env values back byte for byte.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import specs
from harness import cli
from harness.core.atomic import read_json
from harness.launch import slurmcli
from harness.lib import synth
from reliability_helpers import wait_stages

REPO = Path(__file__).resolve().parents[1]
TAG = secrets.token_hex(3)
"""Unique per session: a canary file named CANARY_<TAG>_* can only come from this session's payloads."""


def payload(where: str) -> str:
    """One path component / value that runs five commands if any shell ever evaluates it unquoted."""
    c = f"CANARY_{TAG}_{where}"
    return (f"{where} $(touch {c}_a) `touch {c}_b`; touch {c}_c #h 'sq' \"dq\" && touch {c}_d | "
            f"touch {c}_e")


def canaries(*roots: Path) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found += [p for p in root.glob(f"CANARY_{TAG}_*")]
    return found


def search_roots(tmp_path: Path) -> list[Path]:
    """Where a relative `touch` could land (job cwd, submit cwd, home, /) plus every directory under the test."""
    dirs = {tmp_path, REPO, Path.cwd(), Path.home(), Path("/"), Path("/tmp")}
    dirs |= {p for p in tmp_path.rglob("*") if p.is_dir()}
    return sorted(dirs)


# ------------------------------------------------------------------------------ rejected by validate
BASE = '[data]\nvideos = "clips"\n'
TINY = "[model]\npreset = 'tiny'\n[video]\nwidth = 32\nheight = 32\nnum_frames = 9\n"
NAME_KEYS = ["run.name", "tokenize.partition", "merge.account", "finetune.qos", "infer.partition",
             "assets.account", "finetune.constraint", "report.qos"]
EVIL = ["$(touch CANARY)", "`touch CANARY`", "a;touch CANARY", "a'b", 'a"b', "a#b", "a b", "a&b", "a|b",
        "a\\nb"]


def _toml(value: str) -> str:
    return json.dumps(value) if "\\n" not in value else '"' + value + '"'  # keep the escape as TOML's


@pytest.mark.parametrize("key", NAME_KEYS)
@pytest.mark.parametrize("value", EVIL, ids=[f"v{i}" for i in range(len(EVIL))])
def test_slurm_names_reject_shell_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str,
                                              value: str, reliability: Any) -> None:
    reliability.add("injection_strings_tried")
    section, name = key.split(".")
    path = tmp_path / "run.toml"
    # the tiny preset: a real model with no GPUs requested is itself rejected (`harness validate`)
    path.write_text(f"{BASE}{TINY}[{section}]\n{name} = {_toml(value)}\n", encoding="utf-8")
    code = cli.main(["validate", str(path)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    if name == "constraint" and value in ("a&b", "a|b"):
        assert code == 0, lines  # Slurm's AND / OR operators: legitimate, and quoted in #SBATCH --constraint
        return
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {key} = ") and ("must match" in lines[0] or "line breaks" in lines[0])


LINE_BREAK_KEYS = ["data.videos", "run.workdir", "assets.hf_home", "tokenizer.encoder", "model.checkpoint",
                   "container.image", "container.python", "infer.inputs", "evaluate.reference", "run.results_dir"]


@pytest.mark.parametrize("key", LINE_BREAK_KEYS)
@pytest.mark.parametrize("brk", ["\\n", "\\r", "\\u0000"])
def test_line_breaks_in_any_path_are_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str,
                                              brk: str, reliability: Any) -> None:
    """A line break would end an sbatch line early (the rest would run as a command); NUL cannot be passed."""
    reliability.add("injection_strings_tried")
    section, name = key.split(".")
    text = f'{BASE}[{section}]\n{name} = "x{brk}touch CANARY"\n' if section != "data" else \
        f'[data]\nvideos = "x{brk}touch CANARY"\n'
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["validate", str(path)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert any(ln.startswith(f"{path}: {key} = ") and "line breaks" in ln for ln in lines), lines
    assert all(ln.isprintable() for ln in lines)


@pytest.mark.parametrize("value", ["runs\\\\x", "runs/%j", "runs/100%"])
def test_workdir_with_backslash_or_percent_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    value: str, reliability: Any) -> None:
    """sbatch drops '\\' from #SBATCH --output even inside quotes (the job then FAILS: its log directory does
    not exist) and Slurm expands '%j' in log names: found by this suite against the local cluster."""
    reliability.add("injection_strings_tried")
    path = tmp_path / "run.toml"
    path.write_text(f'{BASE}[run]\nworkdir = "{value}"\n', encoding="utf-8")
    assert cli.main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}: run.workdir = ") and "must not contain" in err and "\n" not in err


# ------------------------------------------------------------------------------ accepted and submitted
def nasty_inputs(tmp_path: Path) -> dict[str, Path | str]:
    """Clips, a jsonl with injected prompts, and an HF cache, all under directories named by payloads."""
    base = tmp_path / "m[" / "]k [bold]" / payload("base")  # the full path holds rich markup: 'm[/]k [bold]'
    base.mkdir(parents=True)
    videos = base / payload("videos")
    clips = synth.make_clips(videos, 4)
    named = []
    for i, c in enumerate(clips):
        dest = c.with_name(f"clip{i} $(touch CANARY_{TAG}_clip{i}) `touch CANARY_{TAG}_bt{i}`;#'\".mp4")
        c.rename(dest)
        named.append(dest)
    jsonl = base / f"prompts $(touch CANARY_{TAG}_jsonl);#'.jsonl"
    lines = [json.dumps({"prompt": f"{payload(f'prompt{i}')}\nsecond line $(touch CANARY_{TAG}_nl{i})",
                         "visual_input": str(v.relative_to(jsonl.parent))}) for i, v in enumerate(named)]
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    hf = base / payload("hf")
    tok = synth.write_tokenizer(tmp_path / "tok-src")
    synth.write_hf_snapshot(hf, synth.TOKENIZER_REPO, {n: tok / n for n in ("encoder.jit", "decoder.jit",
                                                                           "config.json")})
    t5 = synth.write_text_encoder(tmp_path / "t5-src")
    synth.write_hf_snapshot(hf, synth.TEXT_ENCODER_REPO, {f.name: f for f in t5.iterdir() if f.is_file()})
    return {"base": base, "jsonl": jsonl, "hf": hf, "workdir": base / payload("runs"), "prompts": lines}


def nasty_spec(tmp_path: Path, inp: dict[str, Any]) -> Path:
    """Every payload as a TOML string value (the builder escapes quotes and backslashes; the spec reads back
    the payload byte for byte)."""
    return specs.write(tmp_path / "run.toml", specs.TINY, specs.V2W, {
        "run": {"name": "inj", "workdir": str(inp["workdir"]), "results_dir": str(inp["base"] / payload("results"))},
        "tokenizer": {"encoder": synth.TOKENIZER_REPO, "decoder": synth.TOKENIZER_REPO},
        "data": {"jsonl": str(inp["jsonl"])}, "assets": {"hf_home": str(inp["hf"])},
        "container": {"image": f"/x/$(touch CANARY_{TAG}_image) `touch CANARY_{TAG}_img2`;#.sqsh",
                      "env": {"HARNESS_INJ": payload("env")},
                      "mounts": [f"/m $(touch CANARY_{TAG}_mount);#'q:/n"], "stages": ["finetune"]},
        "tokenize": {"shards": 1, "decode_workers": 0, "time_min": 5},
        "finetune": {"engine": "mcore", "max_steps": 2, "save_every": 1, "time_min": 5}})


def bash_args(script: str, line_prefix: str) -> list[str]:
    """What bash makes of one command line of a script: the line's words, expanded, NUL-separated
    (`printf` stands in for the command; nothing is submitted, nothing else is evaluated)."""
    line = next(ln for ln in script.splitlines() if ln.startswith(line_prefix))
    cmd = "printf '%s\\0' " + line[len(line_prefix):]
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=30, check=True).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_injected_paths_prompts_env_mounts_never_run(slurm_cluster: str, tmp_path: Path,
                                                     reliability: Any) -> None:
    inp = nasty_inputs(tmp_path)
    spec_path = nasty_spec(tmp_path, inp)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    py = [sys.executable, "-m", "harness.cli"]
    reliability.add("injection_strings_tried", 12)  # base/videos/4 clips/jsonl/4 prompts/hf/runs/results... dirs
    reliability.add("injection_strings_tried", 3)  # container image, env value, mount

    # 1. validate accepts it (paths may hold these characters)
    p = subprocess.run([*py, "validate", str(spec_path)], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stderr

    # 2. plan --out: every script parses, and bash reads env values and container flags back exactly
    out_dir = tmp_path / "scripts"
    p = subprocess.run([*py, "plan", str(spec_path), "--out", str(out_dir)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    scripts = sorted(out_dir.glob("*.sbatch"))
    assert len(scripts) == 7
    for s in scripts:
        r = subprocess.run(["bash", "-n", str(s)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (s.name, r.stderr)
    ft = (out_dir / "03-finetune.sbatch").read_text()
    env_line = next(ln for ln in ft.splitlines() if ln.startswith("export HARNESS_INJ="))
    got = subprocess.run(["bash", "-c", env_line + '\nprintf %s "$HARNESS_INJ"'], capture_output=True,
                         timeout=30, check=True).stdout.decode()
    assert got == payload("env")
    args = bash_args(ft, "srun ")
    assert f"--container-image=/x/$(touch CANARY_{TAG}_image) `touch CANARY_{TAG}_img2`;#.sqsh" in args
    mounts = next(a for a in args if a.startswith("--container-mounts="))
    assert mounts.endswith(f",/m $(touch CANARY_{TAG}_mount);#'q:/n")
    assert str(inp["hf"]) + ":" + str(inp["hf"]) in mounts
    for s in scripts:
        text = s.read_text()
        hf_line = next(ln for ln in text.splitlines() if ln.startswith("export HF_HOME="))
        got = subprocess.run(["bash", "-c", hf_line + '\nprintf %s "$HF_HOME"'], capture_output=True,
                             timeout=30, check=True).stdout.decode()
        assert got == str(inp["hf"])
    assert not canaries(*search_roots(tmp_path))

    # 3. a real submission of the whole DAG to the local cluster
    # --no-doctor: the image is a hostile name that does not exist and this cluster has no Pyxis; preflight
    # would (rightly) stop the submission that this test needs to reach srun.
    p = subprocess.run([*py, "submit", "--no-doctor", str(spec_path)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    ids = {ln.split()[0]: ln.split()[-1] for ln in p.stdout.splitlines() if " job " in ln}
    assert len(ids) == 7, p.stdout
    reliability.add("slurm_jobs_submitted", len(ids))
    try:  # data stages and the container stage run; the rest would only cost time here
        by_stage = wait_stages(ids, ["stage-assets", "tokenize", "merge", "finetune"], timeout=240)
    finally:
        slurmcli.scancel(list(ids.values()))
    for st in ("stage-assets", "tokenize", "merge"):
        assert set(by_stage[st].values()) == {"COMPLETED"}, (st, by_stage)
    # finetune runs in the (absent here) Pyxis container: srun rejects --container-image, after bash has
    # expanded every argument -- so a quoting mistake would have fired its canary before that.
    assert set(by_stage["finetune"].values()) <= {"FAILED", "COMPLETED"}, by_stage
    run_dir = next(Path(inp["workdir"]).iterdir())
    summary = read_json(run_dir / "dataset" / "summary.json")
    assert summary["tokenized"] == 4 and summary["skipped"] == [], summary["skipped"]
    stored = [json.loads(ln)["prompt"] for ln in (run_dir / "inputs.jsonl").read_text().splitlines()]
    assert stored == [json.loads(ln)["prompt"] for ln in inp["prompts"]]
    for args in (("status", str(run_dir)), ("status", str(run_dir), "--all"), ("logs", str(run_dir), "merge")):
        r = subprocess.run([*py, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert run_dir.name in r.stdout or args[0] == "logs", r.stdout
    found = canaries(*search_roots(tmp_path))
    reliability.add("canaries_fired", len(found))
    assert not found, found
    shutil.rmtree(tmp_path / "scripts", ignore_errors=True)
