"""stage-assets: HF snapshots from the (offline) cache, local directories in place, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures_data import make_spec, session_assets, session_standins
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.launch.worker import worker
from harness.lib import synth
from harness.stages.staged import resolve


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_written")


def _stage(tmp_path: Path, art: dict[str, str], /, **sections: dict[str, str]) -> RunPaths:
    spec = make_spec(art, videos=str(tmp_path), **sections)
    paths = RunPaths(tmp_path / "run")
    worker("stage-assets")(spec, 0, paths)
    return paths


def test_repo_ids_resolve_to_cache_snapshots(offline: None, tmp_path: Path,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = session_assets(tmp_path_factory)
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("")
    spec = make_spec(assets, jsonl=str(jsonl))
    paths = RunPaths(tmp_path / "run")
    worker("stage-assets")(spec, 0, paths)
    table = json.loads(paths.assets_json.read_text())
    assert sorted(table) == ["decoder", "encoder", "text_encoder"]
    hub = Path(assets["hf_home"]) / "hub"
    assert resolve(paths, "encoder").parent.parent.name == "models--" + synth.TOKENIZER_REPO.replace("/", "--")
    assert (resolve(paths, "encoder") / "encoder.jit").is_file() and str(resolve(paths, "decoder")).startswith(str(hub))
    assert (resolve(paths, "text_encoder") / "model.safetensors").is_file()
    assert "hf_secret" not in paths.assets_json.read_text()
    with pytest.raises(HarnessError, match="no asset 'checkpoint'"):
        resolve(paths, "checkpoint")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("layout", ["weights", "flat"])
def test_checkpoint_repo_resolves_to_its_nemo_folder(offline: None, tmp_path: Path, layout: str,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """An HF snapshot holding `nemo/`, with the weights under `nemo/weights/` or directly in `nemo/` (NeMo loads
    both): staged as the `nemo/` folder, checked against the preset, found by both engines (the finetune core's one
    pretrained source)."""
    from harness.stages.finetune import core

    assets = dict(session_assets(tmp_path_factory), hf_home=str(tmp_path / "hf"))
    src = Path(session_assets(tmp_path_factory)["tokenizer_dir"])
    synth.write_hf_snapshot(tmp_path / "hf", synth.TOKENIZER_REPO, {n: src / n for n in ("encoder.jit", "decoder.jit")})
    standin = session_standins(tmp_path_factory)[layout]
    synth.write_hf_snapshot(tmp_path / "hf", "org/ckpt", {"nemo": standin, "model.pt": b"not downloaded"})
    paths = _stage(tmp_path, assets, model={"checkpoint": "org/ckpt"})
    ckpt = resolve(paths, "checkpoint")
    assert ckpt.name == "nemo" and ckpt.parent.parent.name == "snapshots"
    weights = ckpt / "weights" if layout == "weights" else ckpt
    assert (weights / "metadata.json").is_file() and (weights / ".metadata").is_file()
    assert (layout == "weights") == (ckpt / "weights").is_dir()
    assert core.pretrained_dir(paths) == ckpt


@pytest.mark.timeout(900)
@pytest.mark.parametrize("layout", ["weights", "flat"])
def test_local_checkpoint_in_either_layout(offline: None, tmp_path: Path, layout: str,
                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = session_assets(tmp_path_factory)
    standin = session_standins(tmp_path_factory)[layout]
    paths = _stage(tmp_path, assets, model={"checkpoint": str(standin)})
    assert resolve(paths, "checkpoint") == standin
    # a snapshot-like folder holding nemo/ resolves to it
    shutil.copytree(standin, tmp_path / "repo" / "nemo")
    paths = _stage(tmp_path, assets, model={"checkpoint": str(tmp_path / "repo")})
    assert resolve(paths, "checkpoint") == tmp_path / "repo" / "nemo"


@pytest.mark.timeout(900)
def test_checkpoint_of_another_shape_fails_the_stage_in_one_line(offline: None, tmp_path: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = session_assets(tmp_path_factory)
    bad = session_standins(tmp_path_factory)["bad"]
    with pytest.raises(HarnessError) as e:
        _stage(tmp_path, assets, model={"checkpoint": str(bad)})
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"checkpoint = {str(bad)!r}: 1 problem(s) against model.preset 'tiny'")
    assert "module.output_layer.weight is [64064, 64], model needs [64000, 64]" in text
    assert f"harness inspect-checkpoint {bad} --preset tiny" in text
    assert not (tmp_path / "run" / "assets.json").exists()


@pytest.mark.timeout(900)
def test_tensors_the_model_lacks_are_logged_not_fatal(offline: None, tmp_path: Path,
                                                      tmp_path_factory: pytest.TempPathFactory,
                                                      caplog: pytest.LogCaptureFixture,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The loader reads only the model's tensors, so extra ones do not fail the stage; inspect-checkpoint, which
    lists every difference, still exits 2 on them."""
    from harness.cli import main

    extra = session_standins(tmp_path_factory)["extra"]
    paths = _stage(tmp_path, session_assets(tmp_path_factory), model={"checkpoint": str(extra)})
    assert resolve(paths, "checkpoint") == extra
    assert "module.decoder.layers.cross_attention.linear_q.weight [2, 64, 64] is not a tensor of the model" \
        in caplog.text
    assert main(["inspect-checkpoint", str(extra), "--preset", "tiny"]) == 2
    out = capsys.readouterr().out
    assert "6 mismatched tensors" in out and out.count("unexpected") == 6


def test_local_directories_are_used_in_place(offline: None, tmp_path: Path,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = session_assets(tmp_path_factory)
    paths = _stage(tmp_path, assets, tokenizer={"encoder": assets["tokenizer_dir"], "decoder": assets["tokenizer_dir"]})
    assert resolve(paths, "encoder") == Path(assets["tokenizer_dir"])
    (tmp_path / "empty-ckpt" / "weights").mkdir(parents=True)
    with pytest.raises(HarnessError, match=r"checkpoint = .*empty-ckpt': .*empty-ckpt: not a NeMo 2 checkpoint: "
                                           r"expected weights/metadata.json, metadata.json"):
        _stage(tmp_path, assets, model={"checkpoint": str(tmp_path / "empty-ckpt")})


def test_local_directory_without_the_needed_file(offline: None, tmp_path: Path,
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = session_assets(tmp_path_factory)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "encoder.jit").write_bytes(b"x")
    with pytest.raises(HarnessError, match=r"decoder = '.*tok': .*tok has no decoder.jit"):
        _stage(tmp_path, assets, tokenizer={"decoder": str(tmp_path / "tok")})
    with pytest.raises(HarnessError, match=r"encoder = './nowhere': local directory not found"):
        _stage(tmp_path, assets, tokenizer={"encoder": "./nowhere"})


def test_uncached_repo_offline_names_the_repo(offline: None, tmp_path: Path,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = session_assets(tmp_path_factory)
    with pytest.raises(HarnessError) as e:
        _stage(tmp_path, assets, tokenizer={"encoder": "nvidia/Cosmos-0.1-Tokenizer-DV4x8x8"},
               assets={"revisions": {"nvidia/Cosmos-0.1-Tokenizer-DV4x8x8": "v1"}})
    text = str(e.value)
    assert "encoder = 'nvidia/Cosmos-0.1-Tokenizer-DV4x8x8' (revision v1)" in text and "HF_HUB_OFFLINE" in text
    assert "\n" not in text and "hf_secret" not in text


def test_resolve_before_staging(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="assets.json: cannot read .*run stage-assets first"):
        resolve(RunPaths(tmp_path), "encoder")
