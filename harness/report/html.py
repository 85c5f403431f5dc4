"""report.html: the one page people open to judge a run, written beside report.md by `harness.report.build.write`.

A world-model run is judged by watching its videos, so besides the report's tables and plots the page shows,
for the first evaluated videos of each checkpoint, the reference and the generated clip side by side and a
contact sheet (reference row over generated row, context frames framed in orange). Everything the page needs
lies under the results folder (plots inline as base64, videos and sheets under `media/`, linked relatively),
so `results/<run>/` can be moved or copied as a whole. The references may be any format or size: the page
gets an H.264 copy of exactly the frames evaluate compared, at the generated size, so both play in a browser
frame for frame. A small script on the page marks any video or image that fails to load, and writes the
tally into `body[data-media]`, which the headless-browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

import numpy as np

from harness.core import metrics_table as mt
from harness.core.atomic import atomic_write_bytes, atomic_write_text
from harness.core.evalrecords import ShardRecord, videos_of

SAMPLES_PER_CHECKPOINT = 2
"""Videos shown per checkpoint: enough to see what the model does, small enough to keep the folder light."""
SHEET_COLUMNS = 8
"""Frames per contact sheet row at most (evenly subsampled over the compared frames)."""
THUMB_WIDTH = 128
CONTEXT_RGB = (245, 158, 11)
"""Border of a context frame (reproduced from the input, not predicted) on the contact sheet."""
PREDICTED_RGB = (59, 130, 246)


@dataclass(frozen=True)
class Sample:
    """One evaluated video shown on the page: its files and the frame alignment evaluate used."""

    step: int
    name: str
    generated: str
    reference: str
    generated_frames: tuple[int, ...]
    """Generated frame of each compared pair."""
    reference_frames: tuple[int, ...]
    """Source frame of each compared pair (same length as generated_frames)."""
    context_frames: int
    """Generated frames below this index reproduce the context."""
    scores: tuple[tuple[str, float | None], ...] = ()
    """(metric name, the video's value) for the metrics evaluate computed, in `metrics_table` order."""
    resize: str = "upstream"
    """How evaluate fitted the reference to the generated size (its result's `resize`)."""
    prompt: str | None = None
    """Video2World: the prompt the generation followed."""


@dataclass(frozen=True)
class Media:
    """What the page links for one sample, relative to the page; `error` where the files could not be made."""

    sample: Sample
    generated: str = ""
    reference: str = ""
    sheet: str = ""
    error: str = ""


# ------------------------------------------------------------------------------------------ pure
def pick_samples(evals: Mapping[int, Sequence[ShardRecord]],
                 per_checkpoint: int = SAMPLES_PER_CHECKPOINT) -> tuple[Sample, ...]:
    """The first `per_checkpoint` scored videos of each checkpoint (in shard order), from evaluate's files."""
    out: list[Sample] = []
    for step in sorted(evals):
        resize = {v.name: s.result.resize or "upstream" for s in evals[step] for v in s.result.videos}
        for v in videos_of(evals[step])[:per_checkpoint]:
            g, r = v.generated_frames, v.reference_frames
            if not g or len(g) != len(r) or not v.generated or not v.reference:
                continue
            out.append(Sample(step, v.name, v.generated, v.reference, g, r, v.context_frames,
                              tuple(v.scores.values.items()), resize[v.name], v.prompt))
    return tuple(out)


def subsample(n: int, k: int = SHEET_COLUMNS, keep: Sequence[int] = ()) -> list[int]:
    """k evenly spaced indices of range(n), first and last included (all of them when n <= k), plus `keep`
    (the last context and the first predicted frame: where the model takes over is what one looks for)."""
    even = range(n) if n <= k else (round(i * (n - 1) / (k - 1)) for i in range(k))
    return sorted(set(even) | {i for i in keep if 0 <= i < n})


def media_names(sample: Sample) -> tuple[str, str, str]:
    """(generated, reference, sheet) paths relative to the page; one folder per checkpoint. The name comes from an
    evaluation file: a separator or a leading dot in it (`../../x`) would place the files outside `media/`."""
    safe = sample.name.replace("/", "_").replace("\\", "_").replace("\0", "_").lstrip(".") or "video"
    stem = f"media/step-{sample.step:08d}/{safe}"
    return f"{stem}.generated.mp4", f"{stem}.reference.mp4", f"{stem}.frames.png"


# ------------------------------------------------------------------------------------------ images
def contact_sheet(ref: np.ndarray, gen: np.ndarray, labels: Sequence[str], context: Sequence[bool]) -> bytes:
    """PNG of the reference row over the generated row, one column per label; context columns framed in
    CONTEXT_RGB and labelled `ctx`, predicted ones in PREDICTED_RGB."""
    from PIL import Image, ImageDraw, ImageFont

    n, h, w = len(labels), ref.shape[1], ref.shape[2]
    tw = THUMB_WIDTH
    th = max(1, round(h * tw / w))
    pad, border, head, side = 6, 3, 22, 92
    font = ImageFont.load_default(size=14)
    cell_w, cell_h = tw + 2 * border, th + 2 * border
    sheet = Image.new("RGB", (side + n * (cell_w + pad) + pad, head + 2 * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (frames, title) in enumerate(((ref, "reference"), (gen, "generated"))):
        y = head + pad + row * (cell_h + pad)
        draw.text((pad, y + cell_h // 2 - 8), title, fill="black", font=font)
        for col in range(n):
            x = side + pad + col * (cell_w + pad)
            colour = CONTEXT_RGB if context[col] else PREDICTED_RGB
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=colour)
            thumb = Image.fromarray(frames[col]).resize((tw, th), Image.Resampling.BILINEAR)
            sheet.paste(thumb, (x + border, y + border))
            if row == 0:
                draw.text((x + 2, 3), labels[col], fill=colour, font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _sheet_for(sample: Sample, ref: np.ndarray, gen: np.ndarray) -> bytes:
    """ref: the compared reference frames in pair order; gen: every generated frame."""
    g_all = sample.generated_frames
    ctx = [gi < sample.context_frames for gi in g_all]
    cols = subsample(len(g_all), keep=[b for k in range(1, len(ctx)) if ctx[k - 1] != ctx[k] for b in (k - 1, k)])
    g = [g_all[k] for k in cols]
    labels = [f"{'ctx ' if gi < sample.context_frames else ''}{gi}" for gi in g]
    return contact_sheet(ref[cols], gen[g], labels, [gi < sample.context_frames for gi in g])


# ------------------------------------------------------------------------------------------ files
def write_media(sample: Sample, out_dir: Path) -> Media:
    """The sample's generated clip (copied when already H.264), its reference frames as H.264 at the generated
    size, and its contact sheet; a file that cannot be read becomes the sample's `error`, never an exception."""
    from harness.lib.video import load_frames, write_mp4

    gen_rel, ref_rel, sheet_rel = media_names(sample)
    try:
        gen = load_frames(sample.generated)
        size = (gen.shape[1], gen.shape[2])
        ref_all = load_frames(sample.reference, size, max(sample.reference_frames) + 1,
                              resize=sample.resize)  # type: ignore[arg-type]  # a value evaluate wrote
        ref = ref_all[[min(r, len(ref_all) - 1) for r in sample.reference_frames]]
        codec, fps = _probe(sample.generated)
        if codec == "h264":
            atomic_write_bytes(out_dir / gen_rel, Path(sample.generated).read_bytes())
        else:
            write_mp4(out_dir / gen_rel, gen, fps)
        write_mp4(out_dir / ref_rel, ref, fps)
        atomic_write_bytes(out_dir / sheet_rel, _sheet_for(sample, ref, gen))
    except Exception as e:  # noqa: BLE001 - one unreadable video must not cost the whole report
        return Media(sample, error=f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return Media(sample, gen_rel, ref_rel, sheet_rel)


def _probe(path: str) -> tuple[str, int]:
    """(codec, frames per second) of the generated clip: the reference copy plays at the same rate."""
    import av

    with av.open(path) as c:
        stream = c.streams.video[0]
        return stream.codec_context.name, max(1, round(float(stream.average_rate or 1)))


# ------------------------------------------------------------------------------------------ page
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#111;max-width:1400px}
table{border-collapse:collapse;margin:6px 0 18px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;
font-size:13px}th{background:#f3f4f6}h2{margin-top:28px;border-bottom:1px solid #ddd}
.pair{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}.pair figure{margin:0}
figcaption{font-size:12px;color:#444}video{background:#000;width:320px}.sample{margin:12px 0 22px}
.sample img{max-width:100%;height:auto}
.bad{color:#b91c1c;font-weight:600}.legend span{padding:0 6px;color:#fff;border-radius:3px}"""

SCRIPT = """window.addEventListener('load', function () {
  var media = Array.prototype.slice.call(document.querySelectorAll('video, img'));
  function state(m) {
    if (m.tagName === 'IMG') return m.complete ? (m.naturalWidth > 0 ? 'ok' : 'bad') : 'wait';
    return m.error ? 'bad' : (m.readyState >= 2 ? 'ok' : 'wait');
  }
  function tick() {
    var n = {ok: 0, bad: 0, wait: 0};
    media.forEach(function (m) {
      var s = state(m); n[s] += 1;
      if (s === 'bad' && !m.dataset.bad) {
        m.dataset.bad = '1';
        var p = document.createElement('div'); p.className = 'bad';
        p.textContent = 'failed to load: ' + (m.getAttribute('src') || m.querySelector('source').getAttribute('src'));
        m.parentNode.insertBefore(p, m.nextSibling);
      }
    });
    document.body.dataset.media = 'ok=' + n.ok + ' bad=' + n.bad + ' wait=' + n.wait;
    if (n.wait) setTimeout(tick, 100);
  }
  tick();
});"""


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h3>{e(title)}</h3>\n<table><tr>{head}</tr>{body}</table>"


def _sample_html(m: Media) -> str:
    e, s = html.escape, m.sample
    scores = ", ".join(f"{mt.get(k).label} {v:.4g}" for k, v in s.scores if v is not None)
    title = f"<h4>{e(s.name)}{' (' + e(scores) + ')' if scores else ''}</h4>" \
        + (f'<p class="prompt">prompt: {e(s.prompt)}</p>' if s.prompt is not None else "")
    if m.error:
        return f'<div class="sample">{title}<p class="bad">not shown: {e(m.error)}</p></div>'
    n = len(s.generated_frames)
    ctx = sum(g < s.context_frames for g in s.generated_frames)
    video = ('<figure><video src="{src}" controls muted loop autoplay playsinline preload="auto"></video>'
             '<figcaption>{cap}</figcaption></figure>')
    return (f'<div class="sample">{title}<div class="pair">'
            + video.format(src=e(quote(m.reference)), cap=f"reference: {e(Path(s.reference).name)}, {n} compared "
                           f"frames (source frames {s.reference_frames[0]}-{s.reference_frames[-1]})")
            + video.format(src=e(quote(m.generated)), cap=f"generated at step {s.step}: {ctx} context + "
                           f"{n - ctx} predicted frames")
            + f'</div><img src="{e(quote(m.sheet))}" alt="frames of {e(s.name)}"></div>')


def page(title: str, tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
         plots: Mapping[str, bytes], media: Sequence[Media]) -> str:
    """The whole page: pure, so tests can read what it links without a browser."""
    e = html.escape
    parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>", f"<h1>{e(title)}</h1>",
             "<h2>Tables</h2>"] + [_table(*t) for t in tables]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img alt="{e(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                  for n, b in plots.items()]
    if media:
        parts.append("<h2>Videos</h2><p class='legend'>Left the reference (the frames evaluate compared), right "
                     f"the generation. Contact sheets: <span style='background:rgb{CONTEXT_RGB}'>context</span> "
                     f"frames reproduce the input, <span style='background:rgb{PREDICTED_RGB}'>predicted</span> "
                     "frames are the model's.</p>")
        for step in sorted({m.sample.step for m in media}):
            parts.append(f"<h3>checkpoint step {step}</h3>")
            parts += [_sample_html(m) for m in media if m.sample.step == step]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write(title: str, tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
          plots: Mapping[str, bytes], samples: Sequence[Sample], out_dir: Path) -> list[Path]:
    """Media first, the page last (atomically), so a page on disk never links a file still being written."""
    media = [write_media(s, out_dir) for s in samples]
    atomic_write_text(out_dir / "report.html", page(title, tables, plots, media))
    files = [out_dir / p for m in media if not m.error for p in (m.generated, m.reference, m.sheet)]
    return files + [out_dir / "report.html"]
