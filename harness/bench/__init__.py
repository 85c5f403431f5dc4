"""Benchmarks: each module with a `run(argv)` is one `harness bench NAME` (figures to results/bench/); the others
(`kvfp8`, `dv_encoder`, `ranks`) are their helpers."""

from typing import Callable

BENCHES = ("submit", "tokenize", "train", "attention", "eval", "generate", "fp8kernel", "compare", "plan",
           "stages_tp", "imports", "suite")
"""`harness bench`'s choices. tests/test_small_defects.py checks them against the modules that define `run`."""


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for a count: `--repeats 0` is refused by the parser (a usage line and the option named),
    not a StatisticsError after minutes of setup, nor a negative rate written to results/bench/."""

    def count(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    count.__name__ = f"integer >= {minimum}"  # argparse names the type by it in its message
    return count
