"""Small operator-facing defects: quickstart --assets, the README's command list and spec
reference, and the CLI's own description."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import build_parser
from harness.core import docs, overrides
from harness.core import spec as spec_mod
from harness.ops import quickstart

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_assets_folder_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = REPO / "configs" / "quickstart.toml"
    assert quickstart.spec_for(shipped, Path(".quickstart")) == shipped
    assets = tmp_path / "my assets \"q\""
    derived = quickstart.spec_for(shipped, assets)
    assert derived.parent == assets
    s = spec_mod.absolutize(spec_mod.load(derived), tmp_path)
    for value in (s.tokenizer.encoder, s.tokenizer.decoder, s.data.videos, s.assets.hf_home):
        assert value.startswith(str(assets) + "/"), value
    assert ".quickstart" not in derived.read_text().split("[run]", 1)[1]
    assert s.run.workdir == str(tmp_path / "runs")


def test_update_readme_replaces_only_its_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\nintro\n\n## Spec reference\n\nold table\n\n## After\n\nkept text\n")
    docs.update_readme(str(readme))
    text = readme.read_text()
    assert text.startswith("# t\n\nintro\n\n## Spec reference\n") and "old table" not in text
    assert text.endswith("\n## After\n\nkept text\n") and docs.spec_reference_markdown() in text
    docs.update_readme(str(readme))
    assert readme.read_text() == text  # idempotent
    readme.write_text("# only a title\n")
    docs.update_readme(str(readme))
    assert readme.read_text() == "# only a title\n\n" + docs.spec_reference_markdown()


def test_spec_reference_speaks_toml() -> None:
    types = {key: tp for key, tp, _, _ in spec_mod.reference()}
    assert types["data.split"] == "array of integers"
    assert types["data.extensions"] == "array of strings"
    assert types["container.env"] == "table of strings"
    assert types["finetune.lr"] == "float" and types["run.seed"] == "integer" and types["run.name"] == "string"
    assert types["finetune.engine"] == "'auto' | 'nemo' | 'mcore'"
    assert not [tp for tp in types.values() if re.search(r"\b(tuple|Mapping|str|int|float\])\b", tp)]


def test_readme_command_list_names_every_command_and_flag() -> None:
    text = (REPO / "README.md").read_text()
    block = text.split("## Commands", 1)[1].split("```", 2)[1]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"harness {name}" in block, name
    for flag in ("status RUN [--watch] [--all]", "--stderr", "--executor", "--no-doctor", "runs"):
        assert flag in block, flag


def test_every_bench_module_is_a_bench_command() -> None:
    """`harness bench NAME` reaches each module that defines `run` (fp8kernel was once a module, documented, that
    the command refused), and the README's bench line names them all."""
    import ast

    from harness.bench import BENCHES

    mods = {f.stem for f in (REPO / "harness" / "bench").glob("*.py")
            if any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in ast.parse(f.read_text()).body)}
    assert set(BENCHES) == mods
    line = next(x for x in (REPO / "README.md").read_text().splitlines() if x.startswith("harness bench "))
    assert line.split()[2].split("|") == list(BENCHES)
    args = build_parser().parse_args(["bench", "fp8kernel", "--bare"])
    assert (args.name, args.args) == ("fp8kernel", ["--bare"])


def test_cli_description_is_for_users() -> None:
    p = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    head = p.stdout.split("positional arguments", 1)[0]
    assert "Cosmos" in head and "Slurm" in head and "nothing else is caught" not in head


@pytest.mark.parametrize("bench,argv", [("plan", ["--repeat", "0"]), ("imports", ["--repeats", "-1"]),
                                        ("eval", ["--n", "0"]), ("eval", ["--workers", "-1"]),
                                        ("eval", ["--device", "tpu"]), ("plan", ["--files", "-5"]),
                                        ("generate", ["--batch", "-1"]), ("train", ["--steps", "x"])])
def test_bench_counts_out_of_range_are_refused_by_the_parser(bench: str, argv: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Not a StatisticsError after the setup, nor a negative rate or a made-up device written to results."""
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"harness.bench.{bench}").run(argv)
    assert e.value.code == 2 and f"argument {argv[0]}" in capsys.readouterr().err


def test_plan_says_when_the_inputs_are_empty_or_partly_unusable(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An empty videos folder or a jsonl with broken lines plans without error (tokenize skips bad lines and
    merge lists them), but the plan says so instead of planning silently."""
    import specs
    from harness import cli

    (tmp_path / "empty").mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"x")
    jsonl = tmp_path / "v2w.jsonl"
    jsonl.write_text('{"prompt": "a", "visual_input": "clip.mp4"}\n{"prompt": "b"\n')
    env = {"run": {"workdir": str(tmp_path / "runs")}}
    for data, note in (({"videos": str(tmp_path / "empty")}, "data.videos: no inputs found there"),
                       ({"jsonl": str(jsonl)}, "data.jsonl: 1 of 2 input(s) unusable (first: line 2: not valid JSON")):
        spec = specs.write(tmp_path / "run.toml", specs.TINY, env, {"data": data})
        assert cli.main(["plan", str(spec), "--executor", "local"]) == 0
        assert note in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        cli.main(["plan", str(spec), "--num-inputs", "-5"])


def test_validate_names_an_override_without_its_section(capsys: pytest.CaptureFixture[str]) -> None:
    """`finetune=1` after the spec is a mistyped override, as `plan` says, not a spec file that cannot be read."""
    from harness import cli

    assert cli.main(["validate", str(REPO / "configs" / "quickstart.toml"), "finetune=1"]) == 2
    assert capsys.readouterr().err.strip() == "<override> finetune=1: " + overrides.MALFORMED
    # after an option, a key of a table (`container.env.MY=1`) is the same one line, not argparse's usage
    assert cli.main(["plan", str(REPO / "configs" / "quickstart.toml"), "--num-inputs", "4", "container.env.MY=1"]) == 2
    assert capsys.readouterr().err.strip() == "<override> container.env.MY=1: " + overrides.MALFORMED


def test_the_local_executor_refuses_a_stage_of_several_nodes(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """One machine cannot start a second node's ranks: finetune would fail 'needs 2 ranks, but 1 were started'."""
    import specs
    from harness import cli

    (tmp_path / "clips").mkdir()
    spec = specs.write(tmp_path / "run.toml", specs.TINY, {"data": {"videos": str(tmp_path / "clips")},
                                                           "finetune": {"nodes": 2, "global_batch_size": 2}})
    assert cli.main(["plan", str(spec), "--executor", "local"]) == 2
    assert "finetune.nodes = 2: the local executor runs on this machine" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-5", "nan", "0"])
def test_a_wait_timeout_that_is_no_number_of_seconds_is_refused_by_the_parser(value: str) -> None:
    """`--timeout -5` submitted and then reported "still running after -5 s"; `nan` waited forever."""
    from harness import cli

    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["submit", "run.toml", "--wait", "--timeout", value])
    assert e.value.code == 2


def test_bench_plan_refuses_a_baseline_that_is_no_source_tree(tmp_path: Path) -> None:
    """A missing --baseline folder once timed the installed harness and recorded it as the baseline."""
    from harness.bench import plan as bench_plan
    from harness.core.errors import HarnessError

    with pytest.raises(HarnessError) as e:
        bench_plan.run(["--files", "2", "--baseline", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert "--baseline: is no harness source tree" in str(e.value)
    assert not (tmp_path / "o").exists()


def test_overrides_may_follow_options() -> None:
    """`submit run.toml --executor local finetune.max_steps=10` was argparse's "unrecognized arguments"."""
    from harness import cli

    a = cli.parse(["submit", "run.toml", "finetune.lr=1e-3", "--executor", "local", "finetune.max_steps=10"])
    assert a.overrides == ["finetune.lr=1e-3", "finetune.max_steps=10"] and a.executor == "local"
    with pytest.raises(SystemExit):
        cli.parse(["submit", "run.toml", "--executor", "local", "stray"])
    with pytest.raises(SystemExit):
        cli.parse(["status", "run-1", "finetune.lr=1"])
