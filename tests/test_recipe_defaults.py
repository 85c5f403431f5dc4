"""The seed recipe's optimizer defaults, as upstream's post-training scripts run them: a constant learning rate
(no scheduler) and megatron-core's default weight decay; and the prompt encoder's dtype reaching the loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.core import footprint
from harness.core import spec as spec_mod

BASE = "[run]\nname = 'x'\n[data]\nvideos = '/data/v'\n"


def test_min_lr_follows_lr_when_omitted() -> None:
    f = spec_mod.loads(BASE + "[finetune]\nlr = 3e-4\n").finetune
    assert f.min_lr == 3e-4 == f.lr
    assert spec_mod.loads(BASE).finetune.min_lr == spec_mod.loads(BASE).finetune.lr == 1e-4


def test_an_explicit_min_lr_wins() -> None:
    f = spec_mod.loads(BASE + "[finetune]\nlr = 3e-4\nmin_lr = 1e-5\n").finetune
    assert (f.lr, f.min_lr) == (3e-4, 1e-5)


def test_a_constant_rate_is_constant() -> None:
    from harness.stages.finetune.core import lr_at

    f = dataclasses.replace(spec_mod.loads(BASE + "[finetune]\nlr = 2e-4\nmax_steps = 10\nsave_every = 5\n").finetune)
    assert {lr_at(f, s) for s in range(10)} == {2e-4}


def test_weight_decay_is_megatrons_default() -> None:
    from megatron.core.optimizer import OptimizerConfig

    assert spec_mod.loads(BASE).finetune.weight_decay == OptimizerConfig().weight_decay == 0.01


def test_spec_json_round_trip_keeps_the_followed_value() -> None:
    s = spec_mod.loads(BASE + "[finetune]\nlr = 5e-4\n")
    again = spec_mod.from_dict(spec_mod.to_dict(s))
    assert again.finetune.min_lr == 5e-4


def test_reference_names_the_followed_key_and_upstream_source() -> None:
    rows = {key: (default, doc) for key, _, default, doc in spec_mod.reference()}
    assert rows["finetune.min_lr"][0] == "= finetune.lr"
    assert "upstream" in rows["finetune.min_lr"][1] and "upstream" in rows["finetune.weight_decay"][1]
    assert "upstream" in rows["model.text_encoder_dtype"][1]


def test_text_encoder_dtype_is_checked() -> None:
    with pytest.raises(spec_mod.SpecError) as e:
        spec_mod.loads(BASE + "[model]\ntext_encoder_dtype = 'fp16'\n")
    assert "model.text_encoder_dtype" in str(e.value) and "'fp32'" in str(e.value)


def test_t5_encoder_memory_from_its_shape() -> None:
    # T5-11B's encoder: 24 layers of 4 x 1024 x 16,384 attention + 2 x 1024 x 65,536 FFN, + 32,128 x 1024 embedding.
    assert footprint.t5_encoder_params() == 4_864_787_456
    assert footprint.text_encoder_gpu_bytes("bf16") * 2 == footprint.text_encoder_gpu_bytes("fp32")


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_prompt_encoder_loads_in_the_named_dtype(tmp_path: Path, name: str) -> None:
    import torch
    from transformers import T5Config, T5EncoderModel

    from harness.lib import prompts, synth

    d = synth.write_text_encoder(tmp_path / "t5")
    enc = prompts.load(d, torch.device("cpu"), name)
    assert next(enc.model.parameters()).dtype == prompts.DTYPES[name]
    assert isinstance(enc.model, T5EncoderModel) and isinstance(enc.model.config, T5Config)


def test_plan_and_doctor_state_the_prompt_encoders_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    import specs
    from harness import cli

    (tmp_path / "v2w.jsonl").write_text("")
    path = specs.write(tmp_path / "run.toml", specs.TINY, specs.V2W, {"data": {"jsonl": str(tmp_path / "v2w.jsonl")}})
    assert cli.main(["plan", str(path), "--num-inputs", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "T5-11B encoder, 4.86 B params in fp32: 18.1 GiB of weights on each tokenize / infer GPU" in out, out
    assert footprint.text_encoder_fits("fp32", 16) == (False, footprint.text_encoder_line("fp32") + "; GPUs of 16 GiB")
    assert footprint.text_encoder_fits("bf16", 16)[0]
