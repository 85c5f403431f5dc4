"""Infer stage end to end on CPU: tiny checkpoint + tiny DV tokenizer -> mp4s + alignment sidecars, which the
evaluate stage then scores frame for frame."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import specs
from harness.core import spec as spec_mod
from harness.core import trainplan as plan_mod
from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError
from harness.core.models import PRESETS
from harness.core.paths import RunPaths
from harness.core.plan import checkpoint_steps
from harness.cosmos.pretrained import write_tiny_pretrained
from harness.lib import media
from harness.lib.synth import make_clips, smooth_clip, write_tokenizer
from harness.lib.video import ClipShape, load_clip
from harness.stages import evaluate, infer, infer_inputs


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[spec_mod.RunSpec, RunPaths]:
    root = tmp_path_factory.mktemp("infer")
    inputs = root / "inputs"
    make_clips(inputs, 3, seed=4)
    Image.fromarray(smooth_clip(1, 60, 80, seed=9)[0]).save(inputs / "still.png")
    spec = specs.build({
        "model": {"preset": "tiny"}, "data": {"videos": str(inputs)},
        "video": {"width": 64, "height": 48, "num_frames": 17},
        "finetune": {"max_steps": 2, "save_every": 2},
        "infer": {"inputs": str(inputs), "max_inputs": 3, "batch_size": 2, "temperature": 1.0, "top_p": 0.8},
        "evaluate": {"backend": "fast"}})
    paths = RunPaths(root / "run")
    tok = write_tokenizer(root / "tok", (4, 8, 8))
    atomic_write_json(paths.assets_json, {"encoder": str(tok), "decoder": str(tok)})
    write_tiny_pretrained(paths.checkpoint_dir(checkpoint_steps(spec.finetune)[0]), PRESETS["tiny"], seed=3)
    return spec, paths


@pytest.mark.timeout(300)
def test_infer_writes_videos_and_sidecars(run_dir: tuple[spec_mod.RunSpec, RunPaths]) -> None:
    spec, paths = run_dir
    items = infer_inputs.list_inputs(spec, paths)
    assert [it.name for it in items] == ["clip_000", "clip_001", "clip_002"]  # max_inputs = 3, sorted
    infer.run(spec, 0, paths)
    out = paths.infer_dir(2)
    for it in items:
        mp4 = out / f"{it.name}.mp4"
        frames = load_clip(mp4, ClipShape(17, 48, 64))
        assert frames.shape == (17, 48, 64, 3)
        side = media.Sidecar.read(media.sidecar_path(mp4))
        assert side.reference == it.source and side.reference_frames == tuple(range(17))
        assert side.context_frames == 5 and side.step == 2  # 2 latent frames at t=4
    stats = json.loads((out.parent / "step-00000002.stats.json").read_text())
    assert stats["generated"] == 3 and [b["batch"] for b in stats["batches"]] == [2, 1]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    infer.run(spec, 0, paths)  # idempotent: everything present, nothing regenerated
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # a task killed after its first video: the resume batches the whole assignment as before, so each input has
    # its batch, seed and random draws again (sampled at temperature 1: batched alone it would differ)
    first = {n: (load_clip(out / f"{n}.mp4", ClipShape(17, 48, 64)), media.Sidecar.read(out / f"{n}.json").seed)
             for n in ("clip_001", "clip_002")}
    for n in first:
        (out / f"{n}.mp4").unlink()
    infer.run(spec, 0, paths)
    for n, (frames, seed) in first.items():
        assert media.Sidecar.read(out / f"{n}.json").seed == seed
        assert np.array_equal(load_clip(out / f"{n}.mp4", ClipShape(17, 48, 64)), frames), n
    assert json.loads((out.parent / "step-00000002.stats.json").read_text())["generated"] == 3

    evaluate.run(spec, 0, paths)
    res = json.loads(paths.eval_json(2).read_text())
    assert res["missing_reference"] == [] and res["failed"] == [] and len(res["videos"]) == 3
    for v in res["videos"]:
        assert v["alignment"] == "sidecar" and v["context_frames"] == 5
        # clip_002 has 21 source frames, clip_001 only 13: frames past the source are not compared
        n_src = {"clip_000": 17, "clip_001": 13, "clip_002": 21}[v["name"]]
        assert v["compared_frames"]["reference"] == list(range(min(17, n_src)))
        ctx = np.mean(v["ssim_per_frame"][:5])
        assert ctx > 0.5  # the context frames are the tokenizer's reconstruction of the source


@pytest.mark.timeout(300)
def test_sharded_infer_and_evaluate_take_their_slice(run_dir: tuple[spec_mod.RunSpec, RunPaths],
                                                     tmp_path: Path) -> None:
    """infer.inputs_per_task = 2 over 3 inputs: task 1 (checkpoint 0, shard 1) generates the third input alone,
    its evaluate task scores exactly that shard's names; a shard past the end of the list is empty, not an error."""
    spec, paths = run_dir
    d = spec_mod.to_dict(spec)
    sh = specs.build(d, {"infer": {"inputs_per_task": 2}})
    full = [it.name for it in infer_inputs.list_inputs(sh, paths)]
    assert [it.name for it in infer_inputs.list_inputs(sh, paths, 0, 2)] == full[:2]
    assert [it.name for it in infer_inputs.list_inputs(sh, paths, 2, 4)] == full[2:] == ["clip_002"]
    p2 = RunPaths(tmp_path / "run")
    atomic_write_json(p2.assets_json, read_json(paths.assets_json))
    write_tiny_pretrained(p2.checkpoint_dir(2), PRESETS["tiny"], seed=3)
    infer.run(sh, 1, p2)
    out = p2.infer_dir(2)
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip_002.mp4"]
    man = read_json(p2.infer_manifest(2, 1))
    assert man["names"] == ["clip_002"] and man["input_range"] == [2, 3] and man["generated"] == 1
    with pytest.raises(HarnessError, match=r"did infer\[0\] complete"):
        evaluate.run(sh, 0, p2)  # shard 0 has not run: no manifest
    infer.run(spec, 0, paths)  # (already done by the first test when run in order; idempotent otherwise)
    for f in ("clip_000.mp4", "clip_000.json"):  # another shard's output in the same checkpoint directory
        (out / f).write_bytes((paths.infer_dir(2) / f).read_bytes())
    evaluate.run(sh, 1, p2)
    res = read_json(p2.eval_json(2, 1))
    assert [v["name"] for v in res["videos"]] == ["clip_002"] and (res["shard"], res["shards"]) == (1, 2)
    assert res["missing_generated"] == [] and res["mean"]["videos"] == 1

    sparse = specs.build(d, {"infer": {"max_inputs": 5, "inputs_per_task": 2}})
    with pytest.raises(HarnessError, match="infer tasks have already written from it"):
        infer_inputs.list_inputs(sparse, p2)  # the run's list is kept once a task has written
    p3 = RunPaths(tmp_path / "run3")
    assert len(infer_inputs.list_inputs(sparse, p3)) == 4  # 3 clips and still.png: shard 2 ([4, 5)) is empty
    infer.run(sparse, 2, p3)
    assert read_json(p3.infer_manifest(2, 2))["names"] == []
    evaluate.run(sparse, 2, p3)
    assert read_json(p3.eval_json(2, 2))["videos"] == []


@pytest.mark.timeout(300)
def test_fp8_kv_cache_at_the_auto_batch(run_dir: tuple[spec_mod.RunSpec, RunPaths], tmp_path: Path) -> None:
    """infer.kv_cache = "fp8" with infer.batch_size = 0: the videos of one auto-sized batch, and the manifest
    says which cache generated them."""
    spec, paths = run_dir
    fp8 = specs.build(spec_mod.to_dict(spec), {"infer": {"kv_cache": "fp8", "batch_size": 0, "max_inputs": 2}})
    p2 = RunPaths(tmp_path / "run")
    atomic_write_json(p2.assets_json, read_json(paths.assets_json))
    write_tiny_pretrained(p2.checkpoint_dir(2), PRESETS["tiny"], seed=3)
    infer.run(fp8, 0, p2)
    man = read_json(p2.infer_dir(2).parent / "step-00000002.stats.json")
    assert man["kv_cache"] == "fp8" and man["generated"] == 2 and [b["batch"] for b in man["batches"]] == [2]
    assert {"batch", "new_tokens", "prefill_s", "decode_s"} <= set(man["batches"][0])  # what the report sums
    for name in man["names"]:
        assert load_clip(p2.infer_dir(2) / f"{name}.mp4", ClipShape(17, 48, 64)).shape == (17, 48, 64, 3)


@pytest.mark.timeout(300)
def test_image_input_uses_one_latent_frame(run_dir: tuple[spec_mod.RunSpec, RunPaths]) -> None:
    spec, paths = run_dir
    img_dir = paths.root.parent / "images"
    img_dir.mkdir(exist_ok=True)
    (img_dir / "still.png").write_bytes((paths.root.parent / "inputs" / "still.png").read_bytes())
    spec2 = specs.build(spec_mod.to_dict(spec), {"infer": {"inputs": str(img_dir)}})
    paths = RunPaths(paths.root.parent / "run-images")
    atomic_write_json(paths.assets_json, read_json(run_dir[1].assets_json))
    write_tiny_pretrained(paths.checkpoint_dir(2), PRESETS["tiny"], seed=3)
    (it,) = infer_inputs.list_inputs(spec2, paths)
    assert it.image and infer.context_latents(spec2, it) == 1
    assert infer.reference_frames(spec2, it)[:2] == (0, None)
    infer.run(spec2, 0, paths)
    side = media.Sidecar.read(paths.infer_dir(2) / "still.json")
    assert side.context_frames == 1 and side.reference_frames[1:] == (None,) * 16
    (v,) = [v for v in evaluate.score_pairs(evaluate.stage_pairs(spec2, paths.infer_dir(2))[0], "fast", "cpu")
            if v.name == "still"]
    assert (v.generated_frames, v.reference_frames) == ((0,), (0,)) and v.value("ssim") > 0.5
    empty = paths.root.parent / "empty"
    empty.mkdir(exist_ok=True)
    spec3 = specs.build(spec_mod.to_dict(spec), {"infer": {"inputs": str(empty)}})
    with pytest.raises(HarnessError, match="no inputs found"):
        infer_inputs.list_inputs(spec3, RunPaths(paths.root.parent / "run-empty"))


@pytest.mark.timeout(300)
def test_video2world_from_jsonl_prompts(tmp_path: Path) -> None:
    from harness.lib.synth import write_jsonl, write_text_encoder

    clips = make_clips(tmp_path / "videos", 2, seed=6)
    jsonl = write_jsonl(tmp_path / "prompts.jsonl", clips)
    spec = specs.build({
        "run": {"recipe": "video2world"}, "model": {"preset": "tiny-v2w"}, "data": {"jsonl": str(jsonl)},
        "video": {"width": 64, "height": 48, "num_frames": 9},
        "finetune": {"max_steps": 1, "save_every": 1},
        "infer": {"inputs": str(jsonl), "batch_size": 2, "context_latent_frames": 1, "temperature": 0.0}})
    paths = RunPaths(tmp_path / "run")
    tok = write_tokenizer(tmp_path / "tok", (4, 8, 8))
    t5 = write_text_encoder(tmp_path / "t5", d_model=PRESETS["tiny-v2w"].crossattn_dim)
    atomic_write_json(paths.assets_json, {"encoder": str(tok), "decoder": str(tok), "text_encoder": str(t5)})
    write_tiny_pretrained(paths.checkpoint_dir(1), PRESETS["tiny-v2w"], seed=5)
    items = infer_inputs.list_inputs(spec, paths)
    assert [it.prompt is not None for it in items] == [True, True]
    infer.run(spec, 0, paths)
    for it in items:
        frames = load_clip(paths.infer_dir(1) / f"{it.name}.mp4", ClipShape(9, 48, 64))
        assert frames.shape == (9, 48, 64, 3)
        side = media.Sidecar.read(paths.infer_dir(1) / f"{it.name}.json")
        assert side.reference == it.source and side.context_frames == 1 and side.prompt == it.prompt
    evaluate.run(spec, 0, paths)  # the prompt goes on to evaluate's records, which the report shows
    assert {v["name"]: v["prompt"] for v in read_json(paths.eval_json(1))["videos"]} == \
        {it.name: it.prompt for it in items}


@pytest.mark.timeout(900)
def test_tensor_parallel_2_generates_the_tp1_videos(tmp_path: Path) -> None:
    """infer.tensor_parallel = 2 as one process (the stage spawns two gloo ranks): greedy fp32 tokens, hence the
    decoded frames, equal TP=1's from the same checkpoint; batch_size 0 (auto) puts both inputs in one batch.
    The output layer is sharpened (x20) so that argmaxes are well separated: a random tiny model's logits sit on
    near-ties that the TP all-reduce's other summation order (and another batch's BLAS blocking) may break
    differently (seen once on CI's CPU), while a wrong shard still changes the tokens."""
    from harness.cosmos.pretrained import reference_state_dict, write_nemo

    inputs = tmp_path / "inputs"
    make_clips(inputs, 2, seed=5)
    tok = write_tokenizer(tmp_path / "tok", (4, 8, 8))
    weights = reference_state_dict(PRESETS["tiny"], 3)
    weights["output_layer.weight"] = weights["output_layer.weight"] * 20.0
    frames = {}
    for tp, batch in ((1, 1), (2, 0)):
        spec = specs.build({
            "model": {"preset": "tiny"}, "data": {"videos": str(inputs)},
            "video": {"width": 64, "height": 48, "num_frames": 9}, "finetune": {"max_steps": 2, "save_every": 2},
            "infer": {"inputs": str(inputs), "max_inputs": 2, "batch_size": batch, "temperature": 0.0,
                      "tensor_parallel": tp}})
        paths = RunPaths(tmp_path / f"run-tp{tp}")
        atomic_write_json(paths.assets_json, {"encoder": str(tok), "decoder": str(tok)})
        write_nemo(paths.checkpoint_dir(2), PRESETS["tiny"], weights)
        infer.run(spec, 0, paths)
        stats = json.loads((paths.infer_dir(2).parent / "step-00000002.stats.json").read_text())
        assert [b["batch"] for b in stats["batches"]] == ([1, 1] if tp == 1 else [2])
        frames[tp] = [load_clip(paths.infer_dir(2) / f"clip_00{i}.mp4", ClipShape(9, 48, 64)) for i in range(2)]
    for one, two in zip(frames[1], frames[2]):
        assert np.array_equal(one, two)


@pytest.mark.timeout(300)
def test_baseline_step_0_is_the_pretrained_model_or_a_seeded_random_init(
        run_dir: tuple[spec_mod.RunSpec, RunPaths], tmp_path: Path) -> None:
    """Step 0 loads the staged pretrained checkpoint finetune starts from (the same weights as a finetune save
    written from it), with no finetune checkpoint in the run; with model.checkpoint '' it is the random
    initialisation of run.seed: the same weights again for the same seed, others for another. Weights are
    compared, not generated pixels: greedy decoding of a tiny random model sits on near-ties that two loads of
    the same weights may break differently on CPU (BLAS results vary with memory alignment)."""
    spec, paths = run_dir
    d = spec_mod.to_dict(spec)
    pretrained = tmp_path / "pretrained"
    write_tiny_pretrained(pretrained, PRESETS["tiny"], seed=3)  # the weights of the finetune save below
    greedy = {"infer": {"max_inputs": 1, "temperature": 0.0, "baseline": "on"}}

    def run(s: spec_mod.RunSpec, root: Path, step: int, checkpoint: Path | None = None) -> dict[str, np.ndarray]:
        """Infer's task for `step` in a run at `root`; the weights it generated from."""
        p = RunPaths(root)
        atomic_write_json(p.assets_json, {**read_json(paths.assets_json),
                                          **({"checkpoint": str(checkpoint)} if checkpoint else {})})
        if step:
            write_tiny_pretrained(p.checkpoint_dir(step), PRESETS["tiny"], seed=3)
        infer.run(s, plan_mod.eval_steps(s).index(step), p)  # one shard: the task is the step's index
        assert media.Sidecar.read(media.sidecar_path(p.infer_dir(step) / "clip_000.mp4")).step == step
        assert load_clip(p.infer_dir(step) / "clip_000.mp4", ClipShape(17, 48, 64)).shape == (17, 48, 64, 3)
        model = infer.load_model(infer.weights(s, p, step), s, 1)
        return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()
                if hasattr(v, "detach")}

    def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    with_ckpt = specs.build(d, greedy, {"model": {"checkpoint": str(pretrained)}})
    assert plan_mod.eval_steps(with_ckpt) == (0, 2)
    base = run(with_ckpt, tmp_path / "a", 0, pretrained)
    assert not (tmp_path / "a" / "checkpoints").exists()  # step 0 needs no finetune save
    assert same(base, run(with_ckpt, tmp_path / "b", 2))

    random = specs.build(d, greedy)  # model.checkpoint '': a random initialisation from run.seed
    first = run(random, tmp_path / "c", 0)
    assert same(first, run(random, tmp_path / "d", 0))
    other = run(specs.build(d, greedy, {"run": {"seed": 99}}), tmp_path / "e", 0)
    assert not same(first, other) and not same(first, base)


def test_output_names_stay_unique_when_a_rename_meets_another_inputs_own_name() -> None:
    """Inputs a/x.mp4, b/x.mp4 and x-1.mp4 (a recursive folder): the second x must not become x-1, the third
    input's own name, or one generation overwrites the other (and a resume skips it as done)."""
    from harness.stages.infer_inputs import InferInput, _unique_names

    got = [i.name for i in _unique_names([InferInput(n, f"/s/{k}/{n}.mp4") for k, n in enumerate(["x", "x", "x-1"])])]
    assert got == ["x", "x-2", "x-1"]
    got = [i.name for i in _unique_names([InferInput("x", f"/s/{k}.mp4") for k in range(3)])]
    assert got == ["x", "x-1", "x-2"]


def test_output_names_are_never_hidden_nor_too_long() -> None:
    """A dot-named input (.x.mp4) must not give a hidden output evaluate passes over, and a 240-byte name must leave
    room for the temp, sidecar and report names (255 bytes a name): long names keep their start and a hash."""
    from harness.stages.infer_inputs import NAME_BYTES, output_stem

    assert output_stem(Path("/d/.hid.mp4")) == "hid" and output_stem(Path("/d/..mp4")) == "video"
    long_a, long_b = "長" * 80 + "a", "長" * 80 + "b"
    a, b = output_stem(Path(f"/d/{long_a}.mp4")), output_stem(Path(f"/d/{long_b}.mp4"))
    assert a != b and a.startswith("長" * 30) and len(a.encode()) <= NAME_BYTES and len(b.encode()) <= NAME_BYTES
    assert output_stem(Path("/d/plain name.mov")) == "plain name"
    latin1 = Path(os.fsdecode(b"/d/caf\xe9_clip.mp4"))  # a name in Latin-1 once failed every infer task
    assert output_stem(latin1) == "caf\ufffd_clip"


def test_an_unreadable_input_is_skipped_with_its_reason(run_dir: tuple[spec_mod.RunSpec, RunPaths],
                                                        tmp_path: Path) -> None:
    """One empty or cut-short file among the inputs costs its own video, not the task (and with it the
    shard's evaluation at every checkpoint): `readable` keeps the others and says why."""
    from harness.stages.infer import readable
    from harness.stages.infer_inputs import InferInput

    spec, _ = run_dir
    good = sorted(Path(spec.infer.inputs).glob("*.mp4"))[0]
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[:300])
    batch = [InferInput("good", str(good)), InferInput("zero", str(tmp_path / "zero.mp4")),
             InferInput("cut", str(tmp_path / "cut.mp4"))]
    skipped: dict[str, str] = {}
    kept, clips = readable(spec, batch, skipped)
    assert [it.name for it in kept] == ["good"] and list(clips) == ["good"]
    assert clips["good"].shape == (spec.token_math.context_frames(spec.infer.context_latent_frames), 48, 64, 3)
    assert sorted(skipped) == ["cut", "zero"] and "empty file" in skipped["zero"]
    assert str(tmp_path / "cut.mp4") in skipped["cut"]


def test_infer_reads_a_jsonl_as_tokenize_and_doctor_do(tmp_path: Path) -> None:
    """infer once had its own jsonl reader: a U+2028 in a prompt split its line, a null prompt became "None", a
    byte that is not UTF-8 was a traceback, and one bad line failed the task. Now the one parser: bad lines are
    left out (and logged), the same video with two prompts is two generations."""
    for n in ("a", "b"):
        (tmp_path / f"{n}.mp4").write_bytes(b"x")
    jl = tmp_path / "in.jsonl"
    jl.write_bytes("\n".join([
        json.dumps({"prompt": "one\u2028line", "visual_input": "a.mp4"}, ensure_ascii=False),
        json.dumps({"prompt": None, "visual_input": "b.mp4"}),
        '{"prompt": "caf\xe9", "visual_input": "b.mp4"}',
        json.dumps({"prompt": "again", "visual_input": "a.mp4"}),
        json.dumps({"prompt": "gone", "visual_input": "missing.mp4"})]).encode("utf-8").replace(b"\xc3\xa9", b"\xe9"))
    got = infer_inputs._from_path(specs.build(specs.TINY, specs.V2W, {"data": {"jsonl": str(jl)}}), jl)
    assert [(Path(i.source).name, i.prompt) for i in got] == [("a.mp4", "one\u2028line"), ("a.mp4", "again"),
                                                             ("missing.mp4", "gone")]


def test_infer_inputs_are_listed_once_per_run(tmp_path: Path) -> None:
    """The first task's list of infer.inputs stands for every shard and resume: a clip added to the folder or a
    line added to the jsonl while the array runs neither shifts the shards nor renames outputs. A run directory
    reused with other settings lists again; a damaged list is one line naming it."""
    clips = make_clips(tmp_path / "in", 2, seed=1)
    spec = specs.build(specs.TINY, {"data": {"videos": str(tmp_path / "in")},
                                    "infer": {"inputs": str(tmp_path / "in"), "max_inputs": 4}})
    paths = RunPaths(tmp_path / "run")
    first = infer_inputs.list_inputs(spec, paths)
    (tmp_path / "in" / "a_first.mp4").write_bytes(clips[0].read_bytes())  # sorts before every other clip
    assert infer_inputs.list_inputs(spec, paths) == first and len(first) == 2
    assert infer_inputs.list_inputs(spec, paths, 1, 2) == first[1:]
    more = specs.build(spec_mod.to_dict(spec), {"infer": {"max_inputs": 3}})
    assert [it.name for it in infer_inputs.list_inputs(more, paths)][0] == "a_first"
    assert infer_inputs.list_inputs(more, paths) == infer_inputs.list_inputs(more, paths)
    lines = paths.infer_inputs_jsonl.read_text().splitlines()
    paths.infer_inputs_jsonl.write_text("\n".join(lines[:-1]) + "\n")  # cut at a line: one input short
    with pytest.raises(HarnessError, match="damaged .*2 inputs listed where its first line says 3"):
        infer_inputs.list_inputs(more, paths)
    paths.infer_inputs_jsonl.unlink()
    paths.infer_dir(2).mkdir(parents=True)  # a task has written: the list is the run's for good
    with pytest.raises(HarnessError, match="is gone or was made with other settings, and infer tasks have already"):
        infer_inputs.list_inputs(more, paths)
    paths.infer_inputs_jsonl.write_text(lines[0] + "\n{")
    with pytest.raises(HarnessError, match=r"infer/inputs.jsonl: the run's list of infer.inputs is damaged"):
        infer_inputs.list_inputs(more, paths)


def test_create_once_keeps_the_first_writer(tmp_path: Path) -> None:
    from harness.core.atomic import atomic_create_text

    p = tmp_path / "d" / "once.txt"
    assert atomic_create_text(p, "first") and not atomic_create_text(p, "second")
    assert p.read_text() == "first" and [q.name for q in p.parent.iterdir()] == ["once.txt"]


def test_a_dangling_link_among_the_inputs_is_skipped_by_name(tmp_path: Path) -> None:
    """A broken link in an infer.inputs folder vanished from the list, the manifest and the report."""
    from harness.stages.infer import readable

    make_clips(tmp_path / "in", 1, seed=2)
    (tmp_path / "in" / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    spec = specs.build(specs.TINY, {"data": {"videos": str(tmp_path / "in")},
                                    "infer": {"inputs": str(tmp_path / "in")}})
    items = infer_inputs.list_inputs(spec, RunPaths(tmp_path / "run"))
    assert [it.name for it in items] == ["clip_000", "gone"]
    skipped: dict[str, str] = {}
    kept, _ = readable(spec, items, skipped)
    assert [it.name for it in kept] == ["clip_000"] and list(skipped) == ["gone"]
