"""Sweeps, `key=value` overrides and `<stage>.sbatch_extra`, planned without a cluster: expansion (grid, zip, bad
lengths, unknown keys, member names), one-line problems naming the member or the override, the effective spec,
the campaign plan's shared stages, and `harness plan --out` of a sweep over training keys."""

from __future__ import annotations

import io
import sys
import tomllib
from pathlib import Path

import pytest

import specs
from harness import cli
from harness.core import campaign, overrides, rundir, sbatch_options, sweep
from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.errors import SpecError
from harness.core.paths import RunPaths
from harness.ops import plan as plan_ops

REPO = Path(__file__).resolve().parents[1]


def _raw(*layers: specs.Layer) -> dict:
    return specs.merge(specs.TINY, {"run": {"name": "lr"}, "data": {"videos": "/data/v"},
                                    "finetune": {"save_every": 5}}, *layers)


def _problems(e: pytest.ExceptionInfo[SpecError]) -> list[str]:
    return [str(p) for p in e.value.problems]


def test_grid_is_every_combination_named_by_index() -> None:
    e = sweep.expand(_raw({"sweep": {"finetune.lr": [1e-4, 3e-4], "finetune.max_steps": [10, 30, 50]}}), "s.toml")
    assert e.mode == "grid" and len(e.members) == 6
    assert [m.name for m in e.members] == [f"lr-{i}" for i in range(1, 7)]
    assert [(m.spec.finetune.lr, m.spec.finetune.max_steps) for m in e.members] == \
        [(1e-4, 10), (1e-4, 30), (1e-4, 50), (3e-4, 10), (3e-4, 30), (3e-4, 50)]
    assert e.members[1].label == "sweep member 2 (finetune.lr=0.0001, finetune.max_steps=30)"


def test_zip_pairs_values_and_a_nested_table_reads_the_same() -> None:
    e = sweep.expand(_raw({"sweep": {"mode": "zip", "finetune": {"lr": [1e-4, 3e-4], "max_steps": [10, 30]}}}), "s")
    assert [(m.spec.finetune.lr, m.spec.finetune.max_steps) for m in e.members] == [(1e-4, 10), (3e-4, 30)]
    # min_lr follows lr where the file omits it: each member's own lr
    assert [m.spec.finetune.min_lr for m in e.members] == [1e-4, 3e-4]


def test_zip_with_lists_of_different_lengths_names_them() -> None:
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"sweep": {"mode": "zip", "finetune.lr": [1e-4, 3e-4], "finetune.max_steps": [1, 2, 3]}}),
                     "s.toml")
    assert _problems(e) == ["s.toml: sweep.mode = 'zip': every list must have one length (finetune.lr has 2, "
                            "finetune.max_steps has 3)"]


def test_sweep_problems_unknown_key_bad_mode_not_a_list_and_run_name() -> None:
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"sweep": {"mode": "all", "finetune.lrr": [1], "infer.max_inputs": 4,
                                     "run.name": ["a", "b"]}}), "s.toml")
    got = _problems(e)
    assert "s.toml: sweep.mode = 'all': must be one of 'grid', 'zip'" in got
    assert "s.toml: sweep.finetune.lrr: unknown key; did you mean 'lr'?" in got
    assert any(p.startswith('s.toml: sweep."infer.max_inputs" = 4: must be a non-empty list') for p in got)
    assert "s.toml: sweep.run.name: cannot be swept: members are named <run.name>-<i>" in got


def test_a_value_twice_in_a_sweep_list_is_refused() -> None:
    """The same values twice is the same run twice (same seed, same data): its GPU-hours paid for nothing."""
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"sweep": {"finetune.lr": [1e-3, 3e-4, 0.001]}}), "s.toml")
    assert _problems(e) == ["s.toml: sweep: sweep member 3 (finetune.lr=0.001) has the values of member 1: a sweep "
                            "list holds a value twice"]
    zipped = sweep.expand(_raw({"sweep": {"mode": "zip", "finetune.lr": [1e-3, 1e-3], "run.seed": [1, 2]}}), "s")
    assert len(zipped.members) == 2  # a repeated value with another key varying is another run
    with pytest.raises(SpecError) as e:  # TOML's 1 and 1.0 are one number
        sweep.expand(_raw({"sweep": {"finetune.lr": [1, 1.0]}}), "s.toml")
    assert "has the values of member 1" in _problems(e)[0]


def test_a_key_twice_a_run_name_of_the_wrong_type_or_too_long_for_its_members() -> None:
    """A list given both as `"a.b"` and under `[sweep.a]` would lose one unseen; run.name is checked before the
    members' names extend it (`true` once became `True-1`; 63 characters failed on a `-1` never written)."""
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"sweep": {"finetune.lr": [1e-3, 2e-3], "finetune": {"lr": [5e-3, 6e-3]}}}), "s.toml")
    assert _problems(e) == ["s.toml: sweep.finetune.lr: is given twice in [sweep]; keep one list"]
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"run": {"name": True}, "sweep": {"finetune.lr": [1e-3, 2e-3]}}), "s.toml")
    assert _problems(e) == ["s.toml: run.name = true: must be a string"]
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"run": {"name": "n" * 63}, "sweep": {"finetune.lr": [1e-3, 2e-3]}}), "s.toml")
    (line,) = _problems(e)
    assert line.startswith("s.toml: run.name = 'nnn") and line.endswith(": 63 characters; a sweep names its "
                                                                       "members <run.name>-<i>, so at most 62 here")


def test_a_bad_member_value_names_the_member_and_key() -> None:
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"sweep": {"finetune.lr": [1e-3, 20.0]}}), "s.toml")
    assert _problems(e) == ["s.toml: sweep member 2 (finetune.lr=20.0): finetune.lr = 20.0: out of range in "
                            "[0.0, 10.0]"]


def test_overrides_set_values_checked_like_the_file() -> None:
    e = sweep.expand(_raw(), "s.toml", ("finetune.lr=3e-4", "infer.max_inputs=1000", "infer.inputs=/data/a b"))
    s = e.members[0].spec
    assert (s.finetune.lr, s.infer.max_inputs, s.infer.inputs, s.run.name) == (3e-4, 1000, "/data/a b", "lr")
    assert not e.is_sweep
    with pytest.raises(SpecError) as bad:
        sweep.expand(_raw(), "s.toml", ("finetune.lr=abc", "finetune.lrr=1", "finetun.lr=1", "lr=1"))
    assert _problems(bad) == [
        "<override> finetune.lr=abc: must be a finite number in [0.0, 10.0]",
        "<override> finetune.lrr=1: finetune.lrr: unknown key; did you mean 'lr'?",
        "<override> finetun.lr=1: finetun: unknown key; did you mean 'finetune'?",
        "<override> lr=1: " + overrides.MALFORMED]


def test_an_override_of_a_swept_key_is_refused() -> None:
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw({"sweep": {"finetune.lr": [1e-4, 3e-4]}}), "s.toml", ("finetune.lr=1e-3",))
    assert _problems(e) == ["<override> finetune.lr=1e-3: this key is swept in [sweep]; change its list there"]


def test_the_effective_spec_reads_back_to_the_member() -> None:
    e = sweep.expand(_raw({"container": {"env": {"A_B": 'x "y" \\ z'}}, "sweep": {"finetune.lr": [1e-4, 3e-4]}}),
                     "s.toml", ("infer.max_inputs=3",))
    for m in e.members:
        text = e.effective_toml(m)
        assert text.startswith("# effective spec of s.toml\n# " + m.label + "\n# overrides: infer.max_inputs=3\n")
        assert spec_mod.from_dict(tomllib.loads(text)) == m.spec
    assert overrides.dumps({"a": {"x": float("inf"), "y": [True, 1.5]}}) == "[a]\nx = inf\ny = [true, 1.5]\n"


def test_a_key_overridden_twice_and_control_characters_in_the_effective_spec() -> None:
    """`finetune.lr=1e-3 finetune.lr=2e-3` kept the last unseen; a DEL in a value, or an escape character typed in
    an override, made spec.toml invalid TOML (it must read back to the member)."""
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw(), "s.toml", ("finetune.lr=1e-3", "finetune.lr=2e-3"))
    assert _problems(e) == ["<override> finetune.lr=2e-3: sets finetune.lr again (after finetune.lr=1e-3): give "
                            "each key once"]
    e2 = sweep.expand(_raw(), "s.toml", ('container.env={FOO="a\\u007fb"}', "run.results_dir=\x1bx"))
    (m,) = e2.members
    text = e2.effective_toml(m)
    assert spec_mod.from_dict(tomllib.loads(text)) == m.spec and m.spec.container.env["FOO"] == "a\x7fb"


def test_cli_exits_2_with_one_line_per_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = specs.write(tmp_path / "run.toml", _raw())
    assert cli.main(["validate", str(path), "finetune.lr=abc"]) == 2
    assert capsys.readouterr().err.strip() == "<override> finetune.lr=abc: must be a finite number in [0.0, 10.0]"
    assert cli.main(["plan", str(path), "finetune.lr=3e-4", "oops", "--num-inputs", "10"]) == 2
    assert capsys.readouterr().err.strip() == "<override> oops: " + overrides.MALFORMED
    assert cli.main(["validate", str(path), "finetune.lr=3e-4"]) == 0
    assert cli.main(["plan", str(path), "finetune.lr=3e-4", "--num-inputs", "10", "--executor", "local"]) == 0
    assert f"effective spec: {path} with finetune.lr=3e-4" in capsys.readouterr().out


@pytest.mark.parametrize("option, message", [
    ("--mail-type=END", ""), ("--exclusive", ""), ("--exclusive=user", ""), ("--reservation=r1", ""),
    ("--mail-typ=END", "'--mail-typ=END': not an sbatch option; did you mean '--mail-type'?"),
    ("mail-type=END", "'mail-type=END': must be a long option, '--name' or '--name=value'"),
    ("--time=10", "'--time=10': clashes with what the harness sets (set it with <stage>.time_min)"),
    ("--dependency=afterok:1", "'--dependency=afterok:1': clashes with what the harness sets (the harness sets the "
                               "array and chains the stages)"),
    ("--mem-per-cpu=4G", "'--mem-per-cpu=4G': clashes with what the harness sets (set it with <stage>.mem_gb)"),
    ("--ntasks-per-gpu=1", "'--ntasks-per-gpu=1': clashes with what the harness sets (the harness sets the tasks per "
                           "node from the stage's ranks)"),  # sbatch: mutually exclusive with --ntasks-per-node
    ("--tres-per-task=cpu:2", "'--tres-per-task=cpu:2': clashes with what the harness sets (set GPUs and CPUs with "
                              "<stage>.gpus_per_node and <stage>.cpus_per_task (the harness renders those))"),
    ("--mail-user", "'--mail-user': needs a value, '--mail-user=...'"),
    ("--contiguous=yes", "'--contiguous=yes': takes no value, '--contiguous'"),
    ("--hint=nomultithread", ""), ("--mem-bind=local", ""), ("--network=sn_all", ""),  # man sbatch, not --help
    ("--clusters=other", "'--clusters=other': clashes with what the harness sets (status, cancel and resume ask "
                         "this cluster's controller (squeue/sacct/scancel without -M))")])
def test_sbatch_extra_options(option: str, message: str) -> None:
    assert sbatch_options.check(option) == message


def test_sbatch_extra_is_checked_per_stage_and_rendered() -> None:
    with pytest.raises(SpecError) as e:
        specs.build(_raw({"infer": {"sbatch_extra": ["--gres=gpu:1", "--job-name=x"]}}))
    assert _problems(e) == ["<spec>: infer.sbatch_extra: '--job-name=x': clashes with what the harness sets (the "
                            "harness names each job and marks it with the run id)"]
    spec = specs.build(_raw({"finetune": {"sbatch_extra": ["--mail-type=END,FAIL", "--exclusive",
                                                           "--mail-user=a b@x"]}}))
    plan = plan_mod.build(spec, plan_mod.Facts(num_inputs=10))
    view = plan_ops.view(spec, plan_ops.Gathered(plan_ops.Choice("slurm", "test"), plan_mod.Facts(num_inputs=10),
                                                 _sources(), None, "", ()))
    text = next(s.text for s in view.scripts if s.stage == "finetune")
    assert "#SBATCH --exclusive\n" in text and "#SBATCH --mail-type=END,FAIL\n" in text
    assert "#SBATCH --mail-user='a b@x'\n" in text
    assert "--exclusive" not in next(s.text for s in view.scripts if s.stage == "infer")
    assert plan.stage("finetune").resources.sbatch_extra == ("--mail-type=END,FAIL", "--exclusive", "--mail-user=a b@x")


def _sources():  # type: ignore[no-untyped-def]  # FactSources of a test plan
    from harness.core.explain import FactSources

    return FactSources("test", "test")


def test_members_with_equal_data_keys_share_the_data_stages() -> None:
    facts = plan_mod.Facts(num_inputs=12)
    e = sweep.expand(_raw({"sweep": {"finetune.lr": [1e-4, 3e-4], "data.split": [[8, 1, 1], [6, 2, 2]]}}), "s")
    cp = campaign.build(e, [facts] * len(e.members))
    assert [m.owner for m in cp.members] == [0, 1, 0, 1]  # lr varies fastest: members 1, 3 share; 2, 4 share
    assert [s.name for s in cp.members[2].stages] == ["finetune", "infer", "evaluate", "report"]
    assert [s.name for s in cp.members[0].stages] == [s.name for s in plan_mod.STAGES if s.name != "import-image"]
    jobs = cp.jobs()
    assert [(s, w) for s, _, w in jobs if s == "tokenize"] == [("tokenize", "members 1, 3"),
                                                               ("tokenize", "members 2, 4")]
    assert len([j for j in jobs if j[0] == "finetune"]) == 4
    fps = sweep.expand(_raw({"sweep": {"video.fps": [8, 25]}}), "s")  # only infer's mp4 files read it
    assert [m.owner for m in campaign.build(fps, [facts] * 2).members] == [0, 0]


def test_the_campaign_plan_submits_no_data_stages_a_token_cache_spares() -> None:
    """Two data groups: with their token-cache entry complete, neither submits tokenize or merge; with two
    groups of one key (a sweep over a key tokenize never reads), the second waits on the first's build."""
    from harness.core.tokencache import CacheUse
    from harness.ops import plan as plan_ops

    facts = plan_mod.Facts(num_inputs=12)
    e = sweep.expand(_raw({"sweep": {"finetune.lr": [1e-4, 3e-4], "data.split": [[8, 1, 1], [6, 2, 2]]}}), "s")
    cp = campaign.build(e, [facts] * len(e.members))

    def gathered(*uses: CacheUse) -> list[plan_ops.Gathered]:
        return [plan_ops.Gathered(plan_ops.Choice("local", "t"), facts, _sources(), None, "", (), u) for u in uses]

    reused = CacheUse("k" * 64, "reuse", "r1")
    jobs = cp.jobs(plan_ops._cached(cp, gathered(reused, reused, reused, reused)))
    data = [(s, c, w) for s, c, w in jobs if s in ("tokenize", "merge")]
    assert data and all(c == 0 and w.endswith(f": reused {'k' * 16} (built by r1)") for _, c, w in data)
    build = CacheUse("b" * 64, "build", "")
    jobs = cp.jobs(plan_ops._cached(cp, gathered(build, build, build, build)))
    assert [(c, w) for s, c, w in jobs if s == "tokenize"] == [
        (1, "members 1, 3"), (0, f"members 2, 4: waits on member 1's build of cache entry {'b' * 16}")]


def test_shared_paths_route_data_stages_to_the_owner(tmp_path: Path) -> None:
    owner, member = RunPaths(tmp_path / "a"), RunPaths(tmp_path / "b")
    member.root.mkdir()
    shared = rundir.write_shared(member, owner)
    assert rundir.open_run(member.root) == shared and rundir.open_run(owner.root) == owner
    assert shared.dataset_prefix.parent == owner.dataset_dir and shared.shard_prefix(1) == owner.shard_prefix(1)
    assert shared.assets_json == owner.assets_json
    assert shared.markers_dir("merge") == owner.markers_dir("merge")
    assert shared.logs("tokenize") == owner.logs("tokenize") and shared.stage_run_id("tokenize") == "a"
    assert shared.markers_dir("finetune") == member.markers_dir("finetune")
    assert shared.checkpoints_dir == member.checkpoints_dir and shared.stage_run_id("infer") == "b"


def test_plan_out_of_the_quickstart_sweep_writes_one_data_script_set(tmp_path: Path) -> None:
    """The acceptance check: quickstart + `"finetune.lr" = [3e-3, 1e-3]` lists 2 members, and --out writes one
    tokenize, one merge and two finetune scripts."""
    import subprocess

    spec = tmp_path / "sweep.toml"
    spec.write_text((REPO / "configs" / "quickstart.toml").read_text() + '\n[sweep]\n"finetune.lr" = [3e-3, 1e-3]\n')
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(spec), "--out", str(out), "--num-inputs",
                        "12"], capture_output=True, text=True, cwd=REPO, env={**_env(), "COLUMNS": "200"},
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "campaign: 2 members (grid over finetune.lr)" in p.stdout
    assert "quickstart-1" in p.stdout and "quickstart-2" in p.stdout
    scripts = sorted(f.relative_to(out).as_posix() for f in out.rglob("*.sbatch"))
    assert [s for s in scripts if s.split("-", 2)[-1].startswith(("tokenize", "merge", "finetune"))] == [
        "quickstart-1/01-tokenize.sbatch", "quickstart-1/02-merge.sbatch", "quickstart-1/03-finetune.sbatch",
        "quickstart-2/03-finetune.sbatch"]
    second = (out / "quickstart-2" / "03-finetune.sbatch").read_text()
    assert "#SBATCH --dependency='afterok:${MERGE_JOB_ID}'" in second and "quickstart-2-<run-id>" in second


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_member_reading_another_runs_incomplete_data_resumes_only_through_its_campaign(tmp_path: Path) -> None:
    from rich.console import Console

    from harness.core.errors import HarnessError
    from harness.core.paths import mark_done, new_run_dir
    from harness.ops import control
    from harness.ops import submit as launching

    spec = specs.build(_raw())
    facts = plan_mod.Facts(num_inputs=10)
    plan = plan_mod.build(spec, facts)
    choice = launching.Choice("local", "test")
    owner = new_run_dir(tmp_path, "a")
    member = rundir.write_shared(new_run_dir(tmp_path, "b"), owner)
    for p in (owner, member):
        launching.write_run(p, "", plan, facts, choice)
        launching.record_jobs(p, choice, [])
    for stage in ("stage-assets", "tokenize"):
        mark_done(owner, stage, 0)
    with pytest.raises(HarnessError) as e:
        control.resume(rundir.open_run(member.root), Console(file=io.StringIO()))
    assert str(e.value) == (f"{member.root}: its data (merge) comes from run {owner.run_id}, which is incomplete: "
                            f"resume that run's campaign (harness resume CAMPAIGN), which resumes the data first")
    assert control.incomplete(plan, member)["merge"] == [0]  # the owner's markers: the member's own are elsewhere
    owner.dataset_dir.mkdir(parents=True)
    owner.dataset_summary.write_text("{}")  # merge's result (its marker alone is a lost result: rerun)
    mark_done(owner, "merge", 0)
    assert "merge" not in control.incomplete(plan, member) and "finetune" in control.incomplete(plan, member)


def test_resume_of_a_campaign_goes_on_past_a_member_that_is_gone(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Member 1's folder moved away: resume still resumes member 2, then names member 1's problem (exit 2)."""
    from rich.console import Console

    from harness.core.atomic import atomic_write_json
    from harness.core.errors import HarnessError
    from harness.core.paths import new_campaign_dir, new_run_dir
    from harness.ops import campaign, control
    from harness.ops import submit as launching

    spec = specs.build(_raw())
    facts = plan_mod.Facts(num_inputs=10)
    plan = plan_mod.build(spec, facts)
    choice = launching.Choice("local", "test")
    runs = [new_run_dir(tmp_path, n) for n in ("a", "b")]
    for p in runs:
        launching.write_run(p, "", plan, facts, choice)
        launching.record_jobs(p, choice, [])
    cpaths = new_campaign_dir(tmp_path, "camp")
    atomic_write_json(cpaths.campaign_json, {"members": [{"values": v, "root": str(p.root)}
                                                          for v, p in zip(("seed=1", "seed=2"), runs)]})
    runs[0].root.rename(tmp_path / "moved")
    resumed: list[Path] = []
    monkeypatch.setattr(control, "resume", lambda paths, console, shared_parents=None: resumed.append(paths.root))
    with pytest.raises(HarnessError) as e:
        campaign.resume(cpaths, Console(file=io.StringIO()))
    assert resumed == [runs[1].root] and str(runs[0].root) in str(e.value)


def test_a_temperature_too_small_to_sample_is_refused() -> None:
    """1e-300 passed `min = 0` and sampled NaN probabilities (every token id 0); 0 is greedy."""
    with pytest.raises(SpecError) as e:
        sweep.expand(_raw(), "s.toml", ("infer.temperature=1e-300",))
    assert _problems(e) == ["s.toml: infer.temperature = 1e-300: 0 (greedy) or at least 0.001; a smaller one "
                            "overflows the logits it divides and samples nothing"]
    assert sweep.expand(_raw(), "s.toml", ("infer.temperature=0",)).members[0].spec.infer.temperature == 0
