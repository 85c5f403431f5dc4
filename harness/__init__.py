"""harness: Slurm batch-job harness for Cosmos AR post-training with a swapped video tokenizer."""

__version__ = "0.1.0"
