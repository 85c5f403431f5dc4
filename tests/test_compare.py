"""`harness bench compare`: references (ReFrame-style bounds, "*" fallback), history medians per cluster and
image, every violation listed, the run appended to the history, non-zero exit on a regression.

Each run directory here holds result files in the producers' formats (shard manifests' stats,
metrics.jsonl, eval/step-*.json); the planted regression is a 20% lower training throughput."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import specs
from harness import cli
from harness.bench import compare
from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths, new_run_dir
from harness.ops import submit as launching


def spec_text(root: Path) -> str:
    """The default (cosmos) model, so the report's throughput and MFU figures are the real model's."""
    return specs.text({"run": {"name": "nightly", "workdir": f"{root}/runs", "results_dir": f"{root}/results"},
                       "data": {"videos": f"{root}/videos"}, "tokenize": {"shards": 2},
                       "finetune": {"max_steps": 20, "save_every": 10}})


REFS = """
[systems."*"]
tokenize_clips_per_s = [2.5, -0.15, inf, "clips/s"]
train_tokens_per_s = [1000.0, -0.10, inf, "tokens/s"]
mfu = [0.001, -0.10, inf, "fraction of 989 TFLOP/s"]
final_loss = [3.0, -inf, 0.10, ""]
psnr = [28.0, -0.05, inf, "dB"]
ssim = [0.75, -0.05, inf, ""]

[systems.other]
train_tokens_per_s = [5000.0, -0.10, inf, "tokens/s"]
"""


def make_run(root: Path, throughput: float = 1.0, psnr: float = 28.0) -> RunPaths:
    """A finished run's result files; `throughput` scales training tokens/s (and TFLOP/s with it)."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    text = spec_text(root)
    (root / "run.toml").write_text(text)
    spec = spec_mod.absolutize(spec_mod.load(root / "run.toml"), root)
    facts = plan_mod.Facts(num_inputs=12, max_array_size=1001, nodes_available=1)
    plan = plan_mod.build(spec, facts)
    paths = new_run_dir(root / "runs", "nightly")
    choice = launching.Choice("local", "test")
    launching.write_run(paths, text, plan, facts, choice)
    launching.record_jobs(paths, choice, [])
    for s in range(2):
        atomic_write_json(paths.shard_manifest(s), {"shard": s, "stats": {"clips": 5, "seconds": 2.0}})
    rows = [{"step": i, "loss": 3.0 - 0.01 * i, "tokens_per_s": 1000.0 * throughput,
             "tflops": 0.99 * throughput} for i in range(1, 21)]
    paths.metrics_jsonl.parent.mkdir(parents=True, exist_ok=True)
    paths.metrics_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for step in plan.checkpoint_steps:
        atomic_write_json(paths.eval_json(step), {"mean": {"psnr": psnr, "ssim": 0.75}, "videos": [{}, {}]})
    return paths


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    refs = tmp_path / "references.toml"
    refs.write_text(REFS)
    return refs, tmp_path / "history.jsonl"


def run_compare(paths: RunPaths, refs: Path, history: Path, *extra: str) -> dict:
    return compare.run([str(paths.root), "--references", str(refs), "--history", str(history), *extra])


def test_unchanged_runs_pass_and_build_history(tmp_path: Path, files: tuple[Path, Path]) -> None:
    refs, history = files
    for i in range(3):
        out = run_compare(make_run(tmp_path / f"r{i}"), refs, history)
        assert out["exit_code"] == 0 and out["violations"] == []
    entries = [json.loads(x) for x in history.read_text().splitlines()]
    assert len(entries) == 3 and all(e["passed"] and e["cluster"] == "local" and e["image"] == "none"
                                     for e in entries)
    assert entries[0]["metrics"] == {"tokenize_clips_per_s": 2.5, "train_tokens_per_s": 1000.0,
                                     "mfu": 0.99 / 989.0, "final_loss": 2.8, "psnr": 28.0, "ssim": 0.75}
    assert all(e["commit"] and e["date"].endswith("Z") for e in entries)
    # result files without a protocol key predate it: aligned with the area resize, the only choice then
    assert all(e["eval_protocol"] == "aligned, resize area" for e in entries)


def test_history_of_another_protocol_is_no_quality_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    """PSNR under the TokenBench protocol and the aligned one are different numbers: the history median of a
    quality metric counts only entries of the run's protocol; the other metrics count every entry."""
    h = [{"cluster": "c", "image": "i", "passed": True, "eval_protocol": "tokenbench",
          "metrics": {"psnr": 30.0, "final_loss": 2.0}},
         {"cluster": "c", "image": "i", "passed": True, "metrics": {"psnr": 20.0, "final_loss": 3.0}}]
    assert compare.medians(h, "c", "i", 5, "tokenbench") == {"psnr": (30.0, 1), "final_loss": (2.5, 2)}
    assert compare.medians(h, "c", "i", 5, "aligned, resize area")["psnr"] == (20.0, 1)
    assert compare.medians(h, "c", "i", 5)["psnr"] == (25.0, 2)
    rows, _ = compare.evaluate({"psnr": 29.0}, {}, {})
    from rich.console import Console

    con = Console(record=True, width=200)
    con.print(compare.table(rows, "tokenbench"))
    text = con.export_text()
    assert "PSNR (final checkpoint), protocol tokenbench" in text and "final loss, protocol" not in text


def test_planted_20_percent_throughput_regression_is_flagged(tmp_path: Path, files: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    refs, history = files
    for i in range(3):
        run_compare(make_run(tmp_path / f"ok{i}"), refs, history)
    capsys.readouterr()
    bad = make_run(tmp_path / "bad", throughput=0.8, psnr=26.0)
    code = cli.main(["bench", "compare", str(bad.root), "--references", str(refs), "--history", str(history)])
    assert code == 1
    out = capsys.readouterr().out
    last = json.loads(history.read_text().splitlines()[-1])
    assert not last["passed"] and last["run_id"] == bad.run_id
    # every violation, against the reference and against the history median, for each regressed metric
    keys = sorted({v.split(":")[0] for v in last["violations"]})
    assert keys == ["mfu", "psnr", "train_tokens_per_s"]
    assert sum(v.startswith("train_tokens_per_s: reference") for v in last["violations"]) == 1
    assert sum(v.startswith("train_tokens_per_s: history median of 3") for v in last["violations"]) == 1
    assert "REGRESSION train_tokens_per_s" in out and "800 < 900" in out

    # the failed night does not move the baseline: an unchanged run afterwards passes again
    again = run_compare(make_run(tmp_path / "after"), refs, history)
    assert again["exit_code"] == 0


def test_history_median_catches_drift_within_reference(tmp_path: Path, files: tuple[Path, Path]) -> None:
    """Faster nights raise the baseline: a later 20% drop still inside the loose reference is flagged."""
    refs, history = files
    for i in range(3):
        run_compare(make_run(tmp_path / f"fast{i}", throughput=1.5), refs, history)
    out = run_compare(make_run(tmp_path / "slow", throughput=1.2), refs, history, "--window", "2")
    assert out["exit_code"] == 1
    assert out["violations"] and all(v.split(":")[0] in ("train_tokens_per_s", "mfu") for v in out["violations"])
    assert all("history median of 2" in v for v in out["violations"])


def test_missing_metric_is_a_violation(tmp_path: Path, files: tuple[Path, Path]) -> None:
    refs, history = files
    paths = make_run(tmp_path / "r")
    paths.metrics_jsonl.unlink()
    out = run_compare(paths, refs, history)
    assert out["exit_code"] == 1
    assert {v.split(":")[0] for v in out["violations"]} == {"train_tokens_per_s", "mfu", "final_loss"}


def test_references_fallback_and_errors(tmp_path: Path, files: tuple[Path, Path]) -> None:
    refs, _ = files
    other = compare.load_references(refs, "other")
    assert other["train_tokens_per_s"].value == 5000.0 and other["psnr"].value == 28.0
    star = compare.load_references(refs, "lab")
    assert star["train_tokens_per_s"].value == 1000.0 and math.isinf(star["final_loss"].lower)
    bad = tmp_path / "bad.toml"
    bad.write_text('[systems."*"]\ntokens = [1.0, -0.1, 0.1, "x"]\n')
    with pytest.raises(HarnessError, match=r'systems\.\*\.tokens: unknown metric'):
        compare.load_references(bad, "lab")
    bad.write_text('[systems."*"]\npsnr = [28.0, 0.1, 0.1, "dB"]\n')
    with pytest.raises(HarnessError, match=r'systems\."\*"\.psnr: needs a finite value, lower <= 0'):
        compare.load_references(bad, "lab")


def test_check_bounds_is_two_sided() -> None:
    ref = compare.Reference(100.0, -0.1, 0.2, "x")
    assert compare.check(90.0, 100.0, ref) is None and compare.check(120.0, 100.0, ref) is None
    assert compare.check(89.9, 100.0, ref) is not None and compare.check(120.1, 100.0, ref) is not None
    loss = compare.Reference(3.0, -math.inf, 0.1, "")
    assert compare.check(0.01, 3.0, loss) is None and compare.check(3.31, 3.0, loss) is not None


def test_shipped_references_parse() -> None:
    refs = compare.load_references(Path(__file__).resolve().parents[1] / "configs/nightly/references.toml", "lab")
    assert set(refs) == {m.key for m in compare.metrics()}


def test_a_nan_in_the_history_never_hides_a_regression_and_odd_lines_are_named(tmp_path: Path) -> None:
    """A NaN (or a bool) among the history's values made the median NaN, and every comparison with NaN passes;
    a line that is no entry (`[1, 2]`, `"metrics": null`) or a history that is a folder stopped the nightly
    with a traceback (exit 1, read as a regression)."""
    from harness.core.errors import HarnessError

    h = [{"cluster": "c", "image": "i", "passed": True, "metrics": {"psnr": 20.0}},
         {"cluster": "c", "image": "i", "passed": True, "metrics": {"psnr": float("nan")}},
         {"cluster": "c", "image": "i", "passed": True, "metrics": {"psnr": True}}]
    assert compare.medians(h, "c", "i", 5)["psnr"] == (20.0, 1)
    for i, line in enumerate(('[1, 2]', '{"metrics": null}', '42')):
        f = tmp_path / f"h{i}.jsonl"
        f.write_text('{"metrics": {}}\n' + line + "\n")
        with pytest.raises(HarnessError) as e:
            compare.read_history(f)
        assert str(e.value).startswith(f"{f}:2: not a history entry"), str(e.value)
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\n")
    with pytest.raises(HarnessError) as e:
        compare.read_history(tmp_path / "bin.jsonl")
    assert "--history: cannot read (UnicodeDecodeError" in str(e.value)
