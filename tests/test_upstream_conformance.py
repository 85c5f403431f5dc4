"""Upstream conformance of the four real presets: every expected value below is written down as data from the
public upstream code, with the file and line it comes from, and never computed by a harness helper. A wrong
assumption in a harness helper is then not also in the expectation (the old 12B head dim of hidden / heads = 160
made every other test agree with it).

Upstream: NVIDIA/Cosmos branch `archived-ces2025` (commit f0679c80), files
  cosmos.py        = cosmos1/models/autoregressive/nemo/cosmos.py
  v2w.py           = cosmos1/models/autoregressive/nemo/cosmos_video2world.py
  model_config.py  = cosmos1/models/autoregressive/configs/base/model_config.py
and NeMo 2.7.3 (`nemo/collections/llm/gpt/model/base.py`, `nemo/lightning/base.py`) for the vocabulary rows.

Per-rank shapes at TP 2 and 8 come from real tensor-parallel groups: `conformance_ranks.py` forks 8 gloo ranks
that build every preset on the meta device (no memory) under megatron's parallel state for TP 8, 2 and 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fixtures_data import session_standins, write_standins
from harness.core.models import PRESETS

REAL = ("cosmos-4b", "cosmos-12b", "cosmos-5b-v2w", "cosmos-13b-v2w")
TPS = (1, 2, 8)

# ---------------------------------------------------------------------------------------------- upstream data
# Layers: cosmos.py:216 (4B num_layers 16), cosmos.py:231 (12B num_layers 40); the Video2World configs inherit
# them (v2w.py:448 CosmosConfigVideo2World5B(..., CosmosConfig4B), v2w.py:453 13B(..., CosmosConfig12B)).
LAYERS = {"cosmos-4b": 16, "cosmos-12b": 40, "cosmos-5b-v2w": 16, "cosmos-13b-v2w": 40}

# One decoder layer, name -> {TP: shape on one rank}. Column-parallel linears (linear_qkv, linear_fc1, linear_q,
# linear_kv: TELayerNormColumnParallelLinear / TEColumnParallelLinear, v2w.py:298,311-312,323) split their output
# rows over TP; row-parallel ones (linear_proj, linear_fc2: TERowParallelLinear, v2w.py:300,314,324) their input
# columns; norms are whole on every rank.
# 4B: hidden 4096 (cosmos.py:217), FFN 14336 (cosmos.py:218), 32 heads (cosmos.py:219), 8 query groups
# (cosmos.py:220), kv_channels 128 (cosmos.py:224); qk_layernorm (cosmos.py:184) of kv_channels.
LAYER_4B: dict[str, dict[int, tuple[int, ...]]] = {
    # (32 heads + 2 x 8 groups) x 128 = 6144 rows of hidden 4096
    "self_attention.linear_qkv.weight": {1: (6144, 4096), 2: (3072, 4096), 8: (768, 4096)},
    "self_attention.linear_qkv.layer_norm_weight": {1: (4096,), 2: (4096,), 8: (4096,)},
    "self_attention.q_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    "self_attention.k_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    # 32 x 128 = 4096 back to hidden 4096
    "self_attention.linear_proj.weight": {1: (4096, 4096), 2: (4096, 2048), 8: (4096, 512)},
    # SwiGLU: gate and up, 2 x 14336 rows (Llama3Config gated_linear_unit, cosmos.py:183)
    "mlp.linear_fc1.weight": {1: (28672, 4096), 2: (14336, 4096), 8: (3584, 4096)},
    "mlp.linear_fc1.layer_norm_weight": {1: (4096,), 2: (4096,), 8: (4096,)},
    "mlp.linear_fc2.weight": {1: (4096, 14336), 2: (4096, 7168), 8: (4096, 1792)},
}
# 12B: hidden 5120 (cosmos.py:232; model_config.py:41), FFN 14336 (cosmos.py:233; model_config.py:32), 32 heads
# (cosmos.py:234; model_config.py:42), 8 query groups (cosmos.py:235; model_config.py:32 n_kv_heads 8),
# kv_channels 128 (cosmos.py:239; model_config.py:43 "head_dim": 128) -- NOT 5120 / 32 = 160.
LAYER_12B: dict[str, dict[int, tuple[int, ...]]] = {
    "self_attention.linear_qkv.weight": {1: (6144, 5120), 2: (3072, 5120), 8: (768, 5120)},
    "self_attention.linear_qkv.layer_norm_weight": {1: (5120,), 2: (5120,), 8: (5120,)},
    "self_attention.q_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    "self_attention.k_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    # 32 x 128 = 4096 back to hidden 5120
    "self_attention.linear_proj.weight": {1: (5120, 4096), 2: (5120, 2048), 8: (5120, 512)},
    "mlp.linear_fc1.weight": {1: (28672, 5120), 2: (14336, 5120), 8: (3584, 5120)},
    "mlp.linear_fc1.layer_norm_weight": {1: (5120,), 2: (5120,), 8: (5120,)},
    "mlp.linear_fc2.weight": {1: (5120, 14336), 2: (5120, 7168), 8: (5120, 1792)},
}
# Video2World cross-attention per layer (v2w.py:306-318 spec; v2w.py:114-124 linear_q hidden -> query projection
# 32 x 128; v2w.py:126-136 linear_kv crossattn_emb_size 1024 (v2w.py:400) -> 2 x 8 groups x 128 (kv_channels 128,
# v2w.py:401); v2w.py:138-150 q/k layernorm of hidden_size_per_attention_head; v2w.py:306 pre_cross_attn_layernorm
# TENorm of hidden). The importer agrees: v2w.py:578 views wk as (8 groups, 128, 1024).
CROSS_5B: dict[str, dict[int, tuple[int, ...]]] = {
    "pre_cross_attn_layernorm.weight": {1: (4096,), 2: (4096,), 8: (4096,)},
    "cross_attention.linear_q.weight": {1: (4096, 4096), 2: (2048, 4096), 8: (512, 4096)},
    "cross_attention.linear_kv.weight": {1: (2048, 1024), 2: (1024, 1024), 8: (256, 1024)},
    "cross_attention.q_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    "cross_attention.k_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    "cross_attention.linear_proj.weight": {1: (4096, 4096), 2: (4096, 2048), 8: (4096, 512)},
}
CROSS_13B: dict[str, dict[int, tuple[int, ...]]] = {
    "pre_cross_attn_layernorm.weight": {1: (5120,), 2: (5120,), 8: (5120,)},
    "cross_attention.linear_q.weight": {1: (4096, 5120), 2: (2048, 5120), 8: (512, 5120)},
    "cross_attention.linear_kv.weight": {1: (2048, 1024), 2: (1024, 1024), 8: (256, 1024)},
    "cross_attention.q_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    "cross_attention.k_layernorm.weight": {1: (128,), 2: (128,), 8: (128,)},
    "cross_attention.linear_proj.weight": {1: (5120, 4096), 2: (5120, 2048), 8: (5120, 512)},
}
# Outside the layers. Vocabulary rows: base vocab_size 64000 (cosmos.py:186), Video2World input 64064 and output
# layer 64000 (v2w.py:391-392, output layer built at v2w.py:425-436). make_vocab_size_divisible_by (128,
# cosmos.py:223/238; 64 for 5B v2w.py:449; 128 for 13B v2w.py:454) never pads them: NeMo's GPTConfig.configure_model
# takes config.vocab_size as is when it is set (NeMo 2.7.3 base.py:372-373) and pads to divisible_by x TP
# (nemo/lightning/base.py:46-47) only when it is unset and read from a tokenizer (base.py:379-380); the Cosmos
# configs set it and pass no tokenizer (cosmos.py:360-362, v2w.py:652-654; post_training/general.py:60,107).
# Embedding and output layer are vocab-parallel (rows split by TP); untied (Llama3 share_embeddings False).
GLOBAL_4B = {"embedding.word_embeddings.weight": {1: (64000, 4096), 2: (32000, 4096), 8: (8000, 4096)},
             "decoder.final_layernorm.weight": {1: (4096,), 2: (4096,), 8: (4096,)},
             "output_layer.weight": {1: (64000, 4096), 2: (32000, 4096), 8: (8000, 4096)}}
GLOBAL_12B = {"embedding.word_embeddings.weight": {1: (64000, 5120), 2: (32000, 5120), 8: (8000, 5120)},
              "decoder.final_layernorm.weight": {1: (5120,), 2: (5120,), 8: (5120,)},
              "output_layer.weight": {1: (64000, 5120), 2: (32000, 5120), 8: (8000, 5120)}}
GLOBAL_5B = {"embedding.word_embeddings.weight": {1: (64064, 4096), 2: (32032, 4096), 8: (8008, 4096)},
             "decoder.final_layernorm.weight": {1: (4096,), 2: (4096,), 8: (4096,)},
             "output_layer.weight": {1: (64000, 4096), 2: (32000, 4096), 8: (8000, 4096)}}
GLOBAL_13B = {"embedding.word_embeddings.weight": {1: (64064, 5120), 2: (32032, 5120), 8: (8008, 5120)},
              "decoder.final_layernorm.weight": {1: (5120,), 2: (5120,), 8: (5120,)},
              "output_layer.weight": {1: (64000, 5120), 2: (32000, 5120), 8: (8000, 5120)}}
TABLES = {"cosmos-4b": (GLOBAL_4B, LAYER_4B), "cosmos-12b": (GLOBAL_12B, LAYER_12B),
          "cosmos-5b-v2w": (GLOBAL_5B, {**LAYER_4B, **CROSS_5B}),
          "cosmos-13b-v2w": (GLOBAL_13B, {**LAYER_12B, **CROSS_13B})}

# Parameter counts, written out from the shapes above (per layer: qkv + proj + fc1 + fc2 + 2 hidden norms + 2 head
# norms [+ cross: q + kv + proj + hidden norm + 2 head norms]; plus embedding, output layer and final norm):
#   4B : 16 x 218,112,256 + 4096 x (64000 + 64000) + 4096                     =  4,014,088,192
#   12B: 40 x 272,640,256 + 5120 x (64000 + 64000) + 5120                     = 11,560,975,360
#   5B : 16 x (218,112,256 + 35,655,936) + 4096 x (64064 + 64000) + 4096     =  4,584,845,312
#   13B: 40 x (272,640,256 + 44,045,568) + 5120 x (64064 + 64000) + 5120     = 13,323,125,760
PARAMS = {"cosmos-4b": 4_014_088_192, "cosmos-12b": 11_560_975_360, "cosmos-5b-v2w": 4_584_845_312,
          "cosmos-13b-v2w": 13_323_125_760}

# 3D RoPE split of the head dim: dim_h = dim // 6 * 2, dim_t = dim - 2 * dim_h (cosmos.py:86-87), rotary over
# kv_channels (cosmos.py:196): 128 -> t 44, h 42, w 42 (with 160 it would be 56, 52, 52). Base 500,000
# (cosmos.py:214, 229).
ROPE_SPLIT = (44, 42, 42)
HEAD_DIM = 128
ROTARY_BASE = 500_000


def expected_params(name: str, tp: int) -> dict[str, tuple[int, ...]]:
    glob, layer = TABLES[name]
    out = {k: v[tp] for k, v in glob.items()}
    for i in range(LAYERS[name]):
        out.update({f"decoder.layers.{i}.{k}": v[tp] for k, v in layer.items()})
    return out


def expected_checkpoint(name: str) -> dict[str, tuple[int, ...]]:
    """Global shapes as NeMo stores them: `module.` keys, layers stacked on a leading axis."""
    glob, layer = TABLES[name]
    out = {f"module.{k}": v[1] for k, v in glob.items()}
    out.update({f"module.decoder.layers.{k}": (LAYERS[name], *v[1]) for k, v in layer.items()})
    return out


def diff(got: dict[str, Any], want: dict[str, tuple[int, ...]]) -> list[str]:
    got = {k: tuple(v) for k, v in got.items()}
    out = [f"missing {k} {list(v)}" for k, v in want.items() if k not in got]
    out += [f"unexpected {k} {list(v)}" for k, v in got.items() if k not in want]
    out += [f"{k}: harness {list(got[k])}, upstream {list(v)}" for k, v in want.items() if k in got and got[k] != v]
    return sorted(out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("ranks") / "ranks.json"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("conformance_ranks.py")), str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def builders(tp: int) -> list[str]:
    """The ranks that built the models at this TP: the first and the last of the first TP group."""
    return sorted({"0", str(tp - 1)})


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.timeout(900)
@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("name", REAL)
def test_every_parameter_name_and_shape_per_rank(ranks: dict[str, Any], name: str, tp: int) -> None:
    for rank in builders(tp):
        got = ranks[rank][f"{name}@{tp}"]["params"]
        assert diff(got, expected_params(name, tp)) == [], f"{name} TP {tp} rank {rank}"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", REAL)
def test_checkpoint_keys_and_global_shapes(ranks: dict[str, Any], name: str) -> None:
    """What the model saves/loads (its sharded state dict), what the stand-in writer writes and what
    inspect-checkpoint expects: all the upstream layout."""
    from harness.core.models import checkpoint_shapes

    want = expected_checkpoint(name)
    assert diff(ranks["0"][f"{name}@1"]["saved"], want) == []
    assert diff(checkpoint_shapes(PRESETS[name]), want) == []


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", REAL)
def test_head_dim_attention_scale_and_rope_width(ranks: dict[str, Any], name: str) -> None:
    for tp in TPS:
        for rank in builders(tp):
            rec = ranks[rank][f"{name}@{tp}"]
            assert rec["head_dim"] == HEAD_DIM
            assert rec["rope_dim"] == HEAD_DIM
            # None: SDPA scales by 1/sqrt(q.shape[-1]) = 1/sqrt(128), as TEDotProductAttention does upstream
            assert rec["softmax_scale"] is None or math.isclose(rec["softmax_scale"], HEAD_DIM ** -0.5)


@pytest.mark.parametrize("name", REAL)
def test_rope_split_per_axis(name: str) -> None:
    """Which rotary columns move when only t, only h or only w changes: measured from the angles the model's
    RoPE produces, not from the split helper."""
    import torch

    from harness.core.tokens import Grid
    from harness.cosmos import config as cfg
    from harness.cosmos.rope3d import Rope3D, axis_dims

    p = PRESETS[name]
    assert p.rotary_base == ROTARY_BASE
    rope = Rope3D(Grid(2, 2, 2), cfg.head_dim(p), p.rotary_base, cfg.yarn(p))
    angles = rope.angles[:, 0, 0]  # [8, 128], tokens in t, h, w order
    moved = [int((angles[i] != 0).sum()) for i in (4, 2, 1)]  # (1,0,0), (0,1,0), (0,0,1)
    assert tuple(moved) == ROPE_SPLIT
    half = HEAD_DIM // 2
    for i, lo, hi in ((4, 0, 22), (2, 22, 43), (1, 43, 64)):
        cols = torch.nonzero(angles[i, :half]).flatten().tolist()
        assert cols == list(range(lo, hi))
    assert axis_dims(cfg.head_dim(p)) == ROPE_SPLIT


@pytest.mark.parametrize("name", REAL)
def test_vocabulary_rows(ranks: dict[str, Any], name: str) -> None:
    rows_in, rows_out = (64064, 64000) if "v2w" in name else (64000, 64000)
    p = PRESETS[name]
    assert (p.vocab_size, p.output_vocab_size) == (rows_in, rows_out)
    for tp in TPS:
        params = ranks["0"][f"{name}@{tp}"]["params"]
        assert params["embedding.word_embeddings.weight"][0] * tp == rows_in
        assert params["output_layer.weight"][0] * tp == rows_out


@pytest.mark.timeout(900)
def test_nemo_pads_a_vocabulary_only_when_a_tokenizer_gives_it(tmp_path: Path) -> None:
    """NeMo 2.7.3's own configure_model: a set config.vocab_size is used as is (base.py:372-373), 64,064 stays
    64,064; padding to a multiple of 128 x TP (nemo/lightning/base.py:46-47) happens only for a vocabulary read from
    a tokenizer (base.py:379-380): 64,064 -> 64,128. Cosmos sets vocab_size and passes no tokenizer."""
    import importlib.util

    if importlib.util.find_spec("nemo") is None:
        pytest.skip("NeMo 2 is not installed")
    out = tmp_path / "nemo.json"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("conformance_nemo.py")), str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text()) == {"config 64064": 64_064, "config 64000": 64_000, "tokenizer 64064": 64_128}


@pytest.mark.parametrize("name", REAL)
def test_parameter_count(ranks: dict[str, Any], name: str) -> None:
    counted = sum(math.prod(s) for s in expected_params(name, 1).values())
    assert counted == PARAMS[name]
    assert PRESETS[name].params == PARAMS[name]
    assert sum(math.prod(s) for s in ranks["0"][f"{name}@1"]["params"].values()) == PARAMS[name]


@pytest.mark.parametrize("name", REAL)
def test_train_flops_per_token(name: str) -> None:
    """3 x (2 x matmul weights incl. the output layer, not the embedding lookup + causal attention 2 x L x seq x
    32 heads x 128); for Video2World the cross-attention K/V over the prompt are per sample, not per token."""
    from harness.core.models import train_flops_per_token

    seq = 12_800
    glob, layer = TABLES[name]
    per_token = [k for k in layer if not k.startswith("cross_attention.linear_kv")]
    matmul = LAYERS[name] * sum(math.prod(layer[k][1]) for k in per_token if len(layer[k][1]) == 2)
    matmul += math.prod(glob["output_layer.weight"][1])
    want = 3.0 * (2 * matmul + 2 * LAYERS[name] * seq * 32 * HEAD_DIM)
    assert train_flops_per_token(PRESETS[name], seq) == pytest.approx(want, rel=1e-12)


def test_12b_head_dim_is_kv_channels_not_hidden_over_heads() -> None:
    p = PRESETS["cosmos-12b"]
    assert p.hidden_size // p.num_attention_heads == 160  # the tempting wrong value
    from harness.cosmos import config as cfg

    assert cfg.head_dim(p) == HEAD_DIM and cfg.transformer_config(p).kv_channels == HEAD_DIM


# ---------------------------------------------------------------------------------------------- stand-ins
@pytest.fixture(scope="module")
def standin_12b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-width Cosmos-12B stand-in of one decoder layer (zeros, ~1.9 GB), weights directly in the folder."""
    root = tmp_path_factory.mktemp("standin")
    return write_standins(root, {"cosmos-12b-1layer": ("cosmos-12b", {"layers": 1, "zeros": True, "flat": True})})[
        "cosmos-12b-1layer"]


@pytest.mark.timeout(900)
def test_standin_writer_stores_the_upstream_shapes(standin_12b: Path) -> None:
    from harness.cosmos.layout import stored_shapes

    want = expected_checkpoint("cosmos-12b")
    want = {k: ((1, *v[1:]) if k.startswith("module.decoder.layers.") else v) for k, v in want.items()}
    assert diff(stored_shapes(standin_12b), want) == []


@pytest.mark.timeout(900)
def test_inspect_checkpoint_passes_on_a_reduced_12b_standin(standin_12b: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    from harness.cli import main

    assert main(["inspect-checkpoint", str(standin_12b), "--preset", "cosmos-12b", "--tp", "8", "--layers", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert "11 model tensors of cosmos-12b (1 layers) at TP 8: all names and shapes match" in out
    # the preset is read from the stand-in's context/model.yaml (upstream CosmosConfig12B)
    assert main(["inspect-checkpoint", str(standin_12b), "--layers", "1"]) == 0
    assert "of cosmos-12b (1 layers) at TP 1: all names and shapes match" in capsys.readouterr().out
    # the full 40-layer model does not fit a 1-layer checkpoint: every stacked tensor named, exit 2
    assert main(["inspect-checkpoint", str(standin_12b), "--preset", "cosmos-12b"]) == 2
    out = capsys.readouterr().out
    assert "module.decoder.layers.self_attention.linear_qkv.weight" in out and "[1, 6144, 5120]" in out
    assert "[40, 6144, 5120]" in out


@pytest.mark.timeout(600)
def test_inspect_checkpoint_names_the_one_wrong_tensor(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    bad = session_standins(tmp_path_factory)["bad"]
    assert main(["inspect-checkpoint", str(bad), "--preset", "tiny"]) == 2
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if "module." in ln]
    assert len(rows) == 1, out
    assert "module.output_layer.weight" in rows[0] and "shape" in rows[0]
    assert "[64064, 64]" in rows[0] and "[64000, 64]" in rows[0]
    assert "1 mismatched tensors" in out
    # a wrong preset or TP is one line and exit 2 as well
    assert main(["inspect-checkpoint", str(bad), "--preset", "nope"]) == 2
    assert "--preset 'nope': unknown; allowed: cosmos-4b" in capsys.readouterr().err
    assert main(["inspect-checkpoint", str(tmp_path / "nowhere")]) == 2


def test_old_12b_head_dim_would_fail() -> None:
    """The suite's data disagree with a 12B of head dim 160 (what `head_dim` computed before kv_channels)."""
    from harness.core.models import checkpoint_shapes

    old = dataclasses.replace(PRESETS["cosmos-12b"], kv_channels=160)
    problems = diff(checkpoint_shapes(old), expected_checkpoint("cosmos-12b"))
    assert "module.decoder.layers.self_attention.linear_qkv.weight: harness [40, 7680, 5120], upstream " \
           "[40, 6144, 5120]" in problems
    assert "module.decoder.layers.self_attention.linear_proj.weight: harness [40, 5120, 5120], upstream " \
           "[40, 5120, 4096]" in problems


# Video2World's absolute position table, upstream: cosmos1/models/autoregressive/modules/embedding.py (commit
# f0679c80). :24-41 get_1d_sincos_pos_embed_from_grid: omega_i = 1 / 10000 ** (i / (D / 2)), i < D / 2, float64;
# a row is [sin(pos * omega), cos(pos * omega)]. :435-441 SinCosPosEmbAxisTE, dtype default torch.bfloat16;
# :453-455 the hidden size split D_h = D_w = dim // 6 * 2, D_t = dim - 2 * D_h (5B: 4096 -> 1368, 1364, 1364);
# :459-465 the float64 tables stored `.to(dtype=dtype)`, i.e. bf16; :472-485 columns [t, h, w], rows in t, h, w
# order, a zero BOV row first (text_to_video). Values: float64 sin/cos, rounded to float32, then to bf16 (round
# to nearest even), which is how torch converts float64 to bf16.
ABS_DIMS_5B = (1368, 1364, 1364)
# (axis, position on that axis, frequency index i, sin or cos) -> the bf16 value; the float64 value in the comment
ABS_POS_BF16 = {
    ("t", 1, 1, "sin"): 0.8359375,  # 0.834169305923825
    ("t", 4, 0, "cos"): -0.65234375,  # -0.6536436208636119
    ("t", 3, 100, "sin"): 0.703125,  # 0.7035748026405769
    ("h", 12, 0, "sin"): -0.53515625,  # -0.5365729180004349
    ("h", 7, 681, "cos"): 1.0,  # 0.9999997482924332
    ("w", 16, 5, "sin"): 0.68359375,  # 0.6836016080082259
    ("w", 9, 200, "cos"): 0.82421875,  # 0.8229242304358205
    ("w", 13, 2, "cos"): 0.99609375,  # 0.996200351510253
}


def test_video2world_abs_position_table_holds_upstream_bf16_values() -> None:
    """The table the 5B Video2World model adds (hidden 4096; a 5 x 13 x 17 grid keeps it small: every axis'
    table depends only on its own position) holds upstream's bf16 values, also in an fp32 model."""
    import torch

    from harness.core.tokens import Grid
    from harness.cosmos.video2world import abs_position_table

    p, grid = PRESETS["cosmos-5b-v2w"], Grid(5, 13, 17)
    table = abs_position_table(grid, p.hidden_size, grid.tokens + 3)
    assert table.dtype == torch.float32 and table.shape == (grid.tokens + 3, 4096)
    assert not table[0].any() and not table[grid.tokens + 1:].any()  # BOV, then padding
    d_t, d_s, _ = ABS_DIMS_5B
    offset = {"t": 0, "h": d_t, "w": d_t + d_s}
    half = {"t": d_t // 2, "h": d_s // 2, "w": d_s // 2}
    for (axis, pos, i, fn), want in ABS_POS_BF16.items():
        t, h, w = (pos if axis == a else 0 for a in "thw")
        row = 1 + (t * grid.h + h) * grid.w + w
        col = offset[axis] + i + (half[axis] if fn == "cos" else 0)
        assert float(table[row, col]) == want, (axis, pos, i, fn, float(table[row, col]))
