"""harness: Slurm batch-job harness for Cosmos AR post-training with a swapped video tokenizer."""

__version__ = "0.1.0"

from harness.cosmos import lazyjit as _lazyjit  # noqa: E402 (after the version: hooks, import no torch)
from harness.cosmos import lazymetrics as _lazymetrics  # noqa: E402

_lazyjit.install()
_lazymetrics.install()
