"""Pure planning and sbatch rendering: array sizes, chunks, dependencies, Pyxis flags, golden scripts."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from harness import plan, spec
from harness.launch import render, slurm
from harness.rundir import RunPaths

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"


def seed_spec() -> spec.RunSpec:
    return spec.load(REPO / "configs" / "cosmos-4b-dv4x8x8.toml")


def test_dag_shape_and_dependencies() -> None:
    p = plan.build(seed_spec(), plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=4))
    assert [s.name for s in p.stages] == list(plan.STAGES)
    deps = {s.name: [(d.stage, d.kind) for d in s.depends] for s in p.stages}
    assert deps["evaluate"] == [("infer", "aftercorr")]
    assert deps["report"] == [("evaluate", "afterany")]
    assert deps["finetune"] == [("merge", "afterok")]
    assert p.checkpoint_steps == (25, 50, 75, 100)
    assert p.stage("infer").tasks == p.stage("evaluate").tasks == 4
    assert p.stage("tokenize").tasks == 100 and p.spec.tokenize.shards == 100
    assert p.sbatch_calls == 7


@pytest.mark.parametrize("n", [10_000, 100_000, 1_000_000])
def test_scale_splits_arrays_at_max_array_size(n: int) -> None:
    p = plan.build(seed_spec(), plan.Facts(num_inputs=n, max_array_size=1001, nodes_available=64))
    tok = p.stage("tokenize")
    assert tok.tasks == max(64, n // 100)
    assert all(b - a <= 1001 for a, b in tok.chunks)
    assert tok.chunks[0][0] == 0 and tok.chunks[-1][1] == tok.tasks
    assert sum(b - a for a, b in tok.chunks) == tok.tasks
    # Slurm calls grow with stages (and 1,001-task chunks), not with tasks.
    assert p.sbatch_calls == 6 + len(tok.chunks)


def test_checkpoint_steps_include_max_steps() -> None:
    f = dataclasses.replace(spec.FinetuneSection(), max_steps=30, save_every=8)
    assert plan.checkpoint_steps(f) == (8, 16, 24, 30)
    f = dataclasses.replace(spec.FinetuneSection(), max_steps=5, save_every=5)
    assert plan.checkpoint_steps(f) == (5,)


def test_shards_never_exceed_inputs_and_cover_nodes() -> None:
    t = spec.TokenizeSection()
    assert plan.resolve_shards(t, 3, 8) == 3
    assert plan.resolve_shards(t, 40, 3) == 3
    assert plan.resolve_shards(dataclasses.replace(t, shards=4), 40, 3) == 4
    assert plan.resolve_shards(t, 0, 3) == 1


def test_data_parallel_and_grad_accumulation() -> None:
    s = spec.loads('[data]\nvideos="x"\n[finetune]\nnodes=2\ngpus_per_node=8\ntensor_parallel=4\n'
                   'global_batch_size=32\nmicro_batch_size=2\n')
    p = plan.build(s, plan.Facts(num_inputs=10))
    assert p.data_parallel == 4 and p.grad_accumulation == 4
    ft = p.stage("finetune").resources
    assert (ft.nodes, ft.ntasks_per_node, ft.gpus_per_node) == (2, 8, 8)


def _render_all(p: plan.Plan) -> dict[str, str]:
    paths = RunPaths(Path("/shared/runs/cosmos-4b-dv4x8x8-RUNID"))
    ids = {s.name: [f"{1000 + i}"] for i, s in enumerate(p.stages)}
    out = {}
    for s in p.stages:
        params = render.executor_params(p, s, paths, render.dependency(s, ids), slurm.srun_args(p, s, paths))
        text = render.sbatch_text(params, paths.logs(s.name) / "%j", slurm.python_for(p, s),
                                  s.tasks if s.array else None)
        text = text.replace(sys.executable, "{PYTHON}")
        for d in slurm.pure_python_deps():
            text = text.replace(str(d), "{DEP:" + d.name + "}")
        text = text.replace(str(slurm.harness_source()), "{HARNESS_SRC}")
        out[s.name] = text.replace(str(Path.home()), "{HOME}")
    return out


def test_rendered_scripts_carry_resources_and_flags() -> None:
    p = plan.build(seed_spec(), plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=3))
    scripts = _render_all(p)
    tok = scripts["tokenize"]
    # tokenize.array_throttle = 0 (the seed leaves it unset): no limit, so %100 = the whole array, not the node count
    assert "#SBATCH --array=0-99%100" in tok and "#SBATCH --dependency=afterok:1000" in tok
    assert "#SBATCH --kill-on-invalid-dep=yes" in tok and "#SBATCH --gpus-per-node=1" in tok
    assert "#SBATCH --dependency=aftercorr:1004" in scripts["evaluate"]
    assert "#SBATCH --dependency=afterany:1005" in scripts["report"]
    ft = scripts["finetune"]
    assert "#SBATCH --ntasks-per-node=8" in ft and "#SBATCH --gpus-per-node=8" in ft
    assert "#SBATCH --requeue" in ft and "#SBATCH --signal=USR2@120" in ft
    assert "'--container-image=nvcr.io#nvidia/nemo:25.02.rc3'" in ft
    assert "{HARNESS_SRC}:/opt/harness:ro" in ft and "--container-workdir=/opt/harness" in ft
    assert "export PYTHONPATH=/opt/harness:/opt/harness-deps" in ft
    assert " python -u -m submitit.core._submit" in ft
    assert "--container-image" not in tok and "{PYTHON} -u -m submitit.core._submit" in tok
    for name, text in scripts.items():
        assert "HF_TOKEN=" not in text.replace("HF_TOKEN=,", "")  # only ever blanked in --export, never a value
        blanked = "HF_TOKEN=,HUGGING_FACE_HUB_TOKEN=,WANDB_API_KEY=" if name != "stage-assets" else "WANDB_API_KEY="
        assert f"#SBATCH --export=ALL,{blanked}\n" in text
        if name != "stage-assets":
            assert "export HF_HUB_OFFLINE=1" in text and "unset HF_TOKEN" in text


def test_golden_sbatch(request: pytest.FixtureRequest) -> None:
    """Golden scripts are regenerated only with --update-golden; a missing golden file fails."""
    p = plan.build(seed_spec(), plan.Facts(num_inputs=10_000, max_array_size=1001, nodes_available=3))
    update = request.config.getoption("--update-golden")
    for name, text in _render_all(p).items():
        golden = GOLDEN / f"cosmos-4b-{name}.sbatch"
        if update:
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(text)
        assert golden.exists(), f"missing golden file {golden}; run pytest --update-golden"
        assert golden.read_text() == text, name


def test_plan_cli_writes_scripts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness import cli

    code = cli.main(["plan", str(REPO / "configs" / "cosmos-4b-dv4x8x8.toml"), "--num-inputs", "10000",
                     "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "5x40x64 = 12,800 tokens" in out
    assert "TP 8 x DP 1" in out and "--container-image" in out
    assert len(list(tmp_path.glob("*.sbatch"))) == 7
