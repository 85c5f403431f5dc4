"""Run-spec parsing and validation: every bad spec is one line naming the key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import cli
from harness.core import spec
from harness.core.errors import SpecError

REPO = Path(__file__).resolve().parents[1]
BASE = '[data]\nvideos = "clips"\n'


def run_validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    code = cli.main(["validate", str(path)])
    out = capsys.readouterr()
    return code, [ln for ln in out.err.splitlines() if ln.strip()]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_shipped_configs_validate(name: str) -> None:
    s = spec.load(REPO / "configs" / name)
    assert s.token_math.sample_length <= s.preset.seq_length


def test_seed_4b_token_math() -> None:
    s = spec.load(REPO / "configs" / "cosmos-4b-dv4x8x8.toml")
    tm = s.token_math
    assert (tm.grid.t, tm.grid.h, tm.grid.w) == (5, 40, 64)
    assert tm.video_tokens == 12_800
    assert "5x40x64 = 12,800 tokens" in tm.describe()


def test_v2w_sample_length() -> None:
    s = spec.load(REPO / "configs" / "cosmos-5b-v2w-dv4x8x8.toml")
    assert s.token_math.sample_length == 1 + 12_800 + 64


def test_roundtrip_through_json() -> None:
    s = spec.load(REPO / "configs" / "cosmos-4b-dv4x8x8.toml")
    assert spec.from_dict(spec.to_dict(s)) == s


def test_92160_tokens_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_validate(tmp_path, BASE + "[video]\nnum_frames = 33\nwidth = 1024\nheight = 640\n", capsys)
    assert code == 2 and len(lines) == 1
    assert "92,160 tokens" in lines[0] and "9x80x128" in lines[0]


def test_example_message_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run_validate(tmp_path, BASE + "[finetune]\ntensor_parallel = 3\ngpus_per_node = 8\n", capsys)
    assert code == 2
    assert f"{tmp_path / 'run.toml'}: finetune.tensor_parallel = 3: must divide finetune.gpus_per_node (8)" in lines


BAD_SPECS: list[tuple[str, str, str]] = [
    # (case id, toml, key that the one-line error must name)
    ("toml-syntax", "[run\nname='x'", "not valid TOML"),
    ("unknown-section", BASE + "[finetunee]\nlr=1.0\n", "finetunee"),
    ("unknown-key-suggest", BASE + "[video]\nwidht = 512\n", "did you mean 'width'"),
    ("unknown-top-key", BASE + "foo = 1\n", "foo"),
    ("section-not-table", BASE + "video = 3\n", "video"),
    ("width-string", BASE + "[video]\nwidth = '512'\n", "video.width"),
    ("width-negative", BASE + "[video]\nwidth = -8\n", "video.width"),
    ("width-zero", BASE + "[video]\nwidth = 0\n", "video.width"),
    ("width-huge", BASE + "[video]\nwidth = 99999999999\n", "video.width"),
    ("width-float", BASE + "[video]\nwidth = 512.0\n", "video.width"),
    ("width-bool", BASE + "[video]\nwidth = true\n", "video.width"),
    ("width-not-divisible", BASE + "[video]\nwidth = 510\n", "video.width"),
    ("height-not-divisible", BASE + "[video]\nheight = 321\n", "video.height"),
    ("frames-not-1+kt", BASE + "[video]\nnum_frames = 16\n", "video.num_frames"),
    ("too-many-tokens", BASE + "[video]\nnum_frames = 33\nwidth = 1024\nheight = 640\n", "92,160"),
    ("compression-two", BASE + "[tokenizer]\ncompression = [8, 8]\n", "tokenizer.compression"),
    ("compression-strings", BASE + "[tokenizer]\ncompression = ['4', '8', '8']\n", "tokenizer.compression"),
    ("compression-zero", BASE + "[tokenizer]\ncompression = [0, 8, 8]\n", "tokenizer.compression"),
    ("recipe-bad", BASE + "[run]\nrecipe = 'image2world'\n", "run.recipe"),
    ("run-name-shell", BASE + "[run]\nname = 'x; rm -rf /'\n", "run.name"),
    ("run-name-empty", BASE + "[run]\nname = ''\n", "run.name"),
    ("run-name-newline", BASE + '[run]\nname = "a\\nb"\n', "run.name"),
    ("partition-subshell", BASE + "[finetune]\npartition = '$(touch x)'\n", "finetune.partition"),
    ("account-backtick", BASE + "[tokenize]\naccount = '`id`'\n", "tokenize.account"),
    ("preset-unknown", BASE + "[model]\npreset = 'cosmos-4B'\n", "model.preset"),
    ("preset-v2w-for-base", BASE + "[model]\npreset = 'cosmos-5b-v2w'\n", "model.preset"),
    ("v2w-without-jsonl", "[run]\nrecipe = 'video2world'\n[model]\npreset = 'cosmos-5b-v2w'\n", "data.jsonl"),
    ("no-data", "[run]\nname = 'x'\n", "data.videos"),
    ("both-data", '[data]\nvideos = "a"\njsonl = "b.jsonl"\n', "data.jsonl"),
    ("split-two", BASE.replace("\n", "\nsplit = [1, 1]\n", 1), "data.split"),
    ("split-zero-train", BASE.replace("\n", "\nsplit = [0, 1, 1]\n", 1), "data.split"),
    ("split-negative", BASE.replace("\n", "\nsplit = [10, -1, 1]\n", 1), "data.split"),
    ("tp-not-divide-gpus", BASE + "[finetune]\ntensor_parallel = 3\ngpus_per_node = 8\n", "finetune.tensor_parallel"),
    ("tp-not-divide-heads", BASE + "[finetune]\ntensor_parallel = 3\n", "finetune.tensor_parallel"),
    ("gbs-not-multiple", BASE + "[finetune]\nglobal_batch_size = 3\nmicro_batch_size = 2\n",
        "finetune.global_batch_size"),
    ("save-every-gt-max", BASE + "[finetune]\nmax_steps = 10\nsave_every = 20\n", "finetune.save_every"),
    ("lr-string", BASE + "[finetune]\nlr = 'fast'\n", "finetune.lr"),
    ("lr-nan", BASE + "[finetune]\nlr = nan\n", "finetune.lr"),
    ("lr-inf", BASE + "[finetune]\nlr = inf\n", "finetune.lr"),
    ("lr-negative", BASE + "[finetune]\nlr = -1e-4\n", "finetune.lr"),
    ("min-lr-gt-lr", BASE + "[finetune]\nlr = 1e-4\nmin_lr = 1e-3\n", "finetune.min_lr"),
    ("val-without-val-split", BASE.replace("\n", "\nsplit = [8, 0, 1]\n", 1), "data.split"),
    ("val-every-negative", BASE + "[finetune]\nval_every = -1\n", "finetune.val_every"),
    ("val-videos-over-256", BASE + "[finetune]\nval_videos = 257\n", "finetune.val_videos"),
    ("engine-bad", BASE + "[finetune]\nengine = 'deepspeed'\n", "finetune.engine"),
    ("infer-two-nodes", BASE + "[infer]\nnodes = 2\n", "infer.nodes"),  # its ranks are one node's GPUs
    ("tokenize-two-nodes", BASE + "[tokenize]\nnodes = 4\n", "tokenize.nodes"),  # copies of every task
    ("preset-of-another-checkpoint", BASE + "[model]\npreset = 'cosmos-12b'\n"
     "checkpoint = 'nvidia/Cosmos-1.0-Autoregressive-4B'\n", "model.preset"),
    ("precision-bad", BASE + "[finetune]\nprecision = 'fp8'\n", "finetune.precision"),
    ("sp-bad", BASE + "[finetune]\nsequence_parallel = true\n", "finetune.sequence_parallel"),
    ("sp-on-at-tp1", BASE + "[finetune]\nsequence_parallel = 'on'\n", "finetune.sequence_parallel"),
    ("sp-on-nemo", BASE + "[finetune]\nsequence_parallel = 'on'\ntensor_parallel = 2\nengine = 'nemo'\n",
     "finetune.sequence_parallel"),
    ("top-p-gt-1", BASE + "[infer]\ntop_p = 1.5\n", "infer.top_p"),
    ("context-too-long", BASE + "[infer]\ncontext_latent_frames = 5\n", "infer.context_latent_frames"),
    ("backend-bad", BASE + "[evaluate]\nbackend = 'gpu'\n", "evaluate.backend"),
    ("time-zero", BASE + "[merge]\ntime_min = 0\n", "merge.time_min"),
    ("nodes-zero", BASE + "[finetune]\nnodes = 0\n", "finetune.nodes"),
    ("throttle-negative", BASE + "[tokenize]\narray_throttle = -1\n", "tokenize.array_throttle"),
    ("image-docker-style", BASE + "[container]\nimage = 'nvcr.io/nvidia/nemo:25.02.rc3'\n", "container.image"),
    ("mount-no-colon", BASE + "[container]\nmounts = ['/data']\n", "container.mounts"),
    ("mount-comma", BASE + "[container]\nmounts = ['/a:/b,/c:/d']\n", "container.mounts"),
    ("container-stage-unknown", BASE + "[container]\nstages = ['train']\n", "container.stages"),
    ("env-bad-name", BASE + "[container]\nenv = { 'A-B' = '1' }\n", "container.env.A-B"),
    ("env-non-string", BASE + "[container]\nenv = { A = 1 }\n", "container.env"),
    ("infer-tp-splits-no-head", BASE + "[model]\npreset = 'tiny'\n[infer]\ntensor_parallel = 3\n"
     "gpus_per_node = 3\n", "infer.tensor_parallel"),
    ("finetune-tp-over-query-groups", BASE + "[finetune]\ntensor_parallel = 16\ngpus_per_node = 16\n",
     "query groups (8) not divisible by TP 16"),
    ("encoder-empty", BASE + "[tokenizer]\nencoder = ''\n", "tokenizer.encoder"),
    ("encoder-not-a-repo-id", BASE + "[tokenizer]\nencoder = 'bad repo id!!'\n", "tokenizer.encoder"),
    ("extension-without-dot", BASE.replace("\n", "\nextensions = ['mp4']\n", 1), "data.extensions"),
    ("warmup-over-max-steps", BASE + "[finetune]\nmax_steps = 30\nwarmup_steps = 100\n", "finetune.warmup_steps"),
    ("sweep-empty", BASE + "[sweep]\n", "sweep"),
    ("test-split-zero", BASE.replace("\n", "\nsplit = [8, 1, 0]\n", 1), "data.split"),
    ("tokenbench-frames-over-video", BASE + "[video]\nnum_frames = 9\nwidth = 64\nheight = 48\n[evaluate]\n"
     "protocol = 'tokenbench'\n", "evaluate.tokenbench_frames"),
    ("tokenize-cuda-no-gpu", BASE + "[tokenize]\ndevice = 'cuda'\n", "tokenize.device"),
    ("time-under-the-warning-signal", BASE + "[tokenize]\ntime_min = 1\n", "tokenize.time_min"),
    ("time-within-slurms-early-signal", BASE + "[merge]\ntime_min = 2\n",
     "merge.time_min = 2: not longer than the 90 s warning signal (which Slurm may send up to 60 s early)"),
    ("v2w-infer-inputs-not-jsonl", '[run]\nrecipe = "video2world"\n[model]\npreset = "tiny-v2w"\n[data]\n'
     'jsonl = "a.jsonl"\n[infer]\ninputs = "/imgs"\n', "infer.inputs"),
    ("encoder-repo-of-another-compression", BASE + "[tokenizer]\nencoder = 'nvidia/Cosmos-0.1-Tokenizer-DV8x16x16'\n",
     "a 8x16x16 tokenizer, but tokenizer.compression = [4, 8, 8]"),
    ("env-secret-hf", BASE + "[container]\nenv = { HF_TOKEN = 'hf_x' }\n", "container.env.HF_TOKEN"),
    ("env-secret-wandb", BASE + "[container]\nenv = { WANDB_API_KEY = 'k' }\n", "container.env.WANDB_API_KEY"),
    ("env-secret-aws", BASE + "[container]\nenv = { aws_secret_access_key = 'k' }\n",
     "container.env.aws_secret_access_key"),
    ("revisions-non-string", BASE + "[assets]\nrevisions = { 'a/b' = 3 }\n", "assets.revisions"),
    ("mounts-not-list", BASE + "[container]\nmounts = '/a:/b'\n", "container.mounts"),
    ("extensions-int", BASE.replace("\n", "\nextensions = [1]\n", 1), "data.extensions"),
    ("seed-negative", BASE + "[run]\nseed = -1\n", "run.seed"),
    ("nul-in-path", BASE.replace('"clips"', '"cl\\u0000ips"'), "data.videos"),
    ("container-python-two-words", BASE + "[container]\nimage = '/i.sqsh'\npython = 'python; touch /tmp/x #'\n",
     "container.python"),
    ("container-python-empty", BASE + "[container]\nimage = '/i.sqsh'\npython = ''\n", "container.python"),
    ("mount-relative-destination", BASE + "[container]\nmounts = ['/a:rel']\n", "container.mounts"),
    ("mount-empty-source", BASE + "[container]\nmounts = [':/dst']\n", "container.mounts"),
    ("harness-mount-relative", BASE + "[container]\nimage = '/i.sqsh'\nharness_mount = 'opt/h'\n",
     "container.harness_mount"),
    ("harness-mount-colon", BASE + "[container]\nimage = '/i.sqsh'\nharness_mount = '/opt/h:r'\n",
     "container.harness_mount"),
    ("container-workdir-relative", BASE + "[container]\nimage = '/i.sqsh'\nworkdir = 'rel/dir'\n",
     "container.workdir"),
    ("cache-dir-comma-in-container", BASE.replace("\n", "\ncache_dir = '/tmp/t,x:y'\n", 1)
     + "[container]\nimage = '/i.sqsh'\n", "data.cache_dir"),
    ("workdir-unknown-user", BASE + "[model]\npreset = 'tiny'\n[video]\nnum_frames = 9\nwidth = 64\nheight = 48\n"
     "[run]\nworkdir = '~nosuchuser-harness/x'\n",
     "run.workdir = '~nosuchuser-harness/x': cannot expand"),
    ("workdir-unset-variable", BASE + "[model]\npreset = 'tiny'\n[video]\nnum_frames = 9\nwidth = 64\nheight = 48\n"
     "[run]\nworkdir = '$HARNESS_NO_SUCH_VAR/runs'\n",
     "run.workdir = '$HARNESS_NO_SUCH_VAR/runs': $HARNESS_NO_SUCH_VAR is not set in this environment"),
]


@pytest.mark.parametrize("case,text,needle", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, text: str,
                                  needle: str) -> None:
    code, lines = run_validate(tmp_path, text, capsys)
    assert code == 2
    assert len(lines) >= 1
    assert any(needle in ln for ln in lines), lines
    for ln in lines:
        assert ln.startswith(str(tmp_path / "run.toml")), ln
        assert "Traceback" not in ln


def test_distinct_bad_specs_count() -> None:
    assert len({c[0] for c in BAD_SPECS}) >= 30


def test_every_problem_reported(tmp_path: Path) -> None:
    text = BASE + "[video]\nwidht = 1\n[finetune]\nlrr = 1\nmax_step = 3\n"
    with pytest.raises(SpecError) as e:
        spec.loads(text, "run.toml")
    keys = {p.key for p in e.value.problems}
    assert keys == {"video.widht", "finetune.lrr", "finetune.max_step"}


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["validate", str(tmp_path / "nope.toml")])
    assert code == 2
    assert "nope.toml: cannot read" in capsys.readouterr().err


def test_reference_rows_cover_every_field() -> None:
    rows = spec.reference()
    keys = {r[0] for r in rows}
    assert "finetune.tensor_parallel" in keys and "container.image" in keys
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]


def test_readme_spec_reference_is_current() -> None:
    from harness.core.docs import spec_reference_markdown

    assert spec_reference_markdown() in (REPO / "README.md").read_text(), "run: python -m harness.core.docs"


def test_a_secret_in_the_spec_is_refused_without_echoing_its_value(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A spec is copied into the run directory, rendered into sbatch scripts and shown by `harness compare`, so
    a secret in `container.env` is refused; the message names the key, never the value. Names that merely
    contain a secret-like word stay allowed."""
    code, lines = run_validate(tmp_path, BASE + "[container]\nenv = { GITHUB_TOKEN = 'ghp_s3cr3t' }\n", capsys)
    assert code == 2 and len(lines) == 1 and "container.env.GITHUB_TOKEN" in lines[0]
    assert "ghp_s3cr3t" not in lines[0] and "environment" in lines[0]
    ok = BASE + "[container]\nenv = { TOKENIZERS_PARALLELISM = 'false', MAX_TOKENS = '9', NCCL_DEBUG = 'WARN' }\n"
    assert not [ln for ln in run_validate(tmp_path, ok, capsys)[1] if "container.env" in ln]
    assert cli.main(["plan", str(tmp_path / "run.toml"), "container.env={HF_TOKEN='hf_0v3rr1d3'}"]) == 2
    assert "hf_0v3rr1d3" not in "".join(capsys.readouterr())


def test_a_relative_path_is_checked_where_it_resolves(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`workdir = "runs"` passes as text; submitted from a directory named `a%x` it becomes an #SBATCH --output
    path Slurm rewrites (%x is the job name): the logs land elsewhere and the stored run cannot be read back."""
    here = tmp_path / "a%x"
    here.mkdir()
    monkeypatch.chdir(here)
    code, lines = run_validate(here, BASE + "[model]\npreset = 'tiny'\n[video]\nnum_frames = 9\nwidth = 64\n"
                                           "height = 48\n[run]\nworkdir = 'runs'\n", capsys)
    assert code == 2 and len(lines) == 1
    assert "run.workdir = '" in lines[0] and "must not contain '\\' or '%'" in lines[0]
    assert lines[0].endswith("resolved against the current directory")


def test_a_spec_saved_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    f = tmp_path / "bom.toml"
    f.write_bytes(b"\xef\xbb\xbf" + (REPO / "configs" / "quickstart.toml").read_bytes())
    assert spec.read_table(f)["run"]["name"] == "quickstart"


def test_environment_variables_in_paths_expand_at_submit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`$SCRATCH/runs` was taken literally: a folder named `$SCRATCH` under the submit directory."""
    monkeypatch.setenv("HARNESS_SCRATCH", str(tmp_path / "scratch"))
    f = tmp_path / "run.toml"
    f.write_text('[data]\nvideos = "${HARNESS_SCRATCH}/clips"\n[run]\nworkdir = "$HARNESS_SCRATCH/runs"\n')
    s = spec.absolutize(spec.load(f), tmp_path / "cwd")
    assert (s.run.workdir, s.data.videos) == (str(tmp_path / "scratch" / "runs"), str(tmp_path / "scratch" / "clips"))
