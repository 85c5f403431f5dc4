"""Spec fuzzing: whatever TOML (or non-TOML) a user writes, `harness validate` exits 0 or 2 with one line per
problem of the form `<file>: <key> ...`, and never shows a traceback.

Three generators feed the real CLI entry point (`harness.cli.main(["validate", path])`): whole specs built
from valid and unknown keys with values of every TOML type (huge, negative, non-finite, unicode, empty and
nested tables), byte-level mutations of a valid spec, and arbitrary text. Plus hand-written cases that,
with tests/test_spec.py's BAD_SPECS, make more than 100 distinct bad specs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import math
import re
import tempfile
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cli
from harness.core import spec as spec_mod

SECTIONS = spec_mod.SECTIONS
FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f.name for f in dataclasses.fields(typing.get_type_hints(spec_mod.RunSpec)[name]))
    for name in SECTIONS
}
VALID = '[data]\nvideos = "clips"\n[model]\npreset = "tiny"\n[video]\nwidth = 32\nheight = 32\nnum_frames = 9\n'
SETTINGS = settings(max_examples=250, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------ TOML writer
def toml_str(s: str) -> str:
    """A TOML basic string; every control character escaped (TOML forbids them raw)."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_str(k)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_doc(doc: dict[str, Any]) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_key(name)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ strategies
nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "$(touch /tmp/pwn)", "`id`", "a;b", "'\"", "#x", "a\nb", "\x00", "\u2028",
                     "é日本語🎬", "../../etc/passwd", "~", "-" * 300, "nvcr.io/nvidia/nemo:1", "a:b:c:d",
                     "cosmos-4b", "tiny", "video2world", "base", "psnr", "finetune", "A" * 5000]),
)
ints = st.one_of(st.integers(-10, 100), st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**31, 2**64]))
floats = st.floats(allow_nan=True, allow_infinity=True)
datetimes = st.one_of(st.datetimes(timezones=st.just(dt.timezone.utc)), st.dates(), st.times())
scalars = st.one_of(ints, floats, st.booleans(), nasty_text, datetimes)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(nasty_text, inner, max_size=3)),
                      max_leaves=12)


@st.composite
def fuzz_specs(draw: st.DrawFn) -> str:
    doc: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 6))):
        section = draw(st.one_of(st.sampled_from(SECTIONS), nasty_text.filter(bool)))
        table = doc.setdefault(section, {}) if not isinstance(doc.get(section), (int, str)) else {}
        if not isinstance(table, dict):
            continue
        known = FIELDS.get(section, ("x",))
        for _ in range(draw(st.integers(0, 5))):
            key = draw(st.one_of(st.sampled_from(known), st.sampled_from(known).map(lambda k: k + "s"),
                                 nasty_text.filter(bool)))
            table[key] = draw(values)
        doc[section] = table
    if draw(st.booleans()):
        doc.setdefault("data", {}).setdefault("videos", draw(st.sampled_from(["clips", "", "/x"])))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(SECTIONS))] = draw(scalars)  # a section that is not a table
    return toml_doc(doc)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid spec with a few bytes replaced, inserted or deleted."""
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["ins", "del", "rep"]))
        junk = draw(st.text(min_size=1, max_size=5))
        text = text[:i] + junk + text[i:] if op == "ins" else \
            text[:i] + text[i + 1:] if op == "del" else text[:i] + junk + text[i + len(junk):]
    return text


# ------------------------------------------------------------------------------ the check
def validate(text: str | bytes, name: str = "run.toml") -> tuple[int, Path, list[str], str]:
    """Run the real CLI on `text` in a fresh directory; returns (code, path, stderr lines, stdout)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["validate", str(path)])
            except BaseException as e:  # noqa: BLE001 - any escape at all is the failure under test
                raise AssertionError(f"validate raised {e.__class__.__name__}: {e}\n--- spec ---\n{text!r}") from e
        return code, path, [ln for ln in err.getvalue().splitlines() if ln.strip()], out.getvalue()


_PART = r'(?:[^\s."]+|"(?:[^"\\]|\\.)*")'
KEY_TOKEN = re.compile(rf"^({_PART}(?:\.{_PART}?)*)(?: = |: | \(|$)")
"""A dotted key path whose non-bare parts are "quoted", followed by its message."""


def check_lines(code: int, path: Path, lines: list[str], out: str, text: Any) -> None:
    assert code in (0, 2), (code, text)
    if code == 0:
        assert not lines and ": ok (" in out, (lines, out)
        return
    assert lines, f"exit 2 without a message for {text!r}"
    prefix = f"{path}: "
    for ln in lines:
        assert "Traceback" not in ln and ln.isprintable(), ln
        assert ln.startswith(prefix), (ln, text)
        rest = ln[len(prefix):]
        if rest.startswith(("not valid TOML", "cannot read")):
            continue
        m = KEY_TOKEN.match(rest)
        assert m, (ln, text)
        key = m.group(1)
        top = key.split(".")[0]
        assert top in SECTIONS or "unknown key" in rest, (ln, text)


def fuzz_one(text: str, reliability: Any) -> None:
    reliability.add("specs_fuzzed")
    try:
        code, path, lines, out = validate(text)
        check_lines(code, path, lines, out, text)
    except AssertionError:
        reliability.add("tracebacks")  # counted, then the test fails with hypothesis's minimal example
        raise


@SETTINGS
@given(text=fuzz_specs())
def test_fuzz_structured_specs(text: str, reliability: Any) -> None:
    fuzz_one(text, reliability)


@SETTINGS
@given(text=mutated())
def test_fuzz_mutated_valid_spec(text: str, reliability: Any) -> None:
    fuzz_one(text, reliability)


@settings(SETTINGS, max_examples=200)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_fuzz_arbitrary_text(text: str, reliability: Any) -> None:
    fuzz_one(text, reliability)


@settings(SETTINGS, max_examples=150)
@given(section=st.sampled_from(SECTIONS), data=st.data())
def test_fuzz_each_known_key_with_junk(section: str, data: st.DataObject, reliability: Any) -> None:
    """Every declared key, one at a time, with a value of a random type on top of a valid spec."""
    key = data.draw(st.sampled_from(FIELDS[section]))
    value = data.draw(values)
    base = VALID if section not in ("data", "model", "video") else VALID.replace(f"[{section}]\n", "[x_]\n", 1)
    fuzz_one(f"{base}\n[{section}]\n{toml_key(key)} = {toml_value(value)}\n", reliability)


def test_valid_base_is_valid() -> None:
    code, _, lines, out = validate(VALID)
    assert code == 0 and not lines and "ok (9x32x32" in out


# ------------------------------------------------------------------------------ hand-written cases
B = VALID
HAND: list[tuple[str, str, str]] = [
    # (case id, spec text, text the one-line error must contain); none repeats tests/test_spec.py's BAD_SPECS
    ("int-5000-digits", B + "[finetune]\nmax_steps = " + "9" * 5000 + "\n", "not valid TOML"),
    ("unknown-key-5000-digit-value", B + "x = " + "1" * 5000 + "\n", "not valid TOML"),
    ("array-nested-2000", B + "[finetune]\nlr = " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),
    ("inline-table-nested-2000", B + "[finetune]\nlr = " + "{a=" * 2000 + "1" + "}" * 2000 + "\n",
     "nested too deeply"),
    ("array-nested-400", B + "[finetune]\nlr = " + "[" * 400 + "]" * 400 + "\n", "finetune.lr"),
    ("quoted-key-with-newline", B + '[run]\n"na\\nme" = "x"\n', r'run."na\u000ame": unknown key'),
    ("quoted-top-key-with-cr", B + '"\\r" = 1\n', r'"\u000d": unknown key'),
    ("env-key-with-newline", B + '[container]\nenv = { "A\\nB" = "1" }\n', "container.env"),
    ("env-value-newline", B + '[container]\nenv = { A = "x\\ny" }\n', "container.env"),
    ("env-value-nul", B + '[container]\nenv = { A = "x\\u0000y" }\n', "container.env"),
    ("revision-value-newline", B + '[assets]\nrevisions = { "a/b" = "main\\nrm" }\n', "assets.revisions"),
    ("revisions-nested-table", B + '[assets]\nrevisions = { a = { b = "c" } }\n', "assets.revisions"),
    ("mount-with-newline", B + '[container]\nmounts = ["/a:/b\\n"]\n', "container.mounts"),
    ("extension-with-nul", B.replace('videos = "clips"', 'videos = "clips"\nextensions = [".mp\\u00004"]'),
     "data.extensions"),
    ("workdir-newline", B + '[run]\nworkdir = "runs\\n; touch x"\n', "run.workdir"),
    ("hf-home-cr", B + '[assets]\nhf_home = "/hf\\r"\n', "assets.hf_home"),
    ("image-newline", B + '[container]\nimage = "nvcr.io#x\\ny"\n', "container.image"),
    ("python-nul", B + '[container]\npython = "py\\u0000"\n', "container.python"),
    ("name-datetime", B + "[run]\nname = 1979-05-27T07:32:00Z\n", "run.name"),
    ("seed-local-date", B + "[run]\nseed = 1979-05-27\n", "run.seed"),
    ("lr-local-time", B + "[finetune]\nlr = 07:32:00\n", "finetune.lr"),
    ("recipe-table", B + "[run]\nrecipe = { a = 1 }\n", "run.recipe"),
    ("recipe-list", B + "[run]\nrecipe = ['base']\n", "run.recipe"),
    ("engine-bool", B + "[finetune]\nengine = true\n", "finetune.engine"),
    ("device-upper", B + "[tokenize]\ndevice = 'CUDA'\n", "tokenize.device"),
    ("recompute-bad", B + "[finetune]\nrecompute = 'partial'\n", "finetune.recompute"),
    ("metrics-not-list", B + "[evaluate]\nmetrics = 'psnr'\n", "evaluate.metrics"),
    ("compression-four", B + "[tokenizer]\ncompression = [4, 8, 8, 8]\n", "tokenizer.compression"),
    ("compression-huge-item", B + "[tokenizer]\ncompression = [4, 8, 65]\n", "tokenizer.compression"),
    ("compression-float", B + "[tokenizer]\ncompression = [4.0, 8, 8]\n", "tokenizer.compression"),
    ("split-floats", B.replace('videos = "clips"', 'videos = "clips"\nsplit = [0.8, 0.1, 0.1]'), "data.split"),
    ("split-all-zero", B.replace('videos = "clips"', 'videos = "clips"\nsplit = [0, 0, 0]'), "data.split"),
    ("split-huge", B.replace('videos = "clips"', 'videos = "clips"\nsplit = [10, 1, 10000000]'), "data.split"),
    ("fps-zero", B + "fps = 0\n", "video.fps"),
    ("num-frames-negative", B.replace("num_frames = 9", "num_frames = -9"), "video.num_frames"),
    ("num-frames-int64-max", B.replace("num_frames = 9", "num_frames = 9223372036854775807"),
     "video.num_frames"),
    ("width-int64-min", B.replace("width = 32", "width = -9223372036854775808"), "video.width"),
    ("height-below-compression", B.replace("height = 32", "height = 4"), "video.height"),
    ("gpus-17", B + "[finetune]\ngpus_per_node = 17\n", "finetune.gpus_per_node"),
    ("cpus-zero", B + "[tokenize]\ncpus_per_task = 0\n", "tokenize.cpus_per_task"),
    ("mem-negative", B + "[merge]\nmem_gb = -1\n", "merge.mem_gb"),
    ("time-31-days", B + "[infer]\ntime_min = 44641\n", "infer.time_min"),
    ("shards-negative", B + "[tokenize]\nshards = -1\n", "tokenize.shards"),
    ("batch-size-negative", B + "[infer]\nbatch_size = -1\n", "infer.batch_size"),  # 0 = auto
    ("temperature-neg-inf", B + "[infer]\ntemperature = -inf\n", "infer.temperature"),
    ("top-p-nan", B + "[infer]\ntop_p = nan\n", "infer.top_p"),
    ("grad-clip-huge", B + "[finetune]\ngrad_clip = 1e300\n", "finetune.grad_clip"),
    ("weight-decay-string-number", B + "[finetune]\nweight_decay = '0.1'\n", "finetune.weight_decay"),
    ("signal-delay-hour-plus", B + "[finetune]\nsignal_delay_s = 3601\n", "finetune.signal_delay_s"),
    ("constraint-semicolon", B + "[finetune]\nconstraint = 'a100;id'\n", "finetune.constraint"),
    ("qos-space", B + "[merge]\nqos = 'high prio'\n", "merge.qos"),
    ("partition-unicode", B + "[tokenize]\npartition = 'gpü'\n", "tokenize.partition"),
    ("account-quote", B + "[report]\naccount = \"a'b\"\n", "report.account"),
    ("run-name-unicode", B + "[run]\nname = 'ränn'\n", "run.name"),
    ("run-name-65-chars", B + "[run]\nname = '" + "a" * 65 + "'\n", "run.name"),
    ("run-name-leading-dash", B + "[run]\nname = '-rf'\n", "run.name"),
    ("run-name-hash", B + "[run]\nname = 'a#b'\n", "run.name"),
    ("array-of-tables-section", B + "[[finetune]]\nlr = 1.0\n", "finetune"),
    ("dotted-subtable-junk", B + "[video.extra.deep]\nx = [[1], [{ y = 2 }]]\n", "video.extra"),
    ("key-with-space", B + '[run]\n"na me" = "x"\n', 'run."na me": unknown key'),
    ("key-with-dot-quoted", B + '[run]\n"na.me" = "x"\n', 'run."na.me": unknown key'),
    ("empty-key", B + '[run]\n"" = 1\n', 'run."": unknown key'),
    ("unknown-section-unicode", B + "['日本']\nx = 1\n", "日本"),
    ("stages-mixed-types", B + "[container]\nstages = ['infer', 3]\n", "container.stages"),
    ("env-list", B + "[container]\nenv = ['A=1']\n", "container.env"),
    ("bom-and-junk", "\ufeff" + B + "\x01", "not valid TOML"),
    ("utf8-invalid-bytes", "", "cannot read"),  # written as bytes below
    ("context-zero", B + "[infer]\ncontext_latent_frames = 0\n", "infer.context_latent_frames"),
    ("max-inputs-bool", B + "[infer]\nmax_inputs = false\n", "infer.max_inputs"),
]
HAND_BYTES = {"utf8-invalid-bytes": b'[data]\nvideos = "\xff\xfe"\n'}


@pytest.mark.parametrize("case,text,needle", HAND, ids=[c[0] for c in HAND])
def test_hand_written_bad_spec(case: str, text: str, needle: str, reliability: Any) -> None:
    reliability.add("hand_written_bad_specs")
    code, path, lines, out = validate(HAND_BYTES.get(case, text))
    check_lines(code, path, lines, out, text)
    assert code == 2, out
    assert any(needle in ln for ln in lines), lines


def test_hand_written_total_at_least_100() -> None:
    """This file's cases plus tests/test_spec.py's, all distinct (by id and by text)."""
    import test_spec

    ids = {c[0] for c in HAND} | {c[0] for c in test_spec.BAD_SPECS}
    texts = {c[1] if c[0] not in HAND_BYTES else repr(HAND_BYTES[c[0]]) for c in HAND} | \
        {c[1] for c in test_spec.BAD_SPECS}
    assert len(HAND) + len(test_spec.BAD_SPECS) == len(ids) == len(texts)
    assert len(ids) >= 100, len(ids)


def test_markup_in_spec_path_is_not_a_crash(tmp_path: Path) -> None:
    """A path holding rich markup (`[/]`) is printed as text, not parsed."""
    (tmp_path / "x[").mkdir()
    code, path, lines, out = validate(VALID)  # sanity
    p = tmp_path / "x[" / "]y.toml"
    p.write_text(VALID)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["validate", str(p)]) == 0
    assert "x[/]y.toml: ok" in buf.getvalue().replace("\n", "")
