"""The run directory's stored records read back: the one reader of each (spec.json, plan.json with its facts,
jobs.json), so every command, stage and bench gets the same types and the same error for a damaged file.

Where the records are is `harness.core.paths.RunPaths`; what a plan is, `harness.core.plan`. jobs.json's types
live here (not in `launch`) so that a reader below the launch layer (a bench, the report) needs no backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.atomic import atomic_write_json, read_json
from harness.core.errors import HarnessError, Problem
from harness.core.paths import CampaignPaths, RunPaths

T = TypeVar("T")
DAMAGE = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)
"""What a missing, truncated, hand-edited or non-UTF-8 record raises while read and typed."""


def parsed(path: Path, key: str, parse: Callable[[], T]) -> T:
    """`parse()` of one record, a damaged record reported as one line naming its file (exit 2), not a traceback."""
    try:
        return parse()
    except HarnessError:
        raise
    except DAMAGE as e:
        raise HarnessError(Problem(str(path), key, f"cannot read ({e.__class__.__name__}: {e})")) from None


def json_object(path: Path) -> dict[str, Any]:
    """A record that must be a JSON object; OSError or ValueError where it is missing, torn or another type."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, found {type(raw).__name__}")
    return raw


# ------------------------------------------------------------------------------------------ shared.json
def open_run(root: Path) -> RunPaths:
    """The run directory's layout, with where its shared data lies (a campaign member whose tokenize and merge
    another member runs; a token-cache entry and the run building it): every task, driver and command opens a run
    through here."""
    paths = RunPaths(root)
    if not paths.shared_json.is_file():
        return paths
    try:
        raw = read_json(paths.shared_json)
        got = {k: Path(raw[k]) if raw.get(k) else None for k in ("run", "cache", "builder")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise HarnessError(Problem(str(paths.shared_json), "run", f"cannot read ({e.__class__.__name__}: {e})")) \
            from None
    return RunPaths(root, got["run"], got["cache"], got["builder"])


def write_shared(paths: RunPaths, owner: RunPaths | None, cache: Path | None = None,
                 builder: Path | None = None) -> RunPaths:
    """Record that `owner` prepares this run's data (None: this run), that its tokens are in the cache entry
    `cache`, built by `builder`'s jobs (None: by the data-preparing run); the paths with it."""
    shared = owner.root if owner is not None else None
    atomic_write_json(paths.shared_json, {"run": str(shared or ""), "cache": str(cache or ""),
                                          "builder": str(builder or "")})
    return RunPaths(paths.root, shared, cache, builder)


# ------------------------------------------------------------------------------------------ campaign.json
def read_campaign(cpaths: CampaignPaths) -> list[tuple[str, Path]]:
    """(values, run directory) of every member a campaign submitted, in order."""
    try:
        raw = read_json(cpaths.campaign_json)
        return [(str(m.get("values", "")), Path(m["root"])) for m in raw["members"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HarnessError(Problem(str(cpaths.campaign_json), "members",
                                   f"cannot read ({e.__class__.__name__}: {e})")) from None


# ------------------------------------------------------------------------------------------ spec.json
def read_spec_record(paths: RunPaths) -> dict[str, Any]:
    """spec.json as stored (a bench edits it in place); `read_spec` for the typed spec."""
    return parsed(paths.spec_json, "", lambda: json_object(paths.spec_json))


def read_spec(paths: RunPaths) -> spec_mod.RunSpec:
    """The frozen spec the run was submitted with (not the TOML file, which may have changed since)."""
    record = read_spec_record(paths)
    return parsed(paths.spec_json, "", lambda: spec_mod.from_dict(record, source=str(paths.spec_json)))


# ------------------------------------------------------------------------------------------ plan.json
def read_plan_record(paths: RunPaths) -> dict[str, Any]:
    """plan.json as stored: the plan as `harness plan` showed it at submit, its facts and the executor chosen."""
    return parsed(paths.plan_json, "", lambda: json_object(paths.plan_json))


def read_facts(paths: RunPaths) -> plan_mod.Facts:
    """The facts gathered at submit: with the frozen spec they rebuild the identical plan."""
    record = read_plan_record(paths)
    return parsed(paths.plan_json, "facts", lambda: _facts(record["facts"]))


def _facts(raw: Mapping[str, Any]) -> plan_mod.Facts:
    """Counts as counts: an edited plan.json with a string, a bool or a negative number would rebuild another
    plan (or fail deep inside it), so it is a damaged record."""
    facts = plan_mod.Facts(**raw)
    for name in ("num_inputs", "max_array_size", "nodes_available"):
        v = getattr(facts, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "num_inputs" else 1):
            raise ValueError(f"{name} = {v!r}: expected a whole number >= {0 if name == 'num_inputs' else 1}")
    return facts


# ------------------------------------------------------------------------------------------ jobs.json
@dataclass(frozen=True)
class Submission:
    """One jobs.json entry: one sbatch (one chunk of a stage's array) or one local driver (stage '*')."""

    stage: str
    job_id: str
    tasks: tuple[tuple[int, int], ...]
    """The stage's task indices as [start, stop) runs, in array-index order."""
    array: bool
    time: float
    round: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "job_id": self.job_id, "tasks": [list(r) for r in self.tasks],
                "array": self.array, "time": self.time, "round": self.round}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Submission:
        return cls(str(d["stage"]), str(d["job_id"]), tuple((int(a), int(b)) for a, b in d.get("tasks", [])),
                   bool(d.get("array", False)), float(d.get("time", 0)), int(d.get("round", 0)))


@dataclass(frozen=True)
class Jobs:
    """jobs.json: which backend ran the run, why, and every submission of every round."""

    executor: str
    reason: str
    submissions: tuple[Submission, ...]
    failed: str = ""
    """Why the last submit or resume queued nothing (it cancelled what it had sent); '' once one succeeds."""

    def to_json(self) -> dict[str, Any]:
        failed = {"failed": self.failed} if self.failed else {}
        return {"executor": self.executor, "reason": self.reason,
                "submissions": [s.to_json() for s in self.submissions], **failed}

    @property
    def next_round(self) -> int:
        return 1 + max((s.round for s in self.submissions), default=-1)


def read_jobs(paths: RunPaths) -> Jobs:
    raw = parsed(paths.jobs_json, "", lambda: json_object(paths.jobs_json))
    if raw.get("executor") not in ("slurm", "local") or not isinstance(raw.get("submissions"), list):
        raise HarnessError(Problem(str(paths.jobs_json), "executor",
                                   "expected 'slurm' or 'local', with a 'submissions' list"))
    subs = parsed(paths.jobs_json, "submissions", lambda: tuple(Submission.from_json(s) for s in raw["submissions"]))
    bad = [s.job_id for s in subs if s.job_id.startswith("local:") and not s.job_id[6:].isdigit()]
    if bad:
        raise HarnessError(Problem(str(paths.jobs_json), "submissions", f"job id {bad[0]!r}: a local driver's id is "
                                                                        "'local:<pid>'"))
    return Jobs(raw["executor"], str(raw.get("reason", "")), subs, str(raw.get("failed", "")))
