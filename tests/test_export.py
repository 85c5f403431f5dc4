"""`harness export`: a checkpoint's weights, TP shards merged, as model.pt / model.safetensors under upstream's
PyTorch names, or as a NeMo 2 checkpoint folder; CPU, fp32.

What is checked, and against what:
- every format loads back through the harness' own pretrained loader with identical logits (`torch.equal`): the
  nemo folder directly (resolved the way a run's `model.checkpoint` is), model.pt after upstream's
  PyTorch-to-NeMo importer (restated below from upstream, not taken from the harness) has turned it back into a
  NeMo checkpoint; for tiny (a TP=2 checkpoint of the finetune stage, Adam state included), tiny Video2World
  (cross-attention) and a 1-layer model of Cosmos-4B's real widths;
- a TP=2 checkpoint exports to byte-identical files as a TP=1 checkpoint of the same weights;
- the upstream names and shapes of all four real presets, written down as data with upstream file and line.

Upstream: NVIDIA/Cosmos branch `archived-ces2025` (commit f0679c80), files
  cosmos.py   = cosmos1/models/autoregressive/nemo/cosmos.py
  v2w.py      = cosmos1/models/autoregressive/nemo/cosmos_video2world.py
  net.py      = cosmos1/models/autoregressive/networks/transformer.py
  attn.py     = cosmos1/models/autoregressive/modules/attention.py
  mlp.py      = cosmos1/models/autoregressive/modules/mlp.py
  model.py    = cosmos1/models/autoregressive/model.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cosmos_util import make_run, make_spec
from harness.cli import main
from harness.core import plan as plan_mod
from harness.core.models import PRESETS, ModelPreset
from harness.core.paths import steps_in
from harness.core.tokens import Grid
from harness.launch.worker import run_task
from harness.ops.plan import Choice
from harness.ops.submit import record_jobs, write_run

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
"""`harness export --dtype` -> the dtype every exported tensor must have."""

# ---------------------------------------------------------------------------------------------- upstream data
# The importer's mapping, upstream name -> megatron name (cosmos.py:346-356; v2w.py:627-643 adds the cross-attention
# rows; v2w.py:639 maps a `cross_attention.weight` to a megatron tensor the Video2World model does not have and is
# left out). Keys carry `model.`: upstream's AR model holds its transformer as `self.model` and its loader strips
# the prefix (model.py:143, 294).
RENAMED = {
    "model.tok_embeddings.weight": "embedding.word_embeddings.weight",
    "model.layers.*.attention.wo.weight": "decoder.layers.*.self_attention.linear_proj.weight",
    "model.layers.*.attention.q_norm.weight": "decoder.layers.*.self_attention.q_layernorm.weight",
    "model.layers.*.attention.k_norm.weight": "decoder.layers.*.self_attention.k_layernorm.weight",
    "model.layers.*.attention_norm.weight": "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight",
    "model.layers.*.feed_forward.w2.weight": "decoder.layers.*.mlp.linear_fc2.weight",
    "model.layers.*.ffn_norm.weight": "decoder.layers.*.mlp.linear_fc1.layer_norm_weight",
    "model.layers.*.cross_attention.wo.weight": "decoder.layers.*.cross_attention.linear_proj.weight",
    "model.layers.*.cross_attention.wq.weight": "decoder.layers.*.cross_attention.linear_q.weight",
    "model.layers.*.cross_attention.q_norm.weight": "decoder.layers.*.cross_attention.q_layernorm.weight",
    "model.layers.*.cross_attention.k_norm.weight": "decoder.layers.*.cross_attention.k_layernorm.weight",
    "model.layers.*.cross_attention_norm.weight": "decoder.layers.*.pre_cross_attn_layernorm.weight",
    "model.norm.weight": "decoder.final_layernorm.weight",
    "model.output.weight": "output_layer.weight",
}

# One upstream decoder layer, name -> shape. Attention: wq dim -> n_heads x head_dim, wk/wv context_dim (dim for
# self-attention) -> n_kv_heads x head_dim, wo back to dim (attn.py:90-93); q_norm/k_norm over head_dim
# (attn.py:104-105); MLP w1/w3 dim -> ffn_hidden_size, w2 back (mlp.py:35-37); attention_norm, ffn_norm of dim
# (net.py:81-82). 4B: dim 4096, 32 heads, 8 kv heads, head_dim 128, FFN 14336 (cosmos.py:216-224).
LAYER_4B = {"attention.wq.weight": (4096, 4096), "attention.wk.weight": (1024, 4096),
            "attention.wv.weight": (1024, 4096), "attention.wo.weight": (4096, 4096),
            "attention.q_norm.weight": (128,), "attention.k_norm.weight": (128,), "attention_norm.weight": (4096,),
            "feed_forward.w1.weight": (14336, 4096), "feed_forward.w2.weight": (4096, 14336),
            "feed_forward.w3.weight": (14336, 4096), "ffn_norm.weight": (4096,)}
# 12B: dim 5120, 32 heads of head_dim 128 (so wq is 4096 rows, not 5120), 8 kv heads, FFN 14336 (cosmos.py:231-239).
LAYER_12B = {"attention.wq.weight": (4096, 5120), "attention.wk.weight": (1024, 5120),
             "attention.wv.weight": (1024, 5120), "attention.wo.weight": (5120, 4096),
             "attention.q_norm.weight": (128,), "attention.k_norm.weight": (128,), "attention_norm.weight": (5120,),
             "feed_forward.w1.weight": (14336, 5120), "feed_forward.w2.weight": (5120, 14336),
             "feed_forward.w3.weight": (14336, 5120), "ffn_norm.weight": (5120,)}
# Video2World cross-attention (net.py:72-74): an Attention over context_dim 1024 (v2w.py:400 crossattn_emb_size;
# v2w.py:578 views wk as (8 groups, 128, 1024)) and its norm of dim.
CROSS_5B = {"cross_attention.wq.weight": (4096, 4096), "cross_attention.wk.weight": (1024, 1024),
            "cross_attention.wv.weight": (1024, 1024), "cross_attention.wo.weight": (4096, 4096),
            "cross_attention.q_norm.weight": (128,), "cross_attention.k_norm.weight": (128,),
            "cross_attention_norm.weight": (4096,)}
CROSS_13B = {"cross_attention.wq.weight": (4096, 5120), "cross_attention.wk.weight": (1024, 1024),
             "cross_attention.wv.weight": (1024, 1024), "cross_attention.wo.weight": (5120, 4096),
             "cross_attention.q_norm.weight": (128,), "cross_attention.k_norm.weight": (128,),
             "cross_attention_norm.weight": (5120,)}
# Outside the layers: tok_embeddings nn.Embedding(vocab, dim) (net.py:161, 244), norm of dim (net.py:170), output
# Linear(dim, vocab) (net.py:189); vocabularies 64000, Video2World input 64064 and output 64000 (v2w.py:391-392).
GLOBAL = {"cosmos-4b": (64000, 4096), "cosmos-12b": (64000, 5120), "cosmos-5b-v2w": (64064, 4096),
          "cosmos-13b-v2w": (64064, 5120)}
LAYERS = {"cosmos-4b": (16, LAYER_4B), "cosmos-12b": (40, LAYER_12B), "cosmos-5b-v2w": (16, {**LAYER_4B, **CROSS_5B}),
          "cosmos-13b-v2w": (40, {**LAYER_12B, **CROSS_13B})}


def upstream_shapes(name: str) -> dict[str, tuple[int, ...]]:
    (vocab, dim), (n, layer) = GLOBAL[name], LAYERS[name]
    out = {"model.tok_embeddings.weight": (vocab, dim), "model.norm.weight": (dim,),
           "model.output.weight": (64000, dim)}
    for i in range(n):
        out.update({f"model.layers.{i}.{k}": v for k, v in layer.items()})
    return out


# ---------------------------------------------------------------------------------------------- the importer
def import_upstream(up: dict[str, torch.Tensor], p: ModelPreset) -> dict[str, torch.Tensor]:
    """Upstream's PT importer, restated: RENAMED as is; q/k/v into one tensor whose rows are, per query group, its
    query heads, its key head, its value head (cosmos.py:279-309); w1 then w3 into fc1 (cosmos.py:267-268);
    cross-attention k/v per group, key head then value head (v2w.py:571-590)."""
    groups, d, h = p.num_query_groups, p.kv_channels, p.hidden_size
    per = p.num_attention_heads // groups
    out: dict[str, torch.Tensor] = {}
    for i in range(p.num_layers):
        for src, dst in RENAMED.items():
            key = src.replace("*", str(i))
            if key in up:
                out[dst.replace("*", str(i))] = up[key]
        a = f"model.layers.{i}."
        q = up[a + "attention.wq.weight"].reshape(groups, per, d, h)
        k, v = (up[a + f"attention.{w}.weight"].reshape(groups, 1, d, h) for w in ("wk", "wv"))
        out[f"decoder.layers.{i}.self_attention.linear_qkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, h)
        out[f"decoder.layers.{i}.mlp.linear_fc1.weight"] = torch.cat(
            [up[a + "feed_forward.w1.weight"], up[a + "feed_forward.w3.weight"]])
        if p.video2world:
            c = p.crossattn_dim
            k, v = (up[a + f"cross_attention.{w}.weight"].reshape(groups, 1, d, c) for w in ("wk", "wv"))
            out[f"decoder.layers.{i}.cross_attention.linear_kv.weight"] = torch.cat([k, v], 1).reshape(-1, c)
    return out


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tp2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The finetune stage at TP=2 (2 spawned gloo ranks), one step from a tiny pretrained checkpoint: a harness
    checkpoint with Adam state; returns its checkpoints folder and the spec."""
    from harness.cosmos import parallel
    from harness.cosmos import pretrained as pt

    root = tmp_path_factory.mktemp("tp2")
    pt.write_tiny_pretrained(root / "nemo", PRESETS["tiny"], seed=1)
    parallel.shutdown()
    spec = make_spec(checkpoint=str(root / "nemo"), tp=2, max_steps=1, save_every=1)
    paths = make_run(root / "run", spec)
    # plan.json and jobs.json as `harness submit` writes them (nothing submitted): a run a run id names
    choice = Choice("local", "tests run the stage by hand")
    write_run(paths, "", plan_mod.build(spec, plan_mod.Facts(num_inputs=8)), plan_mod.Facts(num_inputs=8), choice)
    record_jobs(paths, choice, [])
    run_task(str(paths.root), "finetune", 0)
    return paths.checkpoints_dir, spec


def export(src: Path, out: Path, fmt: str, *extra: str, dtype: str = "fp32") -> Path:
    assert main(["export", str(src), "--to", str(out), "--format", fmt, "--dtype", dtype, *extra]) == 0
    return out


def logits(ckpt: Path, p: ModelPreset, grid: Grid, toks: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    from harness.cosmos.checkpoint import load_for_inference

    model = load_for_inference(ckpt, p, grid, tp=1, seq_len=toks.shape[1])
    with torch.no_grad():
        return model(toks, context=ctx) if p.video2world else model(toks)


def check_formats(src: Path, tmp: Path, p: ModelPreset, grid: Grid, *extra: str, dtype: str = "fp32") -> None:
    """nemo and pytorch exports of `src` give `src`'s logits exactly; safetensors holds model.pt's tensors.
    `dtype`: the exports' (a bf16 source exports to bf16 without loss)."""
    from safetensors.torch import load_file

    from harness.core.atomic import atomic_write_json
    from harness.core.paths import RunPaths
    from harness.cosmos import pretrained as pt
    from harness.stages.finetune.core import pretrained_dir

    toks = torch.randint(0, 64_000, (1, grid.tokens - 1), generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 6, p.crossattn_dim) if p.video2world else None
    want = logits(src, p, grid, toks, ctx)
    nemo = export(src, tmp / "nemo", "nemo", *extra, dtype=dtype)
    run = RunPaths(tmp / "run")  # resolved as a run's model.checkpoint is, once stage-assets staged it in place
    atomic_write_json(run.assets_json, {"checkpoint": str(nemo)})
    assert torch.equal(logits(pretrained_dir(run), p, grid, toks, ctx), want)
    up = torch.load(export(src, tmp / "pt", "pytorch", *extra, dtype=dtype) / "model.pt", mmap=True)
    assert {v.dtype for v in up.values()} == {DTYPES[dtype]}
    pt.write_nemo(tmp / "imported", p, import_upstream(up, p), dtype=DTYPES[dtype])
    assert torch.equal(logits(tmp / "imported", p, grid, toks, ctx), want)
    st = load_file(str(export(src, tmp / "st", "safetensors", *extra, dtype=dtype) / "model.safetensors"))
    assert sorted(st) == sorted(up) and all(torch.equal(st[k], up[k]) for k in up)
    config = json.loads((tmp / "st" / "config.json").read_text())
    assert config["model"]["n_layers"] == p.num_layers and config["model"]["head_dim"] == p.kv_channels
    from harness.core.atomic import file_mode  # as readable as the user's other files (safetensors writes 0600)

    assert {f.stat().st_mode & 0o777 for f in (tmp / "st").rglob("*") if f.is_file()} == {file_mode()}


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.timeout(900)
def test_tiny_tp2_checkpoint_exports_load_with_identical_logits(tmp_path: Path, tp2: tuple[Path, Any]) -> None:
    ckpts, spec = tp2
    check_formats(ckpts / "step-00000001", tmp_path, spec.preset, spec.token_math.grid)
    from safetensors.torch import load_file  # a NeMo export exports again (it has a context, no trainer state)

    again = load_file(str(export(tmp_path / "nemo", tmp_path / "again", "safetensors", "--preset", "tiny")
                          / "model.safetensors"))
    first = load_file(str(tmp_path / "st" / "model.safetensors"))
    assert sorted(again) == sorted(first) and all(torch.equal(again[k], first[k]) for k in first)


@pytest.mark.timeout(900)
def test_tp2_checkpoint_exports_the_same_files_as_tp1(tmp_path: Path, tp2: tuple[Path, Any]) -> None:
    """The TP=1 equivalent: the TP=2 checkpoint's weights loaded at TP=1 and saved by the harness at TP=1."""
    from harness.cosmos import checkpoint, parallel

    ckpts, spec = tp2
    model = checkpoint.load_for_inference(ckpts / "step-00000001", spec.preset, spec.token_math.grid, tp=1)
    tp1 = tmp_path / "tp1" / "step-00000001"
    checkpoint.save(tp1, model, None, trainer={"step": 1}, context={"preset": "tiny", "step": 1})
    parallel.shutdown()
    for fmt, name in (("pytorch", "model.pt"), ("safetensors", "model.safetensors")):
        a = export(ckpts, tmp_path / f"tp2-{fmt}", fmt, "--step", "1") / name
        b = export(tp1, tmp_path / f"tp1-{fmt}", fmt) / name
        assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest(), fmt


@pytest.mark.timeout(600)
def test_tiny_video2world_exports_load_with_identical_logits(tmp_path: Path) -> None:
    from harness.cosmos import parallel
    from harness.cosmos import pretrained as pt

    pt.write_tiny_pretrained(tmp_path / "src", PRESETS["tiny-v2w"], seed=4)
    check_formats(tmp_path / "src", tmp_path, PRESETS["tiny-v2w"], Grid(2, 2, 4), "--preset", "tiny-v2w")
    parallel.shutdown()


@pytest.mark.timeout(900)
def test_real_width_one_layer_exports_load_with_identical_logits(tmp_path: Path) -> None:
    """Cosmos-4B's widths (4096 hidden, 32 heads in 8 groups, 14336 FFN, 64,000 rows) with 1 layer, 8 tokens.
    The exports are bf16, as upstream ships and `harness export` defaults to (the source is bf16): the widths are
    what this test is for. The depth is not: layer numbering and the fp32 conversion are checked at tiny width,
    where several layers cost nothing, and a second real-width layer added ~200M parameters to each of the
    test's four model loads and five ~1.5 GB checkpoint writes (~23% of its time, the suite's longest test)."""
    from harness.cosmos import parallel
    from harness.cosmos import pretrained as pt

    p = dataclasses.replace(PRESETS["cosmos-4b"], num_layers=1)
    ref = pt.write_tiny_pretrained(tmp_path / "src", p, seed=2)
    del ref  # ~3.9 GB of fp32 reference weights: the source checkpoint itself is the reference here
    check_formats(tmp_path / "src", tmp_path, p, Grid(1, 3, 3), dtype="bf16")
    parallel.shutdown()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(GLOBAL))
def test_upstream_names_and_shapes(name: str) -> None:
    """The real presets' models, built on the meta device (no memory), mapped to upstream's names."""
    from harness.cosmos import parallel
    from harness.cosmos.export import to_upstream
    from harness.cosmos.model import build_model

    parallel.init(1)
    with torch.device("meta"):
        model = build_model(PRESETS[name], Grid(3, 4, 4), tp=1, device="meta")
    got = {k: tuple(v.shape) for k, v in to_upstream(model.state_dict(), PRESETS[name]).items()}
    parallel.shutdown()
    want = upstream_shapes(name)
    assert sorted(set(got) ^ set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}


@pytest.mark.timeout(600)
def test_refusals_are_one_line_exit_2(tmp_path: Path, tp2: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    ckpts, _ = tp2
    base = ["export", "--to", str(tmp_path / "out"), "--format", "pytorch"]
    assert main([*base[:1], str(ckpts), *base[1:], "--step", "5"]) == 2
    assert "--step 5: no such checkpoint; steps there: 1 (complete: 1)" in capsys.readouterr().err
    assert main([*base[:1], str(ckpts), *base[1:]]) == 2
    assert "--step: required" in capsys.readouterr().err
    partial = tmp_path / "ckpts" / "step-00000002"
    shutil.copytree(ckpts / "step-00000001" / "weights", partial / "weights")  # a save killed before its marker
    assert main([*base[:1], str(partial.parent), *base[1:], "--step", "2"]) == 2
    assert "incomplete checkpoint" in capsys.readouterr().err
    assert main([*base[:1], str(partial), *base[1:]]) == 2
    assert "incomplete checkpoint" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    assert main([*base[:1], str(ckpts), *base[1:], "--step", "1"]) == 2
    err = capsys.readouterr().err
    assert "--to exists" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob(".out.partial-*"))
    (tmp_path / "out").rmdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for to, needle in ((tmp_path / "afile" / "sub", "--to: cannot be written into"),
                       (ckpts / "step-00000099", "inside a checkpoints folder"),
                       (ckpts / "step-00000001" / "weights" / "exp", "or a checkpoint"),  # retention deletes it
                       (tmp_path / "dangling", "--to exists"),
                       (tmp_path / "elsewhere" / "step-00000007", "named like a checkpoint")):
        assert main(["export", str(ckpts), "--to", str(to), "--format", "pytorch", "--step", "1"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert steps_in(ckpts) == [1] and not (tmp_path / "elsewhere").exists()
    for damage in ("missing", "truncated"):  # complete by its marker, but a weights file lost or cut short since
        broken = tmp_path / damage / "step-00000001"
        shutil.copytree(ckpts / "step-00000001", broken)
        shard = sorted((broken / "weights").glob("*.distcp"))[0]
        shard.unlink() if damage == "missing" else shard.write_bytes(shard.read_bytes()[:100])
        assert main([*base[:1], str(broken), *base[1:]]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"{broken / 'weights'}: the weights cannot be read")
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


NEMO_CONTEXT = """
import sys
from pathlib import Path

from nemo.collections import llm
from nemo.lightning import io

from harness.cli import main
from harness.core import plan as plan_mod

ckpt, ctx, out = map(Path, sys.argv[1:4])
config = llm.GPTConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                       kv_channels=16, vocab_size=64000, seq_length=4096)
llm.GPTModel(config, tokenizer=None).io_dump(ctx, yaml_attrs=["config"])
assert main(["export", str(ckpt), "--to", str(out), "--format", "nemo", "--dtype", "fp32", "--context", str(ctx)]) == 0
print("layers", io.load_context(out / "context", subpath="model").config.num_layers)
"""


@pytest.mark.timeout(900)
def test_nemo_export_carries_a_nemo_io_context(tmp_path: Path, tp2: tuple[Path, Any]) -> None:
    """NeMo's own serializer writes a context (io.json + config.yaml of 2 layers); the export carries it, and
    NeMo's `io.load_context(..., subpath="model")` (what upstream's NeMo inference calls) reads it back."""
    if importlib.util.find_spec("nemo") is None:
        pytest.skip("NeMo 2 is not installed (the `nemo` extra): no serializer to write an io context with")
    ckpts, _ = tp2
    ctx, out = tmp_path / "nemo-context", tmp_path / "out"
    ctx.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", NEMO_CONTEXT, str(ckpts / "step-00000001"), str(ctx), str(out)],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "layers 2" in proc.stdout
    assert (out / "context" / "io.json").read_bytes() == (ctx / "io.json").read_bytes()
    assert json.loads((out / "context" / "harness.json").read_text())["preset"] == "tiny"


def test_a_context_of_another_depth_is_refused(tmp_path: Path, tp2: tuple[Path, Any],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ckpts, _ = tp2
    ctx = tmp_path / "context"
    ctx.mkdir()
    (ctx / "io.json").write_text("{}")
    (ctx / "model.yaml").write_text("config:\n  num_layers: 3\n")
    args = ["export", str(ckpts), "--step", "1", "--to", str(tmp_path / "out"), "--context", str(ctx)]
    assert main([*args, "--format", "nemo"]) == 2
    assert "num_layers 3, but the checkpoint exported has 2 layers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    assert main([*args, "--format", "pytorch"]) == 2
    assert "only for --format nemo" in capsys.readouterr().err


@pytest.mark.timeout(600)
def test_a_run_id_names_the_run_and_its_tokenizer(tmp_path: Path, tp2: tuple[Path, Any],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`harness export RUN --step S`: the run looked up under --workdir; config.json names the run's video
    tokenizer; a nemo export from a run whose model.checkpoint has no io context says so."""
    ckpts, spec = tp2
    run = ckpts.parent.parent
    common = ["--step", "1", "--workdir", str(run.parent), "--dtype", "fp32"]
    assert main(["export", run.name, "--to", str(tmp_path / "st"), "--format", "safetensors", *common]) == 0
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["tokenizer"]["encoder"] == spec.tokenizer.encoder
    assert config["tokenizer"]["compression"] == list(spec.tokenizer.compression)
    assert config["source"]["step"] == 1 and config["source"]["engine"] == "mcore"
    assert "(tiny, 2 layers)" in capsys.readouterr().out
    assert main(["export", run.name, "--to", str(tmp_path / "nemo"), "--format", "nemo", *common]) == 0
    assert "note: no NeMo io context carried" in capsys.readouterr().out
    assert not (tmp_path / "nemo" / "context" / "io.json").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_damaged_context_record_is_one_line(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    """inspect-checkpoint and export once ended in a JSONDecodeError or AttributeError traceback (exit 1)."""
    from harness import cli
    from harness.core.models import PRESETS
    from harness.cosmos import pretrained
    from harness.cosmos.checkpoint import MARKER

    pretrained.write_tiny_pretrained(tmp_path / "ck", PRESETS["tiny"], seed=1)
    (tmp_path / "ck" / "context" / "harness.json").write_text(text)
    (tmp_path / "ck" / MARKER).write_text("{}")
    for argv in (["inspect-checkpoint", str(tmp_path / "ck")],
                 ["export", str(tmp_path / "ck"), "--to", str(tmp_path / "out"), "--format", "pytorch"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "context/harness.json: " in err[0] and "--preset" in err[0], err
