"""The Cosmos model on megatron-core (CPU, gloo): forward/loss shapes, causality, KV-cache decoding equal to a
full forward, the NeMo-2-layout pretrained checkpoint, tensor parallelism (TP=2 logits equal TP=1), Video2World."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cosmos_util import make_spec, run_ranks
from harness.core.errors import HarnessError
from harness.core.models import PRESETS
from harness.core.tokens import Grid
from harness.stages import infer

GRID = Grid(3, 4, 4)


@pytest.fixture(scope="module")
def single_rank() -> None:
    from harness.cosmos import parallel

    parallel.init(1)


def _model(name: str = "tiny", seed: int = 3) -> Any:
    from harness.cosmos.model import build_model

    torch.manual_seed(seed)
    return build_model(PRESETS[name], GRID).eval()


@pytest.mark.timeout(120)
def test_forward_loss_and_causality(single_rank: None) -> None:
    model = _model()
    toks = torch.randint(0, 64_000, (2, GRID.tokens))
    with torch.no_grad():
        logits = model(toks)
        assert logits.shape == (2, GRID.tokens, 64_000)
        changed = toks.clone()
        changed[:, 30:] = (changed[:, 30:] + 7) % 64_000
        assert torch.equal(model(changed)[:, :30], logits[:, :30])  # no position sees the future
        assert not torch.allclose(model(changed)[:, 30:], logits[:, 30:])
        loss = model(toks[:, :-1], labels=toks[:, 1:])
    assert loss.shape == (2, GRID.tokens - 1)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64_000), toks[:, 1:].reshape(-1),
                                            reduction="none").view(2, -1)
    assert torch.allclose(loss, ref, atol=1e-5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunks", [[1] * 48, [20, 1, 1, 26], [5, 11, 32]])
def test_kv_cache_decoding_equals_full_forward(single_rank: None, chunks: list[int]) -> None:
    from harness.cosmos.model import KVCache

    model = _model()
    toks = torch.randint(0, 64_000, (2, GRID.tokens))
    with torch.no_grad():
        full = model(toks)
        cache, parts, start = KVCache(), [], 0
        for n in chunks:
            parts.append(model(toks[:, start:start + n], kv_cache=cache))
            start += n
    assert cache.length == GRID.tokens
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


@pytest.mark.timeout(120)
def test_pretrained_nemo_layout_loads(single_rank: None, tmp_path: Path) -> None:
    from harness.cosmos import checkpoint, pretrained

    ref = pretrained.write_tiny_pretrained(tmp_path / "nemo", PRESETS["tiny"], seed=4)
    assert (tmp_path / "nemo" / "weights" / "metadata.json").is_file()
    assert (tmp_path / "nemo" / "context" / "model.yaml").is_file()
    spec = make_spec()
    model = infer.load_model(tmp_path / "nemo", spec, tp=1)
    direct = _model()
    direct.load_state_dict(ref, strict=False)
    toks = torch.randint(0, 64_000, (1, 40))
    with torch.no_grad():
        assert torch.equal(model(toks), direct(toks))
    with pytest.raises(HarnessError, match="not a megatron distributed checkpoint"):
        infer.load_model(tmp_path, spec, tp=1)
    other = tmp_path / "other"
    pretrained.write_tiny_pretrained(other, PRESETS["tiny-v2w"], seed=4)
    with pytest.raises(HarnessError, match="cannot be loaded|do not match"):
        checkpoint.load_model(_model(), other)
    for shard in (tmp_path / "nemo" / "weights").glob("*.distcp"):  # cut short: torch raises a BaseException
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(HarnessError, match="cannot be loaded .*damaged.*delete this folder and resume"):
        checkpoint.load_model(_model(), tmp_path / "nemo")


@pytest.mark.timeout(300)
def test_head_dim_other_than_hidden_over_heads(single_rank: None, tmp_path: Path) -> None:
    """As in Cosmos-12B/13B (kv_channels 128, hidden 5120 / 32 heads = 160): here 4 heads of 24 over hidden 64, in
    a Video2World model. The stand-in checkpoint of that shape loads, and the model decodes as it forwards."""
    import dataclasses

    from harness.cosmos import checkpoint, pretrained
    from harness.cosmos.model import KVCache, build_model

    preset = dataclasses.replace(PRESETS["tiny-v2w"], kv_channels=24)
    ref = pretrained.write_tiny_pretrained(tmp_path / "nemo", preset, seed=5)
    assert ref["decoder.layers.0.self_attention.linear_qkv.weight"].shape == ((4 + 2 * 2) * 24, 64)
    assert ref["decoder.layers.0.self_attention.linear_proj.weight"].shape == (64, 96)
    model = build_model(preset, GRID).eval()
    checkpoint.load_model(model, tmp_path / "nemo")
    attn = model.decoder.layers[0].self_attention
    assert attn.hidden_size_per_attention_head == 24 and model.rope.angles.shape[-1] == 24
    toks = torch.randint(0, 64_064, (1, GRID.tokens + 1))
    ctx = torch.randn(1, 6, preset.crossattn_dim)
    with torch.no_grad():
        full = model(toks, context=ctx)
        cache = KVCache()
        parts = [model(toks[:, :20], kv_cache=cache, context=ctx), model(toks[:, 20:], kv_cache=cache, context=ctx)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    direct = build_model(preset, GRID).eval()
    direct.load_state_dict(ref, strict=False)
    with torch.no_grad():
        assert torch.equal(direct(toks, context=ctx), full)


def _logits(ckpts: dict[str, str], inputs: dict[str, Any], tp: int) -> dict[str, torch.Tensor]:
    """Base and Video2World logits of the given checkpoints, loaded at TP=tp on this rank."""
    out = {}
    for name, ckpt in ckpts.items():
        v2w = name == "tiny-v2w"
        model = infer.load_model(ckpt, make_spec(tp=tp, v2w=v2w), tp=tp)
        with torch.no_grad():
            out[name] = model(inputs[name], context=inputs["ctx"] if v2w else None)
    return out


@pytest.mark.timeout(300)
def test_tensor_parallel_logits_equal(single_rank: None, tmp_path: Path) -> None:
    """The same checkpoint loaded at TP=2 (two gloo ranks) gives the TP=1 logits, base and Video2World."""
    from harness.cosmos import pretrained

    ckpts = {}
    for name in ("tiny", "tiny-v2w"):
        pretrained.write_tiny_pretrained(tmp_path / name, PRESETS[name], seed=9)
        ckpts[name] = str(tmp_path / name)
    inputs = {"tiny": torch.randint(0, 64_000, (2, GRID.tokens)),
              "tiny-v2w": torch.randint(0, 64_064, (2, GRID.tokens + 64)),
              "ctx": torch.randn(2, 6, PRESETS["tiny-v2w"].crossattn_dim)}
    one = _logits(ckpts, inputs, 1)
    two = run_ranks(_logits, (ckpts, inputs, 2), 2, tmp_path)
    for name in ckpts:
        assert one[name].shape[-1] == 64_000
        assert torch.allclose(two[0][name], one[name], atol=2e-5), name
        assert torch.equal(two[0][name], two[1][name])


@pytest.mark.timeout(120)
def test_video2world_cross_attention_and_cache(single_rank: None) -> None:
    from harness.cosmos.model import KVCache

    model = _model("tiny-v2w")
    seq = GRID.tokens + 64
    toks = torch.randint(0, 64_064, (2, seq))
    ctx = torch.randn(2, 6, PRESETS["tiny-v2w"].crossattn_dim)
    with torch.no_grad():
        full = model(toks, context=ctx)
        assert full.shape == (2, seq, 64_000)
        assert not torch.allclose(model(toks, context=ctx * 2), full)  # the prompt matters
        cache = KVCache()
        parts = [model(toks[:, :17], kv_cache=cache, context=ctx), model(toks[:, 17:], kv_cache=cache, context=ctx)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="context"):
        model(toks)


@pytest.mark.parametrize("form", ["token_loss", "chunked_loss"])
def test_token_loss_equals_megatron_vocab_parallel_cross_entropy(form: str, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    """The one-rank loss, unchunked and in chunks of rows, is megatron's cross-entropy, values and logit
    gradients (bf16 logits)."""
    from megatron.core import tensor_parallel

    from harness.cosmos import loss, parallel

    token_loss = getattr(loss, form)  # CPU: token_loss is the unchunked form (CUDA training's is chunked_loss)
    monkeypatch.setattr(loss, "CHUNK_ROWS", 4)  # 21 rows: five full chunks and a partial one
    parallel.init(1)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(7, 3, 50, generator=g) * 4).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[1, 2] = 52  # outside the vocab (Video2World PAD): megatron scores it as logit 0
    ours = token_loss(logits, labels)
    ref_in = logits.detach().clone().requires_grad_()
    ref = tensor_parallel.vocab_parallel_cross_entropy(ref_in.float(), labels.t().contiguous()).t()
    assert ours.shape == (3, 7) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    w = torch.rand(3, 7, generator=g)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(logits.grad.float(), ref_in.grad.float(), rtol=1e-2, atol=1e-3)
