"""`harness doctor` and submit's preflight, against the project's local Slurm cluster (three
virtual nodes of 2 CPUs, no GPUs, partition `debug` with no MaxTime) and without a controller."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

import specs
from fixtures_data import session_standins
from harness.launch import slurmcli
from harness.ops import doctor

REPO = Path(__file__).resolve().parents[1]


def write_spec(tmp: Path, extra: specs.Layer = None, preset: str = "tiny") -> Path:
    (tmp / "videos").mkdir(exist_ok=True)
    for i in range(3):
        (tmp / "videos" / f"c{i}.mp4").write_bytes(b"not really a video")
    return specs.write(tmp / "run.toml", {
        "run": {"name": "doc", "workdir": f"{tmp}/runs"}, "model": {"preset": preset},
        "video": {"num_frames": 17, "height": 48, "width": 64}, "data": {"videos": f"{tmp}/videos"},
        "assets": {"hf_home": f"{tmp}/hf"}, "tokenize": {"shards": 2}}, extra)


def harness(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**base, "PYTHONPATH": str(REPO), "COLUMNS": "250", **(env or {})}, timeout=180)


def lines(out: str, status: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(status)]


@pytest.fixture()
def short_partition(slurm_cluster: str) -> Iterator[str]:
    """A real partition with MaxTime 30 min on one node, created in the running controller for this test only."""
    name = f"hdoc{os.getpid()}"
    subprocess.run(["scontrol", "create", f"PartitionName={name}", "Nodes=n1", "MaxTime=30", "State=UP"],
                   check=True, capture_output=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["scontrol", "delete", f"PartitionName={name}"], capture_output=True, timeout=30)


def test_good_spec_passes_every_check_on_the_local_cluster(tmp_path: Path, slurm_cluster: str) -> None:
    p = harness("doctor", str(write_spec(tmp_path)), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert not lines(p.stdout, "fail")
    out = p.stdout
    assert "pass  data.videos: inputs listed: 3 input(s), 0 unusable" in out
    assert "pass  finetune.time_min: time_min 60 within partition debug's MaxTime: MaxTime is UNLIMITED" in out
    assert "pass  finetune.nodes: partition debug has 1 node(s) with 0 GPU(s), 2 CPU(s), any GB: 3 node(s) fit" in out
    assert "pass  tokenize.array_throttle: array of 2 task(s) within MaxArraySize 1001" in out
    assert "skip  container.image: container image: no container" in out
    assert "skip  tokenizer.encoder: encoder 'nvidia/Cosmos-0.1-Tokenizer-DV4x8x8' present: not in the HF cache" in out
    assert "pass  run.workdir: writable" in out and "pass  assets.hf_home: writable" in out
    assert "pass  run.workdir, assets.hf_home: free space for ~" in out
    assert "skip  model.checkpoint: checkpoint tensors fit model.preset: no checkpoint (model.checkpoint = '': " \
           "random init)" in out
    assert "pass  data.split: test split to generate from: 3 usable input(s) split 1/1/1" in out
    for table, stage in (("assets", "stage-assets"), ("tokenize", "tokenize"), ("finetune", "finetune")):
        assert f"pass  {table}.*: sbatch --test-only of the {stage} script: the controller would accept it" in out
    assert out.strip().splitlines()[-1].endswith("30 passed, 0 failed, 4 skipped")


def test_an_option_only_the_controller_can_judge_fails_in_doctor(tmp_path: Path, slurm_cluster: str) -> None:
    """`sbatch --test-only` of each stage's script: the value sbatch rejects fails on that stage's line, the
    stage whose own checks already failed is skipped (one problem, one line), and nothing is queued."""
    spec = write_spec(tmp_path, '[finetune]\nsbatch_extra = ["--mail-type=BOGUS"]\n[infer]\ncpus_per_task = 3\n')
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert lines(p.stdout, "fail") == [
        "fail  infer.cpus_per_task: partition debug has 1 node(s) with 0 GPU(s), 3 CPU(s), any GB: only 0 of 3 "
        "node(s) fit; largest node n1: 0 GPU(s), 2 CPU(s), 21 GB",
        "fail  finetune.*: sbatch --test-only of the finetune script: Invalid --mail-type specification"], p.stdout
    assert "skip  infer.*: sbatch --test-only of the infer script: a check of [infer] above failed" in p.stdout
    assert "pass  merge.*: sbatch --test-only of the merge script: the controller would accept it" in p.stdout
    queue = subprocess.run(["squeue", "-h", "-n", "doc.finetune"], capture_output=True, text=True, timeout=30)
    assert queue.stdout.strip() == ""


def test_missing_partition_is_named_by_its_key(tmp_path: Path, slurm_cluster: str) -> None:
    spec = write_spec(tmp_path, '[finetune]\npartition = "gpu-h100"\naccount = "nosuchacct"\nqos = "normal"\n')
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert p.returncode == 2
    failed = lines(p.stdout, "fail")
    assert failed == [
        "fail  finetune.partition: partition 'gpu-h100' exists: no such partition; the cluster has: debug",
        "fail  finetune.account: account 'nosuchacct' exists: no such account; the cluster has: root",
    ], p.stdout
    assert "pass  finetune.qos: QOS 'normal' exists: found" in p.stdout
    # submit runs the same checks first: exit 2, one line per failure naming file and key, nothing queued
    sub = harness("submit", str(spec), cwd=tmp_path)
    assert sub.returncode == 2 and not (tmp_path / "runs").exists()
    assert sub.stderr.splitlines() == [
        f"{spec}: finetune.partition: preflight: partition 'gpu-h100' exists: no such partition; "
        "the cluster has: debug",
        f"{spec}: finetune.account: preflight: account 'nosuchacct' exists: no such account; the cluster has: root"]


def test_time_limit_over_the_partition_maxtime(tmp_path: Path, short_partition: str) -> None:
    spec = write_spec(tmp_path, f'[finetune]\npartition = "{short_partition}"\ntime_min = 240\n')
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert p.returncode == 2
    assert lines(p.stdout, "fail") == [
        f"fail  finetune.time_min: time_min 240 within partition {short_partition}'s MaxTime: 240 min > MaxTime 30 "
        f"min: Slurm would leave the job pending forever (PartitionTimeLimit); lower it or pick another partition"]
    assert f"pass  finetune.nodes: partition {short_partition} has 1 node(s)" in p.stdout


def test_gpu_request_the_nodes_cannot_meet(tmp_path: Path, slurm_cluster: str) -> None:
    spec = write_spec(tmp_path, "[finetune]\nnodes = 4\nglobal_batch_size = 4\n")
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert p.returncode == 2 and lines(p.stdout, "fail") == [
        "fail  finetune.nodes: partition debug has 4 node(s) with 0 GPU(s), 2 CPU(s), any GB: only 3 of 3 node(s) "
        "fit; largest node n1: 0 GPU(s), 2 CPU(s), 21 GB"], p.stdout
    spec = write_spec(tmp_path, "[finetune]\ngpus_per_node = 8\nglobal_batch_size = 8\n[infer]\ncpus_per_task = 3\n")
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert p.returncode == 2
    failed = lines(p.stdout, "fail")
    assert failed == [
        "fail  finetune.gpus_per_node: partition debug has 1 node(s) with 8 GPU(s), 16 CPU(s), any GB: only 0 of 3 "
        "node(s) fit; largest node n1: 0 GPU(s), 2 CPU(s), 21 GB",
        "fail  infer.cpus_per_task: partition debug has 1 node(s) with 0 GPU(s), 3 CPU(s), any GB: only 0 of 3 "
        "node(s) fit; largest node n1: 0 GPU(s), 2 CPU(s), 21 GB",
    ], p.stdout


def test_container_image_and_pyxis(tmp_path: Path, slurm_cluster: str) -> None:
    spec = write_spec(tmp_path, f'[container]\nimage = "{tmp_path}/nemo.sqsh"\n')
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert lines(p.stdout, "fail") == [
        f"fail  container.image: squashfs image readable: {tmp_path}/nemo.sqsh: no such file",
        "fail  container.image: Pyxis loaded (srun --container-image): srun --help lists no --container-image: "
        "install Pyxis, or set container.image = ''"], p.stdout
    (tmp_path / "nemo.sqsh").write_bytes(b"hsqs")
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert f"pass  container.image: squashfs image readable: {tmp_path}/nemo.sqsh" in p.stdout
    spec.write_text(spec.read_text().replace(f"{tmp_path}/nemo.sqsh", "nvcr.io#nvidia/nemo:25.02.rc3"))
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert "pass  container.image: enroot URI well formed: nvcr.io#nvidia/nemo:25.02.rc3" in p.stdout
    # a registry image is imported into container.cache_dir: writable, with room for container.image_gb
    assert "pass  container.cache_dir: imported image cache writable: " in p.stdout
    spec.write_text(spec.read_text().replace("[container]\n", "[container]\nimage_gb = 100000\n"))
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert "fail  container.cache_dir, container.image_gb: free space for the image (~100.0 TB): " in p.stdout


def test_offline_assets_and_free_space(tmp_path: Path, slurm_cluster: str) -> None:
    # cosmos-12b, a checkpoint every step for 100,000 steps: far more than any test disk holds
    spec = write_spec(tmp_path, "[finetune]\nmax_steps = 100000\nsave_every = 1\n", preset="cosmos-12b")
    spec.write_text(spec.read_text().replace("height = 48\nwidth = 64", "height = 320\nwidth = 512"))
    p = harness("doctor", str(spec), cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2
    failed = lines(p.stdout, "fail")
    assert failed[0].startswith("fail  tokenizer.encoder: encoder 'nvidia/Cosmos-0.1-Tokenizer-DV4x8x8' present: "
                                f"not in the HF cache {tmp_path}/hf and HF_HUB_OFFLINE=1"), p.stdout
    space = [ln for ln in failed if "free space" in ln]
    assert len(space) == 1 and space[0].startswith("fail  run.workdir, assets.hf_home: free space for ~")
    assert "checkpoints" in space[0] and " free on " in space[0]


def test_without_a_controller_slurm_checks_are_skipped_with_the_reason(tmp_path: Path, no_slurm: None) -> None:
    p = harness("doctor", str(write_spec(tmp_path)), cwd=tmp_path)
    assert p.returncode == 0, p.stdout
    assert ("skip  *.partition: Slurm partitions, accounts, QOS, nodes, time limits: sbatch not found on PATH: the "
            "run would use submitit's local executor") in p.stdout
    assert not lines(p.stdout, "fail")


def test_inputs_not_readable(tmp_path: Path, no_slurm: None) -> None:
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace(f'videos = "{tmp_path}/videos"', f'videos = "{tmp_path}/nope"'))
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert p.returncode == 2
    want = f"fail  data.videos: inputs cannot be listed: '{tmp_path}/nope' is not a directory"
    assert lines(p.stdout, "fail") == [want]


def test_an_empty_test_split_is_a_failure_when_infer_reads_it(tmp_path: Path, no_slurm: None) -> None:
    """Two inputs split [8, 1, 3] leave none for the test split that infer generates from (infer.inputs = '')."""
    spec = write_spec(tmp_path)
    (tmp_path / "videos" / "c2.mp4").unlink()
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert p.returncode == 2
    assert lines(p.stdout, "fail") == ["fail  data.split: test split to generate from: 2 usable input(s) split 1/1/0; "
                                       "the test split is empty: add inputs or set infer.inputs"]


def test_paths_read_after_training_are_checked_before_the_queue(tmp_path: Path, no_slurm: None) -> None:
    """infer.inputs and evaluate.reference are read only after training; doctor names a wrong one up front."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "others").mkdir()
    (tmp_path / "others" / "unrelated.mp4").write_bytes(b"x")  # a reference folder naming none of the inputs
    bad_jsonl = tmp_path / "v2w.jsonl"
    bad_jsonl.write_text('{"prompt": "a", "visual_input": "videos/c0.mp4"}\n{"prompt": "b"}\n{"prompt": 3\n')
    for extra, want in (({"infer": {"inputs": f"{tmp_path}/nope"}}, "infer.inputs: "),
                        ({"infer": {"inputs": str(bad_jsonl)}}, "(and 1 more: line 3: not valid JSON"),  # every one
                        ({"evaluate": {"reference": f"{tmp_path}/empty"}}, "evaluate.reference: reference videos: "
                                                                           f"{tmp_path}/empty: no file"),
                        ({"infer": {"inputs": f"{tmp_path}/videos"}, "evaluate": {"reference": f"{tmp_path}/others"}},
                         f"{tmp_path}/others: no reference for any infer input")):
        p = harness("doctor", str(write_spec(tmp_path, extra)), cwd=tmp_path)
        assert p.returncode == 2 and len(lines(p.stdout, "fail")) == 1 and want in lines(p.stdout, "fail")[0], \
            p.stdout
    good = {"infer": {"inputs": f"{tmp_path}/videos"}, "evaluate": {"reference": f"{tmp_path}/videos"}}
    p = harness("doctor", str(write_spec(tmp_path, good)), cwd=tmp_path)
    assert p.returncode == 0 and "pass  evaluate.reference" in p.stdout and "pass  infer.inputs" in p.stdout


@pytest.mark.parametrize("text,minutes", [("UNLIMITED", None), ("30", 30), ("02:00:00", 120), ("1-00:00:00", 1440),
                                          ("2-12", 3600), ("00:30:01", 31), ("45:00", 45)])
def test_slurm_time_format(text: str, minutes: int | None) -> None:
    assert slurmcli.parse_time_min(text) == minutes


def test_gres_gpu_count() -> None:
    assert [slurmcli.gres_gpus(g) for g in ("(null)", "gpu:8", "gpu:h100:4(S:0-1),gpu:a100:2", "shard:8")] == \
        [0, 8, 6, 0]


def test_enroot_uri_shapes() -> None:
    good = ["nvcr.io#nvidia/nemo:25.02.rc3", "nvidia/nemo:25.02", "ubuntu", "user@registry.local:5000#team/img:v1"]
    bad = ["nvcr.io#nvidia/nemo:25.02 rc3", "nvcr.io##x", "Ubuntu:", "nvcr.io#nvidia/nemo:"]
    assert all(doctor._ENROOT_URI.match(u) for u in good)
    assert not any(doctor._ENROOT_URI.match(u) for u in bad)


def test_checkpoint_shapes_checked_where_the_checkpoint_is_here(tmp_path: Path, no_slurm: None,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """A tiny stand-in (harness.cosmos.pretrained.write_tiny_pretrained): the matching one passes, one with a
    64,064-row output layer fails naming that tensor (as a local dir, and as a hub id whose snapshot is in the HF
    cache), a hub id not in the cache is skipped with why."""
    from harness.lib import synth

    standins = session_standins(tmp_path_factory)
    synth.write_hf_snapshot(tmp_path / "hf", "org/bad-ckpt", {"nemo": standins["bad"]})
    key = "model.checkpoint: checkpoint tensors fit model.preset: "
    bad = "1 problem(s) against 'tiny', first: module.output_layer.weight is [64064, 64], model needs [64000, 64]"
    for source, status, needle in (
            (standins["weights"], "pass", "all names and shapes match"),
            (standins["bad"], "fail", bad),
            ("org/bad-ckpt", "fail", bad),
            ("nvidia/Not-Cached-Here", "skip", "not in the HF cache yet: stage-assets checks it after downloading")):
        spec = write_spec(tmp_path, {"model": {"checkpoint": str(source)}})
        p = harness("doctor", str(spec), cwd=tmp_path)
        line = [ln for ln in p.stdout.splitlines() if key in ln]
        assert len(line) == 1 and line[0].startswith(f"{status:<4}  {key}") and needle in line[0], p.stdout
        assert p.returncode == (2 if status == "fail" else 0), p.stdout


def test_one_symlink_loop_is_a_bad_input_not_a_blocked_run(tmp_path: Path, no_slurm: None) -> None:
    spec = write_spec(tmp_path)
    (tmp_path / "videos" / "loop.mp4").symlink_to(tmp_path / "videos" / "loop.mp4")
    p = harness("doctor", str(spec), cwd=tmp_path)
    assert ("pass  data.videos: inputs listed: 4 input(s), 1 unusable (first: cannot read: Too many levels of "
            "symbolic links)") in p.stdout, p.stdout + p.stderr
    plan = harness("plan", str(spec), cwd=tmp_path)
    assert plan.returncode == 0 and "planned for 0 inputs" not in plan.stdout, plan.stdout + plan.stderr


def test_a_script_sbatch_refuses_mid_submit_leaves_nothing_queued_and_status_says_why(tmp_path: Path,
                                                                                      slurm_cluster: str) -> None:
    """Without doctor, the finetune script's rejected option surfaces at its sbatch: the stages already sent are
    cancelled, and `harness status` names that failure rather than showing a run that was never submitted."""
    spec = write_spec(tmp_path, '[finetune]\nsbatch_extra = ["--mail-type=BOGUS"]\n')
    sub = harness("submit", str(spec), "--no-doctor", cwd=tmp_path)
    assert sub.returncode == 2, sub.stdout + sub.stderr
    assert "submission failed, 3 job(s) cancelled" in sub.stderr and "Invalid --mail-type" in sub.stderr
    (root,) = (tmp_path / "runs").iterdir()
    queue = subprocess.run(["squeue", "-h", "-o", "%j", "--noheader"], capture_output=True, text=True, timeout=30)
    assert not [j for j in queue.stdout.split() if j.startswith("doc.")], queue.stdout
    st = harness("status", str(root), cwd=tmp_path)
    text = " ".join(st.stdout.split())
    assert "the last submission queued nothing:" in text and "Invalid --mail-type specification" in text, st.stdout


def test_submit_refuses_a_listing_with_no_usable_input(tmp_path: Path, no_slurm: None,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An empty data folder, or a jsonl of only bad lines, once queued stage-assets and tokenize for merge to fail."""
    from harness import cli

    spec = write_spec(tmp_path)
    for f in (tmp_path / "videos").iterdir():
        f.unlink()
    assert cli.main(["submit", str(spec), "--executor", "local"]) == 2
    assert not (tmp_path / "runs").exists()
    assert capsys.readouterr().err.strip() == f"{spec}: data.videos: no inputs found there: a run would have nothing " \
                                              "to tokenize"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert cli.main(["submit", str(spec), f'data.jsonl="{bad}"', 'data.videos=""', "run.recipe=\"video2world\"",
                     'model.preset="tiny-v2w"', "--executor", "local"]) == 2
    assert not (tmp_path / "runs").exists()
    assert "data.jsonl: all 1 listed input(s) are unusable (first: line 1: missing key: visual_input" in \
        capsys.readouterr().err


def test_a_prompt_encoder_of_another_width_fails_doctor_and_a_small_one_is_not_t5_11b(tmp_path: Path) -> None:
    """A T5 of d_model 64 for tiny-v2w's 32-wide cross-attention passed doctor and failed at finetune, after
    tokenize; and the GPU check always priced T5-11B (18 GiB in fp32), failing a 2-layer encoder on 16 GiB."""
    from harness.lib import synth
    from harness.ops import assetcheck

    def spec_with(t5: Path) -> Any:
        return specs.build(specs.TINY, specs.V2W, {"data": {"jsonl": "/x.jsonl"}, "finetune": {"gpu_memory_gib": 16},
                                                    "model": {"text_encoder": str(t5)}})

    synth.write_text_encoder(tmp_path / "t5_64", d_model=64)
    rows = {r[2]: r for r in assetcheck.asset_checks(spec_with(tmp_path / "t5_64"))}
    assert rows["prompt encoder width fits model.preset"][0] == "fail"
    assert "d_model 64; 'tiny-v2w''s cross-attention takes 32" in rows["prompt encoder width fits model.preset"][3]
    assert rows["prompt encoder fits a GPU"][0] == "pass" and "T5 encoder (d_model 64)" in \
        rows["prompt encoder fits a GPU"][3]
    assert assetcheck.prompt_encoder_line(spec_with(tmp_path / "t5_64")).startswith("T5 encoder (d_model 64), ")
    assert assetcheck.prompt_encoder_line(spec_with(tmp_path / "absent")).startswith("T5-11B encoder, ")
