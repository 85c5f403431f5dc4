"""Benchmarks: each module with a `run(argv)` is one `harness bench NAME` (figures to results/bench/); the others
(`kvfp8`, `dv_encoder`, `ranks`) are their helpers."""

BENCHES = ("submit", "tokenize", "train", "attention", "eval", "generate", "fp8kernel", "compare", "plan",
           "stages_tp", "imports", "suite")
"""`harness bench`'s choices. tests/test_small_defects.py checks them against the modules that define `run`."""
