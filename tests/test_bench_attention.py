"""`harness bench attention` compares ways of computing one attention: they must be the same attention."""

from __future__ import annotations

import json

from harness.bench import attention


def test_every_case_computes_the_same_attention(tmp_path) -> None:
    out = attention.run(["--preset", "tiny", "--seq", "128", "--repeats", "1", "--no-flex", "--out", str(tmp_path)])
    ran = [r for r in out["results"] if "error" not in r]
    assert [r["case"] for r in ran][:4] == ["auto gqa strided", "auto gqa contiguous", "auto expanded strided",
                                            "auto expanded contiguous"]
    assert all(r["max_abs_diff"] < 1e-5 for r in ran[1:]), ran
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in ran)
    assert out["fastest_fwd_bwd"] in {r["case"] for r in ran}
    assert json.loads((tmp_path / "attention-tiny-128.json").read_text())["results"] == out["results"]
