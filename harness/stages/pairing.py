"""Which generated video is scored against which reference: the folders' files by stem, the infer sidecars'
sources and frame alignment, and the failures of pairs that cannot be made (an ambiguous stem, a damaged sidecar,
a sidecar naming another source). Scoring them is `harness.stages.evaluate`'s."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from harness.core.errors import HarnessError, Problem
from harness.core.evalrecords import Failure
from harness.lib import media

if TYPE_CHECKING:
    from harness.core.spec import RunSpec


@dataclass(frozen=True)
class Pair:
    name: str
    generated: str
    reference: str
    reference_frames: tuple[int | None, ...] | None
    """None: identity alignment (no sidecar)."""
    context_frames: int = 0
    prompt: str | None = None
    """Video2World: the generation's prompt, from its sidecar."""
    source: str = ""
    """The source its sidecar names ('' without one)."""


def videos_of(root: Path, key: str) -> dict[str, list[Path]]:
    """Video files of one directory by stem (generated files are .mp4 whatever the source was). A broken link
    stays in, so its pair fails with the reason rather than vanishing."""
    if not root.is_dir():
        why = "no such directory" if not root.exists() else "not a directory"
        raise HarnessError(Problem(str(root), key, f"{why}: give the folder of videos to compare"))
    out: dict[str, list[Path]] = {}
    for p in sorted(root.iterdir()):
        if p.suffix.lower() in media.VIDEO_SUFFIXES and (p.is_file() or p.is_symlink()) and not p.name.startswith("."):
            out.setdefault(p.stem, []).append(p)
    return out


def _first(videos: dict[str, list[Path]]) -> dict[str, Path]:
    """A run's folders: infer writes one `<stem>.mp4` a video, so a stem is one file."""
    return {stem: found[0] for stem, found in videos.items()}


def _pair(name: str, g: Path, ref: Path, side: media.Sidecar | None) -> Pair:
    if side is None:
        return Pair(name, str(g), str(ref), None)
    return Pair(name, str(g), str(ref), side.reference_frames, side.context_frames, side.prompt, side.reference)


def _reference(g: Path, refs: list[Path]) -> Path | str:
    """The reference of generated `g` among those of its stem: the same file name, else the only one; several
    and none of the same name is ambiguous (the reason)."""
    same = [r for r in refs if r.name == g.name]
    if same or len(refs) == 1:
        return (same or refs)[0]
    return f"ambiguous reference: {', '.join(r.name for r in refs)} share the stem {g.stem!r}; keep one"


def dir_pairs(refs: dict[str, list[Path]], gens: dict[str, list[Path]], use_sidecars: bool
              ) -> tuple[list[Pair], list[Failure], list[str]]:
    """Standalone evaluate's pairs of two folders (`harness.stages.evaluate.evaluate_dirs`): (pairs, pairs that
    cannot be made with why, generated stems without a reference)."""
    pairs: list[Pair] = []
    unpaired: list[Failure] = []
    unmatched: list[str] = []
    for stem, found in gens.items():
        for g in found:
            name = stem if len(found) == 1 else g.name
            side = read_sidecar(g) if use_sidecars else None
            if isinstance(side, str):
                unpaired.append(Failure(name, side, str(g)))
                continue
            key = stem if stem in refs else Path(side.reference).stem if side is not None else stem  # `x-1` of x
            if key not in refs:
                unmatched.append(stem)
                continue
            ref = _reference(Path(side.reference) if side is not None and key != stem else g, refs[key])
            why = ref if isinstance(ref, str) else _other_source(side, ref)
            if why:
                unpaired.append(Failure(name, why, str(g)))
                continue
            pairs.append(_pair(name, g, ref, side))  # type: ignore[arg-type]  # a Path: not a str (above)
    pairs, shared = _one_source_each(pairs)
    unpaired += shared
    return pairs, unpaired, unmatched


def _other_source(side: media.Sidecar | None, ref: Path) -> str:
    """Why `ref` is not the source the sidecar names ('' when it may be): an image's generation against a video
    of its stem, or the reverse (a video re-encoded to another container is the same source)."""
    if side is None or (Path(side.reference).suffix.lower() in media.IMAGE_SUFFIXES) == \
            (ref.suffix.lower() in media.IMAGE_SUFFIXES):
        return ""
    return f"its sidecar names source {Path(side.reference).name}, not the reference {ref.name} of that stem"


def _one_source_each(pairs: list[Pair]) -> tuple[list[Pair], list[Failure]]:
    """Generations of different sources (their sidecars name different files, e.g. sub1/x.mp4 and sub2/x.mp4)
    paired with one reference: at most one of them is that reference's, so none is scored."""
    by_ref: dict[str, set[str]] = {}
    for p in pairs:
        if p.source:
            by_ref.setdefault(p.reference, set()).add(p.source)
    clash = {r for r, sources in by_ref.items() if len(sources) > 1}
    fails = [Failure(p.name, f"generations of {len(by_ref[p.reference])} different sources pair with the one "
                             f"reference {Path(p.reference).name}: which is its own is unknown", p.generated)
             for p in pairs if p.reference in clash]
    return [p for p in pairs if p.reference not in clash], fails


def _inputs_root(spec: RunSpec) -> Path | None:
    """The folder the infer inputs were listed from (infer.inputs, else data.videos for the test split)."""
    root = spec.infer.inputs or spec.data.videos
    path = Path(root).expanduser().absolute() if root else None
    return path if path is not None and path.is_dir() else None


def stage_pairs(spec: RunSpec, gen_dir: Path, names: Sequence[str] | None = None
                ) -> tuple[list[Pair], list[str], list[str], list[Failure]]:
    """Pairs of one checkpoint (or of the shard's `names` alone): the reference is found in evaluate.reference
    (`References`) when set, else it is the sidecar's source, else infer.inputs/<stem>.*; returns (pairs, missing
    references, missing generated, videos whose sidecar is damaged)."""
    gens = _first(videos_of(gen_dir, "generated"))
    if names is not None:
        gens = {n: gens[n] for n in names if n in gens}
    refs = media.References(Path(spec.evaluate.reference).expanduser()) if spec.evaluate.reference else None
    if refs is None and spec.infer.inputs and Path(spec.infer.inputs).expanduser().is_dir():
        fallback = _first(videos_of(Path(spec.infer.inputs).expanduser(), "infer.inputs"))
    else:
        fallback = {}
    inputs = _inputs_root(spec)
    pairs, missing, damaged = [], [], []
    for stem, g in gens.items():
        side = read_sidecar(g)
        if isinstance(side, str):
            damaged.append(Failure(stem, side, str(g)))
            continue
        source = Path(side.reference) if side else None
        ref = refs.find(stem, source, inputs) if refs is not None else (source or fallback.get(stem))
        if ref is None or not ref.is_file():
            missing.append(stem)
            continue
        pairs.append(_pair(stem, g, ref, side))
    return pairs, missing, [n for n in names or () if n not in gens], damaged


def read_sidecar(g: Path) -> media.Sidecar | str | None:
    """`g`'s alignment sidecar; None where it has none; why, where it is damaged: that video fails, not the task."""
    if not media.sidecar_path(g).is_file():
        return None
    try:
        return media.Sidecar.read(media.sidecar_path(g))
    except HarnessError as e:
        return str(e)
