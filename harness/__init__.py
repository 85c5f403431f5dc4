"""harness: Slurm batch-job harness for Cosmos AR post-training with a swapped video tokenizer."""

__version__ = "0.1.0"

from harness.cosmos import lazyjit as _lazyjit  # noqa: E402 (after the version: a hook, imports no torch)

_lazyjit.install()
