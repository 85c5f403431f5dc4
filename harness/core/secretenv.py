"""Which environment variables are secrets. They come from the submitting environment only: a spec is copied
into the run directory, rendered into sbatch scripts and compared across runs, so a secret written there would
land in files the harness keeps and shows."""

from __future__ import annotations

SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
"""The ones the harness itself reads: Hugging Face downloads (stage-assets only) and `harness sync`'s W&B upload."""
HF_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def stage_secrets(downloads: bool) -> tuple[str, ...]:
    """The secrets a stage's tasks receive, under Slurm and on this machine alike: the Hugging Face token for the
    stage that downloads, nothing for the rest (W&B runs offline in the tasks; `harness sync` uploads)."""
    return HF_SECRETS if downloads else ()


_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIALS", "APIKEY"}
_PAIRS = ("API_KEY", "ACCESS_KEY", "PRIVATE_KEY", "AUTH_KEY")


def is_secret(name: str) -> bool:
    """A known secret, or a name whose words say it holds one (`AWS_SECRET_ACCESS_KEY`, `GITHUB_TOKEN`), by
    whole `_`-separated words so that `TOKENIZERS_PARALLELISM` or `MAX_TOKENS` are not."""
    upper = name.upper()
    words = upper.split("_")
    return upper in SECRETS or bool(_WORDS & set(words)) or any(f"_{p}_" in f"_{upper}_" for p in _PAIRS)
