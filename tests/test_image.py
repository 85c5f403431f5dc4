"""A registry container image imported once: the cache file's name, the plan (import-image before every container
stage, the srun lines naming the .sqsh, reuse when complete), the import task with a stand-in enroot (once, under
a lock; a partial file never used), doctor's cache checks and the spec keys."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import specs
import standins
from harness.core import image, plan
from harness.core.errors import HarnessError
from harness.core.paths import RunPaths
from harness.core.spec import RunSpec
from harness.launch import slurm
from harness.ops import image_cache
from harness.ops import plan as plan_ops
from harness.stages import image as image_stage

URI = "nvcr.io#nvidia/nemo:26.02"


def _spec(tmp: Path, **container: object) -> RunSpec:
    return specs.build(specs.tiny_run(tmp, name="img", videos=tmp / "videos"),
                       {"container": {"image": URI, "cache_dir": str(tmp / "images"), **container}})


@pytest.mark.parametrize("uri, name", [
    (URI, "nvcr.io+nvidia+nemo+26.02.sqsh"),
    ("docker://nvcr.io#nvidia/nemo:26.02", "nvcr.io+nvidia+nemo+26.02.sqsh"),  # the scheme names the same image
    ("alice@nvcr.io#nvidia/nemo:26.02", "nvcr.io+nvidia+nemo+26.02.sqsh"),  # so does a user name
    ("registry.example.com:5000#team/nemo:26.02", "registry.example.com+5000+team+nemo+26.02.sqsh"),
    ("ubuntu:24.04", "ubuntu+24.04.sqsh"),
])
def test_sqsh_name_keeps_registry_repository_and_tag(uri: str, name: str) -> None:
    assert image.sqsh_name(uri) == name
    assert image.sqsh_name(uri) != image.sqsh_name(uri.replace("26.02", "26.04").replace("24.04", "22.04"))


def test_only_a_registry_image_with_container_stages_is_imported(tmp_path: Path) -> None:
    s = _spec(tmp_path)
    cache = image.wanted(s)
    assert cache is not None and cache.sqsh == tmp_path / "images" / "nvcr.io+nvidia+nemo+26.02.sqsh"
    assert cache.source == "docker://" + URI and cache.partial.name.endswith(".sqsh.partial")
    assert image.wanted(_spec(tmp_path, image=str(tmp_path / "nemo.sqsh"))) is None
    assert image.wanted(_spec(tmp_path, image="")) is None
    assert image.wanted(_spec(tmp_path, import_image=False)) is None
    assert image.wanted(_spec(tmp_path, stages=[])) is None
    default = specs.build(specs.tiny_run(tmp_path, name="img", videos=tmp_path), {"container": {"image": URI}})
    assert image.cache_dir(default) == tmp_path / "runs" / "images"  # beside the run directories


def test_plan_imports_once_before_every_container_stage_and_sruns_name_the_sqsh(tmp_path: Path) -> None:
    s = _spec(tmp_path)
    p = plan.build(s, plan.Facts(num_inputs=8, image="missing"))
    sqsh = tmp_path / "images" / "nvcr.io+nvidia+nemo+26.02.sqsh"
    assert p.stages[0].name == "import-image" and not p.stages[0].container and p.stages[0].depends == ()
    for st in p.stages:
        waits = ("import-image", "afterok") in [(d.stage, d.kind) for d in st.depends]
        assert waits == st.container, st.name
        text = slurm.script(p, st, RunPaths(tmp_path / "run"), {}, 0)
        srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
        assert (f"--container-image={sqsh}" in srun) == st.container, st.name
        assert URI not in text
    assert [st.name for st in p.stages if st.container] == ["finetune", "infer"]
    assert plan.to_json(p)["image"] == {"uri": URI, "sqsh": str(sqsh), "reused": False}


def test_a_complete_image_is_reused_and_no_import_planned(tmp_path: Path) -> None:
    p = plan.build(_spec(tmp_path), plan.Facts(num_inputs=8, image="complete"))
    assert "import-image" not in [st.name for st in p.stages]
    assert all(d.stage != "import-image" for st in p.stages for d in st.depends)
    ft = slurm.script(p, p.stage("finetune"), RunPaths(tmp_path / "run"), {}, 0)
    assert f"--container-image={tmp_path}/images/nvcr.io+nvidia+nemo+26.02.sqsh" in ft
    off = plan.build(_spec(tmp_path), plan.Facts(num_inputs=8))  # the local executor; a run from before
    assert off.image is None and "'--container-image=nvcr.io#nvidia/nemo:26.02'" in slurm.script(
        off, off.stage("finetune"), RunPaths(tmp_path / "run"), {}, 0)


def test_plan_shows_the_import_or_its_reuse(tmp_path: Path) -> None:
    s = _spec(tmp_path)
    cache = image.wanted(s)
    assert cache is not None
    assert image_cache.state(s, local=True) == "off"
    assert image_cache.state(s, local=False) == "missing"
    g = plan_ops.gather(s, "slurm", "plan", num_inputs=8, why_not="no controller")
    v = plan_ops.view(s, g)
    assert f"import-image: enroot import docker://{URI} -> {cache.sqsh}, once, before finetune, infer" in v.summary
    assert [sc.stage for sc in v.scripts][0] == "import-image"
    cache.sqsh.parent.mkdir(parents=True)
    cache.sqsh.write_bytes(b"x" * 10)
    assert image_cache.state(s, local=False) == "missing"  # no marker: never taken as complete
    cache.done.write_text(image.done_record(cache, 10))
    assert image_cache.state(s, local=False) == "complete"
    v = plan_ops.view(s, plan_ops.gather(s, "slurm", "plan", num_inputs=8, why_not="no controller"))
    assert f"import-image: reused {cache.sqsh} (complete; not submitted)" in v.summary
    assert "import-image" not in [sc.stage for sc in v.scripts]
    cache.sqsh.write_bytes(b"x" * 9)  # not the size the marker recorded
    assert image_cache.state(s, local=False) == "missing"


def _standin(tmp: Path, monkeypatch: pytest.MonkeyPatch, sleep_s: float = 0.0, rc: int = 0) -> Path:
    log = tmp / "enroot.log"
    standins.enroot(tmp / "bin", log, sleep_s=sleep_s, rc=rc)
    monkeypatch.setenv("PATH", f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return log


def test_import_task_imports_once_then_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _standin(tmp_path, monkeypatch)
    s = _spec(tmp_path)
    cache = image.wanted(s)
    assert cache is not None
    image_stage.run(s, 0, RunPaths(tmp_path / "run"))
    assert log.read_text().splitlines() == [f"import -o {cache.partial} docker://{URI}"]
    assert image.complete(cache) and not cache.partial.exists()
    image_stage.run(s, 0, RunPaths(tmp_path / "run2"))  # another run: the complete file is reused
    assert len(log.read_text().splitlines()) == 1


def test_a_partial_image_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed import's partial file and a final name without its marker are both imported again."""
    log = _standin(tmp_path, monkeypatch)
    s = _spec(tmp_path)
    cache = image.wanted(s)
    assert cache is not None
    cache.sqsh.parent.mkdir(parents=True)
    cache.partial.write_bytes(b"half")
    cache.sqsh.write_bytes(b"renamed, marker never written")
    image_stage.run(s, 0, RunPaths(tmp_path / "run"))
    assert len(log.read_text().splitlines()) == 1 and image.complete(cache)
    assert cache.sqsh.read_bytes() == b"hsqs stand-in squashfs"


def test_a_failed_import_leaves_no_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _standin(tmp_path, monkeypatch, rc=3)
    s = _spec(tmp_path)
    cache = image.wanted(s)
    assert cache is not None
    with pytest.raises(HarnessError, match=r"enroot import docker://nvcr.io#nvidia/nemo:26.02 exited 3"):
        image_stage.run(s, 0, RunPaths(tmp_path / "run"))
    assert not cache.sqsh.exists() and not cache.done.exists() and not image.complete(cache)


def test_two_imports_at_once_import_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs' import tasks at the same moment: the second waits on the lock, then finds the marker."""
    log = _standin(tmp_path, monkeypatch, sleep_s=1.5)
    s = _spec(tmp_path)
    specs.write(tmp_path / "s.toml", specs.tiny_run(tmp_path, name="img", videos=tmp_path / "videos"),
                {"container": {"image": URI, "cache_dir": str(tmp_path / "images")}})
    code = ("import sys; from pathlib import Path; from harness.core import spec; from harness.core.paths import "
            "RunPaths; from harness.stages import image; image.run(spec.load(Path(sys.argv[1])), 0, "
            "RunPaths(Path(sys.argv[2])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.toml"), str(tmp_path / f"r{i}")])
             for i in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    cache = image.wanted(s)
    assert cache is not None and image.complete(cache)
    assert len(log.read_text().splitlines()) == 1


def test_doctor_checks_the_cache_directory(tmp_path: Path) -> None:
    s = _spec(tmp_path, image_gb=1)  # room for 1 GB passes on any test machine; the default 40 may not
    p = plan.build(s, plan.Facts(num_inputs=8, image="missing"))
    rows = image_cache.cache_checks(p)
    assert [(r[0], r[1]) for r in rows] == [("pass", "container.cache_dir"),
                                            ("pass", "container.cache_dir, container.image_gb")]
    huge = plan.build(_spec(tmp_path, image_gb=100_000), plan.Facts(num_inputs=8, image="missing"))
    assert image_cache.cache_checks(huge)[1][0] == "fail" and "~100.0 TB" in image_cache.cache_checks(huge)[1][2]
    (tmp_path / "file").write_text("")
    blocked = plan.build(_spec(tmp_path, cache_dir=str(tmp_path / "file" / "images")),
                         plan.Facts(num_inputs=8, image="missing"))
    assert image_cache.cache_checks(blocked) == [("fail", "container.cache_dir", "imported image cache writable",
                                                  f"{tmp_path / 'file'} is not a directory")]
    assert image_cache.cache_checks(plan.build(s, plan.Facts(num_inputs=8)))[:1] == []
    reused = image_cache.cache_checks(plan.build(s, plan.Facts(num_inputs=8, image="complete")))
    assert reused[0][0] == "pass" and "reused" in reused[0][3]


def test_import_image_is_no_container_stage(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"container.stages.*'import-image' is not a stage that runs in the "
                                           r"container; choose from stage-assets, tokenize"):
        specs.build(specs.tiny_run(tmp_path, name="img"), {"container": {"image": URI,
                                                                          "stages": ["import-image", "finetune"]}})


def test_resume_refuses_a_reused_image_that_is_gone(tmp_path: Path) -> None:
    """A run planned to reuse a complete image plans no import, so if the file is removed before a resume, the
    resubmitted container stages could only fail on their nodes: resume names the file first."""
    from harness.ops import control

    p = plan.build(_spec(tmp_path), plan.Facts(num_inputs=8, image="complete"))
    assert p.image is not None and p.image.reused
    p.image.sqsh.parent.mkdir(parents=True)
    p.image.sqsh.write_bytes(b"squashfs")
    p.image.done.write_text(image.done_record(p.image, 8))
    control._check_reused_image(p, {"finetune": [0]})  # present and complete: resume goes on
    p.image.sqsh.unlink()
    control._check_reused_image(p, {"tokenize": [0]})  # no container stage to resubmit
    with pytest.raises(HarnessError, match="nvcr.io\\+nvidia\\+nemo\\+26.02.sqsh: the imported container image"):
        control._check_reused_image(p, {"finetune": [0]})
