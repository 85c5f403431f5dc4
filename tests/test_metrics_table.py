"""The metric table is the one list of quality metrics: a new row (plus its kernel) reaches the evaluate records,
the report, tracking, `harness evaluate` and `bench compare`, and no other module names a metric."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import typing
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from harness.bench import compare
from harness.core import metrics_table as mt
from harness.core.evalrecords import EvalResult, ShardRecord, VideoRecord
from harness.lib import metrics
from harness.report import build as report
from harness.report import evaltable, tracking
from harness.stages import evaluate

ROOT = Path(__file__).resolve().parents[1] / "harness"
KERNELS = {"core/metrics_table.py", "lib/metrics.py", "lib/metrics_torch.py"}
"""The table and the kernels: the only modules that may spell a metric's name."""
NAMED = re.compile(r"(?<![a-z])(psnr|ssim)(?![a-z])")
"""A metric's name as a key, tag or field spells it (prose such as a command's help text may say "PSNR")."""

MAE = mt.Metric("mae", "MAE", "", higher_is_better=False, digits=3, tracking_tag="eval/mae_mean", reference="mae",
                per_frame=True, notes=("MAE: mean absolute difference per pixel, averaged over frames",))


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings (the text a program acts on or prints)."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    docs |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_only_the_table_and_the_kernels_name_a_metric() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in KERNELS:
            continue
        found += [f"{rel}:{line}: {s!r}" for line, s in _strings(ast.parse(path.read_text())) if NAMED.search(s)]
    assert not found, "metric names outside the table and the kernels:\n" + "\n".join(found)


def test_the_grep_sees_a_metric_name() -> None:
    """The check above can fail: a key, an f-string part or a derived key is found, a docstring is not."""
    tree = ast.parse('"""psnr in a docstring."""\nx = {"psnr": 1}\ny = f"{x} ssim"\nz = "predicted_psnr"\n')
    assert sorted(s for _, s in _strings(tree) if NAMED.search(s)) == [" ssim", "predicted_psnr", "psnr"]


def test_every_row_has_a_kernel_and_the_spec_offers_every_row() -> None:
    from harness.core.sections import EvaluateSection, Metric

    assert set(metrics.REDUCE) == set(mt.names()) == set(mt.NAMES) == set(typing.get_args(Metric))
    assert EvaluateSection().metrics == mt.NAMES
    a = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    assert set(metrics.frame_values(a, a.copy(), mt.names(), "skimage")) == set(mt.names())


@pytest.fixture()
def with_mae(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third metric added the way the README says: a table row and its kernel, nothing else."""
    monkeypatch.setattr(mt, "METRICS", mt.METRICS + (MAE,))
    inner = metrics.frame_values

    def frame_values(a: np.ndarray, b: np.ndarray, names: list[str], backend: str = "auto",
                     device: str = "cpu") -> dict[str, np.ndarray]:
        mae = np.abs(a.astype(np.int32) - b.astype(np.int32)).reshape(len(a), -1).mean(axis=1)
        return {**inner(a, b, names, backend, device), "mae": mae}

    monkeypatch.setattr(metrics, "frame_values", frame_values)
    monkeypatch.setattr(metrics, "REDUCE", {**metrics.REDUCE, "mae": lambda v, px: float(v.mean())})


def _shard(step: int, noise: int, chosen: tuple[str, ...]) -> ShardRecord:
    """An evaluate shard scored from arrays: frame k of the reference, +-noise in the generated clip."""
    rng = np.random.default_rng(step)
    ref = rng.integers(20, 230, (6, 16, 16, 3), dtype=np.uint8)
    gen = (ref.astype(int) + rng.integers(-noise, noise + 1, ref.shape)).clip(0, 255).astype(np.uint8)
    pair = evaluate.Pair("v", "g.mp4", "r.mp4", tuple(range(6)), context_frames=2)
    rec = evaluate.score_arrays(pair, ref, gen, list(range(6)), list(range(6)), [], "skimage", "cpu", chosen)
    res = evaluate.summarize([rec], backend="skimage", device="cpu", missing_reference=[], missing_generated=[],
                             selected=chosen)
    return ShardRecord(step, 0, 0, 1, "gen", res)


def test_an_added_row_reaches_every_consumer(with_mae: None) -> None:
    chosen = ("psnr", "mae")
    shards = {10: _shard(10, 9, chosen), 20: _shard(20, 3, chosen)}
    doc = json.loads(json.dumps(shards[10].to_json()))
    (video,) = doc["videos"]
    assert video["mae"] > 0 and len(video["mae_per_frame"]) == 6 and video["predicted"]["mae"] > 0
    assert doc["mean"]["mae"] == video["mae"] and "predicted_mae" in doc["mean"] and "ssim" not in doc["mean"]
    assert MAE.notes[0] in doc["notes"] and ShardRecord.from_json(doc) == shards[10]

    cks = report.checkpoints({s: [r] for s, r in shards.items()}, metrics=("mae",))
    assert [c.step for c in cks if c.best] == [20]  # lower is better: the less noisy checkpoint
    rep = report.Report("r", "n", {}, None, None, (), report.checkpoints({s: [r] for s, r in shards.items()},
                                                                         metrics=chosen), (), (), metrics=chosen)
    (title, header, rows), = [t for t in report.tables(rep) if t[0].startswith("checkpoints")]
    assert header[:3] == ["step", "PSNR (dB)", "MAE"] and rows[0][2] == f"{rep.checkpoints[0].value('mae'):.3f}"
    assert header[3:5] == ["predicted PSNR (dB)", "predicted MAE"] and rows[1][4].endswith(" *")
    assert "mae" in report.to_json(rep)["checkpoints"][0] and "ssim" not in report.to_json(rep)["checkpoints"][0]
    assert tracking.eval_scalars(rep.checkpoints[0])["eval/mae_mean"] == rep.checkpoints[0].value("mae")

    con = Console(record=True, width=250)
    con.print(evaltable.table({"reference_dir": "r", **shards[10].result.to_json()}))
    assert "predicted MAE" in con.export_text() and "SSIM" not in con.export_text()

    assert compare.metrics()[-1] == compare.Metric("mae", "MAE (final checkpoint)", "mae")
    rows_, violations = compare.evaluate({"mae": 2.0}, {"mae": compare.Reference(1.0, -0.5, 0.5, "")}, {})
    assert [r["metric"] for r in rows_][-1] == "mae"
    assert any(v.startswith("mae: reference: 2 > 1.5") for v in violations)


def test_records_read_what_they_write_and_old_partial_files_still_read() -> None:
    shard = _shard(10, 9, mt.names())
    doc = json.loads(json.dumps(shard.to_json()))
    assert ShardRecord.from_json(doc) == shard and ShardRecord.from_json(doc).to_json() == doc
    (v,) = doc["videos"]
    assert list(v)[-6:] == ["ssim_per_frame", "frames", "psnr", "identical", "ssim", "predicted"]
    assert list(doc["mean"]) == ["videos", "psnr", "predicted_psnr", "identical_videos", "ssim", "predicted_ssim"]
    partial = EvalResult.from_json({"videos": [{"name": "a", "psnr": 20.0}, "junk"], "frames": ["x"]})
    assert [x.name for x in partial.videos] == ["a"] and partial.videos[0].value("psnr") == 20.0
    assert partial.frames == '["x"]' and partial.videos[0].value("ssim") is None
    assert dataclasses.replace(VideoRecord.from_json({}), name="b").name == "b"
