"""The one table of evaluation metrics: every place that computes, writes, shows, tracks or checks a quality metric
iterates `METRICS`, so adding a metric is one `Metric` row here plus its kernel (`harness.lib.metrics`: the
per-frame values and their reduction, under the same name).

What derives from a row: the evaluate stage's per-video, per-shard and per-checkpoint records (`<name>`,
`predicted_<name>`, `<name>_per_frame`), the notes of its result files, the `evaluate.metrics` choices, the
report's checkpoint column, its plot panel and the best checkpoint, the TensorBoard / W&B tag, the columns of
`harness evaluate` and the nightly reference `harness bench compare` checks. Pure (no numpy): the spec, the
report and the login node's commands read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Metric:
    name: str
    """Key in `evaluate.metrics`, the evaluate records, report.json; its kernel in `harness.lib.metrics`."""
    label: str
    """Short display name (table headers, the report page's sample captions)."""
    unit: str
    """'' for a unitless number; also the unit of its nightly reference."""
    higher_is_better: bool
    """Direction of `best`: the report's best checkpoint maximises (or minimises) the first selected metric."""
    digits: int
    """Decimals in every table (report, `harness evaluate`, `bench compare`)."""
    tracking_tag: str
    """TensorBoard / W&B scalar of the per-checkpoint mean."""
    reference: str
    """Key of its nightly reference under `[systems.*]` in configs/nightly/references.toml."""
    plot: bool = True
    """A panel of the report's eval.png."""
    per_frame: bool = False
    """Each video's record also lists the per-frame values, as `<name>_per_frame`."""
    infinite_when_identical: bool = False
    """Identical clips have no finite value: JSON has no infinity, so the value is null with `identical: true`,
    and means leave such videos out and name them in `identical_videos`."""
    notes: tuple[str, ...] = ()
    """Written into every evaluate result that computes it: what the number means."""

    @property
    def column(self) -> str:
        """The report's checkpoint column and plot axis."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    @property
    def predicted_key(self) -> str:
        """The mean over predicted frames only, in the means records."""
        return f"predicted_{self.name}"

    @property
    def predicted_column(self) -> str:
        """The report's and compare's column of the predicted-frames mean."""
        return f"predicted {self.column}"

    @property
    def per_frame_key(self) -> str:
        return f"{self.name}_per_frame"

    def format(self, v: float) -> str:
        return f"{v:.{self.digits}f}"


METRICS: tuple[Metric, ...] = (
    Metric("psnr", "PSNR", "dB", higher_is_better=True, digits=2, tracking_tag="eval/psnr_mean", reference="psnr",
           infinite_when_identical=True,
           notes=("PSNR in dB; identical clips have infinite PSNR: psnr is null, identical is true, and means "
                  "exclude them", "PSNR: one MSE over all compared frames of a video")),
    Metric("ssim", "SSIM", "", higher_is_better=True, digits=4, tracking_tag="eval/ssim_mean", reference="ssim",
           per_frame=True, notes=("SSIM: skimage defaults per frame, averaged",)),
)
"""In the order every output lists them (record keys, columns, tags); `evaluate.metrics` chooses among them."""

NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
"""Fixed at import for the spec's allowed values; code that runs later calls `names()`."""


def names() -> tuple[str, ...]:
    return tuple(m.name for m in METRICS)


def get(name: str) -> Metric:
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(f"unknown metric {name!r} (known: {', '.join(names())})")


def find(key: str) -> Metric | None:
    """The metric whose mean `key` is, over all compared frames (its name) or the predicted ones
    (`predicted_key`); None for any other key (a loss, a rate)."""
    return next((m for m in METRICS if key in (m.name, m.predicted_key)), None)


def selected(chosen: Iterable[str] | None = None) -> tuple[Metric, ...]:
    """The rows `chosen` names (all when None), in table order: the order of every record and column,
    whatever order `evaluate.metrics` lists them in."""
    if chosen is None:
        return METRICS
    wanted = set(chosen)
    return tuple(m for m in METRICS if m.name in wanted)
