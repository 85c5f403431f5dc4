"""stage-assets: HF snapshots from the (offline) cache, local directories in place, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import synth
from harness.errors import HarnessError
from harness.rundir import RunPaths
from harness.stages import worker
from harness.stages.assets import resolve
from fixtures_data import make_spec, session_assets


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


def test_checkpoint_repo_resolves_to_its_nemo_folder(offline: None, tmp_path: Path,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = dict(session_assets(tmp_path_factory), hf_home=str(tmp_path / "hf"))
    for repo in (synth.TOKENIZER_REPO,):
        src = Path(session_assets(tmp_path_factory)["tokenizer_dir"])
        synth.write_hf_snapshot(tmp_path / "hf", repo, {n: src / n for n in ("encoder.jit", "decoder.jit")})
    synth.write_hf_snapshot(tmp_path / "hf", "org/ckpt", {"nemo/weights/x.distcp": b"w", "nemo/context/io.json": b"{}",
                                                          "model.pt": b"not downloaded"})
    paths = _stage(tmp_path, assets, model={"checkpoint": "org/ckpt"})
    ckpt = resolve(paths, "checkpoint")
    assert ckpt.name == "nemo" and (ckpt / "weights" / "x.distcp").read_bytes() == b"w"


def test_local_directories_are_used_in_place(offline: None, tmp_path: Path,
                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    assets = session_assets(tmp_path_factory)
    ckpt = tmp_path / "ckpt"
    (ckpt / "weights").mkdir(parents=True)
    (ckpt / "weights" / "x").write_bytes(b"1")
    paths = _stage(tmp_path, assets, tokenizer={"encoder": assets["tokenizer_dir"], "decoder": assets["tokenizer_dir"]},
                   model={"checkpoint": str(ckpt)})
    assert resolve(paths, "encoder") == Path(assets["tokenizer_dir"])
    assert resolve(paths, "checkpoint") == ckpt
    (tmp_path / "empty-ckpt").mkdir()
    with pytest.raises(HarnessError, match=r"checkpoint = .*empty-ckpt has no weights or nemo/weights"):
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
