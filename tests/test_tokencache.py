"""The token cache (`data.cache_dir`) without a cluster: the key (what changes it, what does not), an entry's
states (complete, partial, live and stale claims) as a submit decides them under the lock, the run paths of a
cached run, and `harness cache ls / rm`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import specs
from harness import cli
from harness.core import plan as plan_mod
from harness.core import rundir, tokencache
from harness.core import spec as spec_mod
from harness.core.paths import CacheEntry, RunPaths, cache_entry, mark_done, new_run_dir
from harness.core.rundir import Submission
from harness.lib import synth
from harness.lib.inputs import InputItem
from harness.ops import cache
from harness.ops import plan as plan_ops
from harness.ops import submit as launching


def _spec(tmp: Path, *layers: specs.Layer) -> spec_mod.RunSpec:
    return specs.build(specs.tiny_run(tmp, name="c", videos=tmp / "videos"),
                       {"data": {"cache_dir": str(tmp / "cache")}}, *layers)


def _key(tmp: Path, items: list[InputItem], *layers: specs.Layer) -> str:
    return tokencache.key_of(cache.key_inputs(_spec(tmp, *layers), items, 2))


@pytest.fixture
def clips(tmp_path: Path) -> list[InputItem]:
    files = synth.make_clips(tmp_path / "videos", 2)
    return [InputItem(i, str(f)) for i, f in enumerate(sorted(files))]


def test_each_input_of_the_key_changes_it_and_training_keys_do_not(tmp_path: Path, clips: list[InputItem]) -> None:
    base = _key(tmp_path, clips)
    assert _key(tmp_path, clips, {"run": {"name": "other"}, "finetune": {"lr": 3e-3}, "infer": {"max_inputs": 3},
                                  "model": {"checkpoint": "org/other"}, "tokenize": {"device": "cpu"}}) == base
    changed = [{"tokenizer": {"encoder": "org/other-dv"}}, {"assets": {"revisions": {synth.TOKENIZER_REPO: "abc"}}},
               {"tokenizer": {"compression": [4, 16, 16]}}, {"video": {"width": 64}}, {"video": {"height": 64}},
               {"video": {"num_frames": 17}}, {"video": {"resize": "area"}}, {"data": {"split": [5, 1, 1]}},
               {"run": {"seed": 1}}, {"tokenize": {"device": "cuda", "gpus_per_node": 1}}]
    keys = [_key(tmp_path, clips, layer) for layer in changed]
    assert len({base, *keys}) == len(changed) + 1
    assert tokencache.key_of(cache.key_inputs(_spec(tmp_path), clips, 3)) != base  # the shard layout
    assert _key(tmp_path, clips[:1]) != base  # the input list
    os.utime(clips[0].path, ns=(1, 1))
    assert _key(tmp_path, clips) != base  # an input's mtime
    inputs = cache.key_inputs(_spec(tmp_path), clips, 2)
    assert inputs["format"] == tokencache.TOKENIZE_FORMAT
    assert tokencache.key_of({**inputs, "format": tokencache.TOKENIZE_FORMAT + 1}) != tokencache.key_of(inputs)


def test_a_local_encoder_is_keyed_by_its_file_and_a_manifest_by_its_text(tmp_path: Path,
                                                                          clips: list[InputItem]) -> None:
    tok = synth.write_tokenizer(tmp_path / "tok")
    layer = {"tokenizer": {"encoder": str(tok)}}
    before = _key(tmp_path, clips, layer)
    assert cache.encoder_id(_spec(tmp_path, layer)).startswith("sha256:")
    (tok / "encoder.jit").write_bytes((tok / "encoder.jit").read_bytes() + b"\0")
    assert _key(tmp_path, clips, layer) != before
    manifest = tmp_path / "list.txt"
    manifest.write_text("".join(f"{c.path}\n" for c in clips))
    m_layer = {"data": {"videos": None, "manifest": str(manifest)}}
    first = _key(tmp_path, clips, m_layer)
    manifest.write_text(f"{clips[0].path}\n")
    assert _key(tmp_path, clips, m_layer) != first


_DRIVERS: list["subprocess.Popen[bytes]"] = []


@pytest.fixture(autouse=True)
def _stop_drivers() -> Iterator[None]:
    yield
    for p in _DRIVERS:
        p.kill()
        p.wait()
    _DRIVERS.clear()


def _run(tmp: Path, name: str, pid: int | None = None) -> RunPaths:
    """A local run with one driver `pid` (a dead one), as a builder's run directory reads; by default a live
    stand-in driver: a process leading its own session whose arguments name the run directory, as the real
    driver's do (a live process that is not the run's, this test's own, must not count)."""
    spec = _spec(tmp)
    facts = plan_mod.Facts(num_inputs=2, max_array_size=10, nodes_available=1)
    paths = new_run_dir(tmp / "runs", name)
    choice = launching.Choice("local", "test")
    launching.write_run(paths, "", plan_mod.build(spec, facts), facts, choice)
    if pid is None:
        _DRIVERS.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(paths.root)],
                                         start_new_session=True))
        pid = _DRIVERS[-1].pid
    launching.record_jobs(paths, choice, [Submission("*", f"local:{pid}", (), False, 0.0)])
    return paths


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _complete(entry: CacheEntry, tokens: int = 0) -> None:
    """What a finished merge leaves in an entry: the dataset's files (a summary of `tokens` tokens, their bytes)
    and, last, the merge marker."""
    data = RunPaths(entry.root)
    data.dataset_dir.mkdir(parents=True, exist_ok=True)
    data.dataset_summary.write_text(json.dumps({"tokens": tokens, "dtype": "uint16", "recipe": "base"}))
    data.dataset_split.write_text("{}")
    Path(f"{data.dataset_prefix}.bin").write_bytes(b"\0\0" * tokens)
    Path(f"{data.dataset_prefix}.idx").write_bytes(b"idx")
    mark_done(data, "merge", 0)


def _claim(entry: CacheEntry, key: str, paths: RunPaths) -> tokencache.CacheUse:
    with cache.claimed(entry, key, {"k": 1}, paths) as use:
        pass
    return use


def test_entry_states_build_wait_stale_and_complete(tmp_path: Path) -> None:
    key = "ab" * 32
    entry = cache_entry(tmp_path / "cache", key)
    first = _run(tmp_path, "first")  # its driver is alive: its build is live
    use = _claim(entry, key, first)
    assert use.mode == "build" and rundir.read_spec(first) and entry.claim_json.is_file()
    assert cache.builder_of(entry) == first.run_id
    second = _run(tmp_path, "second")
    use2 = _claim(entry, key, second)
    assert (use2.mode, use2.builder) == ("wait", first.run_id)
    assert use2.line() == f"tokenize: waits on {first.run_id}'s build of cache entry {key[:16]}"
    # the builder dies mid-way: a partial entry (a shard, no merge marker) with a dead claim
    launching.record_jobs(first, launching.Choice("local", "test"),
                          [Submission("*", f"local:{_dead_pid()}", (), False, 0.0)])
    mark_done(RunPaths(entry.root), "tokenize", 0)
    (entry.root / "tokens").mkdir(exist_ok=True)
    assert cache.inspect(entry, key).mode == "build"
    third = _run(tmp_path, "third")
    use3 = _claim(entry, key, third)
    assert use3.mode == "build" and use3.stale == f"the build by {first.run_id} died"
    assert not (entry.root / "tokens").exists() and not RunPaths(entry.root).markers_dir("tokenize").exists()
    assert cache.read_claim(entry)["run"] == third.run_id  # type: ignore[index]  # a claim was just written
    _complete(entry)
    use4 = _claim(entry, key, second)
    assert (use4.mode, use4.builder) == ("reuse", third.run_id)
    assert use4.line() == f"tokenize: reused {key[:16]} (built by {third.run_id})"


def test_a_failed_submit_gives_its_claim_up(tmp_path: Path) -> None:
    key = "cd" * 32
    entry = cache_entry(tmp_path / "cache", key)
    with pytest.raises(RuntimeError):
        with cache.claimed(entry, key, {}, _run(tmp_path, "a")):
            raise RuntimeError("sbatch failed")
    assert not entry.claim_json.exists()


def test_a_cached_run_reads_tokens_from_the_entry_and_stages_its_own_assets(tmp_path: Path) -> None:
    entry, builder = tmp_path / "cache" / "k", tmp_path / "runs" / "b"
    run = new_run_dir(tmp_path / "runs", "r")
    p = rundir.write_shared(run, None, entry, builder)
    assert rundir.open_run(run.root) == p
    assert p.dataset_dir == entry / "dataset" and p.shard_prefix(0).parent == entry / "tokens"
    assert p.markers_dir("merge").parent.parent == entry and p.logs("tokenize").parent.parent == entry
    assert p.assets_json.parent == run.root and p.markers_dir("stage-assets").parent.parent == run.root
    assert p.stage_run_id("tokenize") == "b" and p.stage_run_id("stage-assets") == run.run_id
    assert p.runner("merge") == builder and p.runner("finetune") == run.root


def test_plan_says_building_then_reused(tmp_path: Path, clips: list[InputItem]) -> None:
    spec = _spec(tmp_path)
    got = plan_ops.gather(spec, "local", "plan")
    assert got.cache is not None and got.cache.mode == "build"
    view = plan_ops.view(spec, got)
    assert f"tokenize: building into cache {got.cache.key16}" in view.summary
    entry = cache.entry_of(spec, got.cache.key)
    _complete(entry)
    again = plan_ops.gather(spec, "local", "plan")
    assert again.cache is not None and again.cache.mode == "reuse"
    assert again.cache.line().startswith(f"tokenize: reused {got.cache.key16}")


def test_planned_container_scripts_mount_the_entry_as_submit_does(tmp_path: Path, clips: list[InputItem]) -> None:
    """`plan --out` is what submit sends: a container stage of a cached run mounts the token-cache entry."""
    spec = _spec(tmp_path, {"container": {"image": str(tmp_path / "img.sqsh")}})
    got = plan_ops.gather(spec, "local", "plan")
    assert got.cache is not None
    root = cache.entry_of(spec, got.cache.key).root
    finetune = next(s for s in plan_ops.view(spec, got).scripts if s.stage == "finetune")
    assert f"{root}:{root}" in finetune.text


def test_cache_ls_and_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # a wide terminal: rows unfolded
    live, done = "ef" * 32, "01" * 32
    d = tmp_path / "cache"
    builder = _run(tmp_path, "live")
    _claim(cache_entry(d, live), live, builder)
    finished = cache_entry(d, done)
    _claim(finished, done, _run(tmp_path, "done", _dead_pid()))
    _complete(finished)
    cache.add_user(finished, builder, tokencache.CacheUse(done, "reuse", "x"))
    assert cli.main(["cache", "ls", "--cache-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert live[:16] in out and done[:16] in out and f"live ({builder.run_id})" in out and "1: " in out
    assert cli.main(["cache", "ls", str(d)]) == 0  # the directory where a spec would go: the cache itself
    assert live[:16] in capsys.readouterr().out
    assert cli.main(["cache", "rm", live[:8], "--cache-dir", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run {builder.run_id} is still building this entry" in err
    typo = done[:16] + "ff"  # shares the directory's 16 characters, but not the whole key
    assert cli.main(["cache", "rm", typo, "--cache-dir", str(d)]) == 2
    assert "matches no entry" in capsys.readouterr().err and finished.root.exists()
    assert cli.main(["cache", "rm", done[:40], "--cache-dir", str(d)]) == 2  # a user run is still going
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run(s) {builder.run_id} still have tasks pending or running" in err
    assert finished.root.exists()
    _DRIVERS[0].kill()  # the user run's driver ends: nothing of it reads the entry any more
    _DRIVERS[0].wait()
    assert cli.main(["cache", "rm", done[:40], "--cache-dir", str(d)]) == 0  # freed: the runs on it stay complete
    assert "freed cache entry" in capsys.readouterr().out and cache.damage(finished) is not None
    assert finished.is_complete and not RunPaths(finished.root).dataset_dir.exists()
    assert not cache.usable(finished)  # a later submit builds it again, as it does a damaged entry
    assert cli.main(["cache", "rm", done[:40], "--cache-dir", str(d)]) == 0  # again: the rest goes too
    assert not finished.root.exists() and cache_entry(d, live).root.exists()
    assert cli.main(["cache", "rm", "zz", "--cache-dir", str(d)]) == 2
    assert "matches no entry" in capsys.readouterr().err
    assert cli.main(["cache", "ls"]) == 2
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "entry.json").write_text(json.dumps({"key": "ab" * 32}))
    (d / ("ab" * 8)).symlink_to(target)
    assert cli.main(["cache", "rm", "abab", "--cache-dir", str(d)]) == 2
    assert "symbolic link" in capsys.readouterr().err and (target / "entry.json").exists()


def test_a_complete_entry_whose_dataset_is_damaged_is_built_again(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A token file cut short or gone (a user's cleanup, a full disk) must not be reused: every run of the key
    would fail in finetune, and their merge would read COMPLETED. `cache ls` says so, a submit builds again."""
    key = "9a" * 32
    entry = cache_entry(tmp_path / "cache", key)
    _claim(entry, key, _run(tmp_path, "b", _dead_pid()))
    _complete(entry, tokens=10)
    assert cache.inspect(entry, key).mode == "reuse"
    data = RunPaths(entry.root)
    Path(f"{data.dataset_prefix}.bin").write_bytes(b"\0" * 7)
    assert cache.inspect(entry, key).mode == "build"
    assert cli.main(["cache", "ls", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "damaged" in capsys.readouterr().out
    Path(f"{data.dataset_prefix}.bin").unlink()
    assert cache.damage(entry) == f"{data.dataset_prefix}.bin missing"
    use = _claim(entry, key, _run(tmp_path, "again"))
    assert use.mode == "build" and not entry.is_complete and not data.dataset_dir.exists()


def test_the_slurm_backend_chains_a_reused_entry_on_its_own_stage_assets() -> None:
    from harness.launch.slurm import inherited

    plan = plan_mod.build(specs.build(specs.TINY, {"data": {"videos": "/v"}}), plan_mod.Facts(num_inputs=4))
    parents = {"stage-assets": ["10"], "merge": ["7"]}
    parents["tokenize"] = inherited(plan.stage("tokenize"), parents)
    assert parents["tokenize"] == ["10"] and inherited(plan.stage("merge"), parents) == ["7", "10"]


def test_resume_never_rebuilds_an_entry_another_run_claimed(tmp_path: Path) -> None:
    from rich.console import Console

    from harness.core.errors import HarnessError
    from harness.ops import control

    key = "23" * 32
    entry = cache_entry(tmp_path / "cache", key)
    _claim(entry, key, _run(tmp_path, "builder", _dead_pid()))
    reader = rundir.write_shared(_run(tmp_path, "reader", _dead_pid()), None, entry.root)
    with pytest.raises(HarnessError) as e:
        control.resume(reader, Console(file=io.StringIO()))
    assert str(e.value) == (f"{reader.root}: its tokens (tokenize, merge) are in the token-cache entry {entry.root}, "
                            f"which is incomplete and not this run's build: submit the spec again (a dead build is "
                            f"redone, a live one waited on)")


def test_container_tasks_of_a_cached_run_mount_the_entry(tmp_path: Path) -> None:
    from harness.launch import render

    spec = specs.build(specs.TINY, {"data": {"videos": "/v"}, "container": {"image": "/img/x.sqsh"}})
    paths = RunPaths(tmp_path / "run", tmp_path / "owner", tmp_path / "cache" / "k")
    args = render.container_args(plan_mod.build(spec, plan_mod.Facts(num_inputs=4)), paths, Path("/src"), [])
    mounts = next(a for a in args if a.startswith("--container-mounts=")).split("=", 1)[1].split(",")
    assert f"{paths.cache}:{paths.cache}" in mounts and f"{paths.shared}:{paths.shared}" in mounts


def test_a_video2world_key_follows_the_prompt_encoders_revision() -> None:
    """The prompt embeddings are tokenize's output too: a pinned T5 revision is a different entry."""
    base = specs.build(specs.TINY, specs.V2W, {"data": {"jsonl": "/x.jsonl"}})
    pinned = specs.build(specs.TINY, specs.V2W, {"data": {"jsonl": "/x.jsonl"},
                                                 "assets": {"revisions": {synth.TEXT_ENCODER_REPO: "abc"}}})
    keys = {tokencache.key_of(tokencache.key_inputs(s, "inputs", "encoder", 2)) for s in (base, pinned)}
    assert len(keys) == 2


def test_a_local_prompt_encoder_is_keyed_by_its_files(tmp_path: Path) -> None:
    """Another encoder copied to the same path (here a new hidden size in config.json, new weights) once reused the
    old entry's embeddings; a lock file in a hidden folder changes nothing."""
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text('{"d_model": 32}')
    (t5 / "model.safetensors").write_bytes(b"w" * 10)
    spec = specs.build(specs.TINY, specs.V2W, {"data": {"jsonl": "/x.jsonl"}, "model": {"text_encoder": str(t5)}})
    first = cache.text_encoder_id(spec)
    assert first.startswith("files:")
    (t5 / ".locks").mkdir()
    (t5 / ".locks" / "x.lock").write_text("")
    assert cache.text_encoder_id(spec) == first
    (t5 / "config.json").write_text('{"d_model": 64}')
    assert cache.text_encoder_id(spec) != first
    keys = {tokencache.key_of(tokencache.key_inputs(spec, "inputs", "encoder", 2, i)) for i in (first, "files:x")}
    assert len(keys) == 2
    assert cache.text_encoder_id(specs.build(specs.TINY, specs.V2W, {"data": {"jsonl": "/x.jsonl"}})) == ""


def test_a_waiting_run_waits_on_the_builders_live_merge_after_a_cancel_and_resume(tmp_path: Path) -> None:
    """The builder cancelled mid-tokenize and resumed has two merge jobs: a later submit waited on both, and Slurm
    cancelled its finetune at once for the first (DependencyNeverSatisfied). It waits on the latest round's, and
    the builder's resume writes that id into the entry's claim."""
    from harness.ops.submit import latest_rounds

    subs = (Submission("tokenize", "349", ((0, 2),), True, 1.0, 0),
            Submission("merge", "351", ((0, 1),), False, 1.0, 0),
            Submission("finetune", "352", ((0, 1),), False, 1.0, 0),
            Submission("tokenize", "357", ((1, 2),), True, 2.0, 1),
            Submission("merge", "358", ((0, 1),), False, 2.0, 1))
    assert [s.job_id for s in latest_rounds(subs, ("tokenize", "merge"))] == ["357", "358"]
    entry = CacheEntry(tmp_path / "cache" / "k")
    entry.root.mkdir(parents=True)
    builder = RunPaths(tmp_path / "da", None, entry.root)
    other = RunPaths(tmp_path / "db", None, entry.root)
    cache.record_build(entry, builder, [subs[1]])
    cache.record_rebuild(other, [subs[4]])  # not the builder: the claim stays
    assert (cache.read_claim(entry) or {})["merge_jobs"] == ["351"]
    cache.record_rebuild(builder, [subs[3], subs[4]])
    assert (cache.read_claim(entry) or {})["merge_jobs"] == ["358"]


def test_a_claim_of_another_json_shape_reads_as_unreadable(tmp_path: Path) -> None:
    """`[]` in claim.json (valid JSON, not an object) was a traceback in `cache ls` and `cache rm`."""
    entry = CacheEntry(tmp_path / "cccc000011112222")
    entry.root.mkdir()
    entry.claim_json.write_text("[]")
    assert cache.read_claim(entry) is None


def test_an_edited_entry_json_still_lets_rm_take_what_ls_shows(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    """`cache ls` listed `dddd000011112222` (and a builder `['a']`), then `cache rm` of that key said it matched
    no entry: the key in entry.json was not a string of that directory."""
    d = tmp_path / "cache"
    entry = CacheEntry(d / "dddd000011112222")
    entry.root.mkdir(parents=True)
    entry.entry_json.write_text('{"key": 5, "builder": ["a"]}')
    assert cli.main(["cache", "ls", "--cache-dir", str(d)]) == 0
    assert "['a']" not in capsys.readouterr().out
    assert cli.main(["cache", "rm", "dddd000011112222", "--cache-dir", str(d)]) == 0 and not entry.root.exists()
