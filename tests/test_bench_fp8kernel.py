"""`harness bench fp8kernel` on CPU: every variant runs the reference there, so this checks the bench's rows,
bytes and choice, not the kernel (whose own check is tests/test_kvfp8.py's, under Triton's interpreter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.bench import fp8kernel
from harness.core.models import PRESETS, kv_bytes


@pytest.mark.timeout(240)
def test_rows_per_variant_and_the_fastest_named(tmp_path: Path) -> None:
    r = fp8kernel.run(["--preset", "tiny", "--batch", "2", "--positions", "200", "--repeats", "2", "--device", "cpu",
                       "--out", str(tmp_path)])
    assert json.loads((tmp_path / "fp8kernel.json").read_text())["best"] == r["best"]
    rows = r["results"]
    assert [x["cache"] for x in rows] == ["model"] + ["fp8"] * len(fp8kernel.VARIANTS)
    p = PRESETS["tiny"]
    for x in rows:  # bytes moved: the 201 valid positions of 2 sequences, fp32 (CPU) or fp8 codes and scales
        per = kv_bytes(1, p.num_query_groups, p.kv_channels, 4, fp8=x["cache"] == "fp8")
        assert x["gb_per_s"] * x["us"] * 1e3 == pytest.approx(2 * 201 * per, rel=1e-9)
        assert x["cache"] == "model" or x["max_rel_diff"] < 1e-6
    best = r["best"]["2"]
    assert best["us"] == min(x["us"] for x in rows if x["cache"] == "fp8")
    assert set(best["variant"]) == {"F16", "BLOCK_N", "WARPS"}


@pytest.mark.timeout(240)
def test_bare_sweep_adds_stages_and_splits(tmp_path: Path) -> None:
    """`--bare`: every launch constant of `kvfp8`, the pipeline depth and the splits' target among them, one row
    each, timed as the op (on CPU its reference); the splits follow PROGRAMS_PER_SM."""
    r = fp8kernel.run(["--preset", "tiny", "--batch", "2", "--positions", "200", "--repeats", "1", "--device", "cpu",
                       "--bare", "--out", str(tmp_path), "--name", "bare.json"])
    fp8 = [x for x in r["results"] if x["cache"] == "fp8"]
    assert len(fp8) == len(fp8kernel.BARE_VARIANTS) == 96 and r["timed"] == "op alone"
    assert all(x["max_rel_diff"] < 1e-6 for x in fp8)
    assert set(r["best"]["2"]["variant"]) == {"F16", "BLOCK_N", "WARPS", "STAGES", "PROGRAMS_PER_SM"}
    assert {x["splits"] for x in fp8} == {1}  # on CPU the reference runs unsplit, whatever the target
