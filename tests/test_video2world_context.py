"""Video2World generation (the infer stage's context path) and a training forward (the data path both engines
use) see the same cross-attention context: every one of the 512 T5 rows, the padding rows zero, no mask, as
upstream trains and generates. Tiny-v2w preset, fp32, CPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cosmos_util import make_run, make_spec
from harness.core.atomic import atomic_write_json, read_json
from harness.core.paths import RunPaths
from harness.core.spec import RunSpec
from harness.core.tokens import BOV_ID
from harness.cosmos import generate as gen
from harness.cosmos import parallel
from harness.cosmos.data import VideoSamples, collate
from harness.cosmos.model import build_model
from harness.lib import prompts, synth
from harness.stages import infer, infer_inputs
from harness.stages.dataset import open_dataset, prompt_lengths_path, prompts_path

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def v2w(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSpec, RunPaths, Any]:
    """A merged V2W dataset whose prompt arrays come from harness.lib.prompts (the tiny T5), as tokenize writes them."""
    root = tmp_path_factory.mktemp("v2w-context")
    spec = make_spec(v2w=True)
    paths = make_run(root / "run", spec, n_videos=8)
    summary = read_json(paths.dataset_summary)
    for i, doc in enumerate(summary["documents"]):
        doc["path"] = f"/clips/clip_{i:03d}.mp4"
    atomic_write_json(paths.dataset_summary, summary)
    encoder = prompts.load(synth.write_text_encoder(root / "t5", d_model=spec.preset.crossattn_dim), CPU)
    emb, lengths = prompts.encode(encoder, [f"a video of a robot arm moving {w} slowly" for w in
                                            ("left", "right", "up", "down", "fast", "in the city", "on a road", "")])
    np.save(prompts_path(paths.dataset_prefix), emb)
    np.save(prompt_lengths_path(paths.dataset_prefix), lengths)
    parallel.init(1, seed=5)
    torch.manual_seed(5)
    model = build_model(spec.preset, spec.token_math.grid, tp=1, precision="fp32", device="cpu").eval()
    with torch.no_grad():  # random init gives near-uniform logits; sharpen them so argmax is well separated
        model.output_layer.weight.mul_(20.0)
    return spec, paths, model


class CrossAttentionInputs:
    """Records what every layer's cross-attention receives: (key_value_states, attention_mask) per call."""

    def __init__(self, model: Any) -> None:
        self.calls: list[tuple[torch.Tensor, Any]] = []
        self.handles = [layer.cross_attention.register_forward_pre_hook(self._hook, with_kwargs=True)
                        for layer in model.decoder.layers]

    def _hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.calls.append((kwargs["key_value_states"].detach().clone(), kwargs.get("attention_mask")))

    def __enter__(self) -> "CrossAttentionInputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


@pytest.mark.timeout(300)
def test_generation_and_training_see_the_same_context(v2w: tuple[RunSpec, RunPaths, Any]) -> None:
    spec, paths, model = v2w
    ds = open_dataset(paths)
    item = infer_inputs._from_dataset(spec, paths, range(1))[0]  # the infer stage's view of the first test video
    doc = ds.split("test")[0]
    assert 0 < ds.prompt_length(doc) < prompts.MAX_LENGTH  # the prompt has padding rows
    sample = VideoSamples(ds, spec.token_math, "test", context_dim=spec.preset.crossattn_dim).sample(0)
    batch = collate([sample], CPU, torch.float32)  # the training data path (mcore engine; NeMo's casts alike)

    with CrossAttentionInputs(model) as train_seen, torch.no_grad():
        train_logits = model(batch["tokens"], context=batch["context"])
    kwargs = infer._prompt_context(spec, [item], None, CPU, torch.float32)
    assert set(kwargs) == {"context"}  # no mask handed to generation
    prompt = torch.cat([torch.tensor([BOV_ID]), torch.as_tensor(item.context_tokens)])[None]
    outputs: list[torch.Tensor] = []  # the model's outputs during generation; the first is the prefill's
    hook = model.register_forward_hook(lambda m, a, o: outputs.append(o.detach().clone()))
    try:
        with CrossAttentionInputs(model) as gen_seen:
            new = gen.generate(model, prompt, 2, gen.Sampling(temperature=0.0), **kwargs)
    finally:
        hook.remove()

    n_layers = len(model.decoder.layers)
    assert len(train_seen.calls) == n_layers and len(gen_seen.calls) == 2 * n_layers  # prefill + one step
    want = torch.from_numpy(np.array(ds.prompt_embedding(doc)))[:, None, :]  # [512, b=1, d], mcore's layout
    for ctx, mask in train_seen.calls + gen_seen.calls:
        assert mask is None  # all rows attended to, as upstream
        assert torch.equal(ctx, want)  # the same 512 rows, bit for bit
    assert not want[ds.prompt_length(doc):].any() and want[:ds.prompt_length(doc)].abs().sum() > 0

    n0 = prompt.shape[1]  # the first generated token is predicted at position n0 - 1
    prefill = outputs[0]
    assert prefill.shape[1] == 1  # the prefill computes the last prompt position's logits only
    assert torch.allclose(prefill[0, -1], train_logits[0, n0 - 1], rtol=1e-5, atol=1e-5), \
        (prefill[0, -1] - train_logits[0, n0 - 1]).abs().max()
    assert int(new[0, 0]) == int(train_logits[0, n0 - 1].argmax())
    assert torch.equal(batch["tokens"][0, :n0], prompt[0])  # the same sequence up to that position

    # The padding rows matter: dropping them (what a mask does) changes the logits by far more than the
    # tolerance above, so a generation that masked them would fail this test.
    with torch.no_grad():
        cut = model(batch["tokens"], context=batch["context"][:, :ds.prompt_length(doc)])
    assert (cut[0, n0 - 1] - train_logits[0, n0 - 1]).abs().max() > 1e-2
