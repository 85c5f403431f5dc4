"""One plan path for `harness plan`, `harness doctor` and `harness submit`.

`gather` is the only place the facts a plan is built for are learned: the executor (Slurm when a controller
answers, else submitit's local executor), the cluster's numbers (MaxArraySize, nodes up) and the inputs. `build`
turns them into the plan that `submit` sends and `view` into everything `harness plan` prints and writes, so the
plan shown is the plan submitted, derived number by derived number. Printing is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from harness.core import campaign, estimate, footprint, overrides, sweep, tokencache
from harness.core import plan as plan_mod
from harness.core import spec as spec_mod
from harness.core.errors import HarnessError, Problem, SpecError
from harness.core.explain import FactSources, origins
from harness.core.paths import RunPaths
from harness.core.spec_check import resolved_path_problems
from harness.core.tokencache import CacheUse
from harness.launch import slurm, slurmcli
from harness.lib.inputs import InputItem
from harness.ops import assetcheck, cache, image_cache, inputs

ExecutorName = Literal["auto", "slurm", "local"]
Purpose = Literal["plan", "doctor", "submit"]
"""Who gathers: `plan` counts the inputs (a note where they cannot be read) and plans for Slurm with assumed
figures where no controller answers; `doctor` lists them and keeps why it could not; `submit` lists them or fails."""

LOCAL_MAX_ARRAY_SIZE = 1_000_000
"""The local driver has no array limit: one chunk per stage."""


@dataclass(frozen=True)
class Choice:
    executor: Literal["slurm", "local"]
    reason: str
    assumed: bool = False
    """Slurm without a controller to ask (`harness plan` only): the cluster's figures are Slurm's defaults."""


@dataclass(frozen=True)
class Gathered:
    """What a plan is built from, and what each number rests on."""

    choice: Choice
    facts: plan_mod.Facts
    sources: FactSources
    items: list[InputItem] | None
    """The listed inputs; None where they were only counted or could not be listed."""
    items_why: str
    """Why the inputs could not be listed ('' when they were, or were not asked for)."""
    notes: tuple[str, ...]
    """What was assumed, for `harness plan` to say."""
    cache: CacheUse | None = None
    """What the run does with its token-cache entry (`data.cache_dir`); None: no cache, or no key known here."""
    cache_inputs: Mapping[str, Any] = field(default_factory=dict)
    """The cache key's inputs in clear (the entry's entry.json)."""


def load(spec_path: Path) -> spec_mod.RunSpec:
    """The spec as `plan` and `submit` take it: checked for submission, relative paths against this directory."""
    return _resolved(spec_mod.load_for_submit(spec_path))


def _resolved(spec: spec_mod.RunSpec, member: str = "") -> spec_mod.RunSpec:
    out = spec_mod.absolutize(spec, Path.cwd())
    problems = resolved_path_problems(out, member)
    if problems:
        raise SpecError(problems)
    return out


def load_members(spec_path: Path, texts: tuple[str, ...] | list[str] = (), *, for_submit: bool = True
                 ) -> sweep.Expanded:
    """`load` for a spec file plus `key=value` overrides: its members (one, or one per [sweep] combination),
    each checked as `load` checks a spec and with relative paths against this directory."""
    e = sweep.expand(spec_mod.read_table(spec_path), str(spec_path), tuple(texts), for_submit=for_submit)
    members = tuple(replace(m, spec=_resolved(m.spec, m.label if e.is_sweep else "")) for m in e.members)
    return replace(e, members=members)


def gather_members(expanded: sweep.Expanded, requested: ExecutorName, purpose: Purpose, *,
                   num_inputs: int | None = None) -> list[Gathered]:
    """`gather` once per group of members that share their data (the same inputs, the same cluster), so a sweep
    lists its inputs and asks the controller once; one Gathered per member."""
    why_not = "" if requested == "local" else slurmcli.controller_error()
    done: dict[str, Gathered] = {}
    for m in expanded.members:
        key = campaign.share_key(m.spec)
        if key not in done:
            done[key] = gather(m.spec, requested, purpose, num_inputs=num_inputs, why_not=why_not)
    return [done[campaign.share_key(m.spec)] for m in expanded.members]


def choose_executor(requested: ExecutorName, *, planning: bool = False, why_not: str | None = None) -> Choice:
    """`why_not` is what the controller said ('' when it answers) where the caller already asked."""
    if requested == "local":
        return Choice("local", "requested with --executor local")
    why_not = slurmcli.controller_error() if why_not is None else why_not
    if requested == "slurm":
        if why_not and planning:
            return Choice("slurm", f"{why_not}; planned for Slurm with its defaults assumed", assumed=True)
        if why_not:
            raise HarnessError(f"--executor slurm: {why_not}")
        return Choice("slurm", "requested with --executor slurm")
    if why_not:
        return Choice("local", f"{why_not}; running on this machine with submitit's local executor")
    return Choice("slurm", "a Slurm controller answers (scontrol ping)")


def gather(spec: spec_mod.RunSpec, requested: ExecutorName, purpose: Purpose, *, num_inputs: int | None = None,
           why_not: str | None = None) -> Gathered:
    """The executor, the inputs and the cluster's numbers, in that order (a submit with unreadable inputs stops
    before any cluster query). `num_inputs` replaces listing (`harness plan --num-inputs`)."""
    choice = choose_executor(requested, planning=purpose == "plan", why_not=why_not)
    if choice.executor == "local":
        _one_node(spec, choice)
    items: list[InputItem] | None = None
    why = ""
    notes: list[str] = []
    if purpose == "plan" and (num_inputs is not None or not spec.data.cache_dir):
        count = num_inputs if num_inputs is not None else _count(spec, notes)
    else:  # a token cache's key needs the listed inputs, for `plan` too
        items, why = _listed(spec, strict=purpose == "submit")
        count = len(items or [])
        if purpose == "plan" and items is None:
            notes.append(f"inputs not readable here ({why}); planned for 0 inputs (use --num-inputs N)")
    facts, sources, assumed = cluster_facts(spec, choice, count)
    facts = replace(facts, image=image_cache.state(spec, choice.executor == "local"))
    if choice.executor == "slurm" and slurm.sbatch_env():
        notes.append(f"{', '.join(slurm.sbatch_env())} in this environment: not passed to sbatch (they would "
                     "override the scripts' #SBATCH lines); the spec's keys set these")
    use, inputs = _cache_use(spec, facts, items, notes)
    return Gathered(choice, facts, sources, items, why, tuple(notes + assumed), use, inputs)


def _cache_use(spec: spec_mod.RunSpec, facts: plan_mod.Facts, items: list[InputItem] | None, notes: list[str]
               ) -> tuple[CacheUse | None, dict[str, Any]]:
    """The token-cache entry's key and what a submit now would do with it (None where no key is known)."""
    if not spec.data.cache_dir:
        return None, {}
    if items is None:
        notes.append("token cache: the inputs are not listed here, so their key is not known")
        return None, {}
    shards = plan_mod.build(spec, facts).stage("tokenize").tasks
    inputs = cache.key_inputs(spec, items, shards)
    key = tokencache.key_of(inputs)
    return cache.inspect(cache.entry_of(spec, key), key), inputs


def _listed(spec: spec_mod.RunSpec, *, strict: bool) -> tuple[list[InputItem] | None, str]:
    """(the inputs, '') or, unless `strict`, (None, why they cannot be listed)."""
    if strict:
        return inputs.require_usable(spec, inputs.discover(spec)), ""
    try:
        return inputs.discover(spec), ""
    except HarnessError as e:
        return None, e.problems[0].message


def _count(spec: spec_mod.RunSpec, notes: list[str]) -> int:
    """The number of inputs for `harness plan` (0, with a note, where they cannot be read here)."""
    try:
        n = inputs.count(spec)
    except HarnessError as e:
        notes.append(f"inputs not readable here ({e}); planned for 0 inputs (use --num-inputs N)")
        return 0
    bad = [it for it in inputs.discover(spec) if it.error] if spec.data.jsonl else []  # a jsonl's lines, parsed
    if n == 0:
        notes.append(f"{inputs.data_key(spec)}: no inputs found there; a submit would have nothing to tokenize")
    elif bad:
        notes.append(f"{inputs.data_key(spec)}: {len(bad)} of {n} input(s) unusable (first: {bad[0].error}); "
                     f"tokenize skips them and merge lists them")
    return n


def _one_node(spec: spec_mod.RunSpec, choice: Choice) -> None:
    """The local executor is this machine: a stage asking for several nodes would start one rank set and fail."""
    from harness.core.stages import STAGES

    wide = [row.section for row in STAGES if getattr(spec, row.section).nodes > 1]
    if wide:
        n = getattr(spec, wide[0]).nodes
        why = f"= {n}: the local executor runs on this machine ({choice.reason}), one node; use 1 or a Slurm cluster"
        raise HarnessError(Problem(spec.source, f"{wide[0]}.nodes", why))


def cluster_facts(spec: spec_mod.RunSpec, choice: Choice, num_inputs: int
                  ) -> tuple[plan_mod.Facts, FactSources, list[str]]:
    """(facts, where each came from, what was assumed) for the chosen executor: the local driver has no array
    limit and one machine; Slurm's numbers come from the controller, or are its defaults where none answers.
    The spec's `tokenize.nodes_available` wins over sinfo."""
    if choice.executor == "local":
        return (plan_mod.Facts(num_inputs=num_inputs, max_array_size=LOCAL_MAX_ARRAY_SIZE, nodes_available=1),
                FactSources("the local executor runs on this machine", "the local executor has no array limit"), [])
    t = spec.tokenize
    spec_from = "from the spec (tokenize.nodes_available)" if t.nodes_available else ""
    if choice.assumed:
        nodes, max_array = t.nodes_available or 1, slurmcli.DEFAULT_MAX_ARRAY_SIZE
        sources = FactSources(spec_from or "assumed (no Slurm controller answers here)",
                              "Slurm's default, assumed (no controller answers here)")
        assumed = [f"no Slurm controller here: MaxArraySize {max_array} and {nodes} node(s) assumed"]
    else:
        nodes = t.nodes_available or slurmcli.nodes_available(t.partition)
        max_array = slurmcli.max_array_size(slurmcli.config())
        sources = FactSources(spec_from or f"sinfo: nodes up in partition {t.partition or '(default)'}",
                              "scontrol show config")
        assumed = []
    return plan_mod.Facts(num_inputs=num_inputs, max_array_size=max_array, nodes_available=nodes), sources, assumed


def build(spec: spec_mod.RunSpec, gathered: Gathered) -> plan_mod.Plan:
    return plan_mod.build(spec, gathered.facts)


@dataclass(frozen=True)
class Script:
    file_name: str
    """`NN-stage[-chunk].sbatch`, in submission order."""
    stage: str
    text: str


@dataclass(frozen=True)
class PlanView:
    """Everything `harness plan` shows, as plain text for the caller to style."""

    plan: plan_mod.Plan
    gathered: Gathered
    title: str
    subtitle: str
    summary: tuple[str, ...]
    """Token math, the finetune layout, inputs and checkpoints; with a token cache, what tokenize and merge do."""
    fanout: str
    notes: tuple[str, ...]
    resolved: tuple[str, ...]
    """Where each resolved value came from (`harness.core.explain`)."""
    estimates: tuple[str, ...]
    stage_header: tuple[str, ...]
    stage_rows: tuple[tuple[str, ...], ...]
    scripts: tuple[Script, ...]

    @property
    def srun_lines(self) -> tuple[str, ...]:
        """The finetune `srun` line of each finetune script."""
        return tuple(next((ln for ln in s.text.splitlines() if ln.startswith("srun ")), "")
                     for s in self.scripts if s.stage == "finetune")


def view(spec: spec_mod.RunSpec, gathered: Gathered) -> PlanView:
    """`spec` as loaded (its warnings and explicit values are part of the view)."""
    plan = build(spec, gathered)
    notes = list(plan.warnings) + list(gathered.notes) + [f"warning: {w}" for w in spec_mod.warnings(spec)]
    return PlanView(plan, gathered, spec.run.name, f"{spec.run.recipe}, model {spec.model.preset}",
                    _summary(plan) + _cache_lines(gathered.cache), _fanout(plan), tuple(notes),
                    tuple(origins(spec, plan, gathered.facts, gathered.sources)), _estimates(plan),
                    ("stage", "tasks", "array", "after", "resources", "container"), _stage_rows(plan),
                    scripts(plan, gathered))


def _summary(plan: plan_mod.Plan) -> tuple[str, ...]:
    spec, tm, f = plan.spec, plan.token_math, plan.spec.finetune
    return (f"token math: {tm.describe()}",
            f"finetune: {f.nodes} node(s) x {spec_mod.ranks_per_node(f)} rank(s)/node"
            f" ({f.gpus_per_node} GPU/node), TP {f.tensor_parallel} x DP {plan.data_parallel}"
            f"{', sequence parallel' if plan.training.sequence_parallel else ''};"
            f" GBS {f.global_batch_size} = MBS {f.micro_batch_size} x DP {plan.data_parallel}"
            f" x grad-accum {plan.grad_accumulation}; {plan.training.precision}, {plan.training.last_step} steps",
            f"inputs: {plan.num_inputs} -> {spec.tokenize.shards} shard(s); checkpoints at steps "
            f"{', '.join(map(str, plan.checkpoint_steps))}"
            f"{'; step 0 (the baseline) inferred and evaluated too' if 0 in plan.eval_steps else ''}"
            f"; sbatch calls: {plan.sbatch_calls}", *_image_line(plan))


def _image_line(plan: plan_mod.Plan) -> tuple[str, ...]:
    i = plan.image
    if i is None:
        return ()
    if i.reused:
        return (f"import-image: reused {i.sqsh} (complete; not submitted)",)
    users = ", ".join(s.name for s in plan.stages if s.container)
    return (f"import-image: enroot import {i.source} -> {i.sqsh}, once, before {users}",)


def _cache_lines(use: CacheUse | None) -> tuple[str, ...]:
    if use is None:
        return ()
    merge = {"reuse": f"merge: reused {use.key16}", "wait": f"merge: waits on {use.builder}'s merge",
             "build": f"merge: into cache {use.key16}"}[use.mode]
    return use.line(), merge


def _fanout(plan: plan_mod.Plan) -> str:
    i = plan.spec.infer
    k = plan_mod.infer_shards(i)
    per = f"{i.inputs_per_task} input(s) per task" if i.inputs_per_task else "all inputs in one task per checkpoint"
    src = f"infer.inputs {i.inputs}" if i.inputs else "the test split"
    return (f"{len(plan.eval_steps)} checkpoint(s) x {k} input shard(s) = {plan.stage('infer').tasks} "
            f"task(s) each; up to {i.max_inputs} input(s) from {src}, {per}")


def _estimates(plan: plan_mod.Plan) -> tuple[str, ...]:
    """Wall time and GPU-hours from the bench figures, then what the run writes to run.workdir."""
    disk = footprint.items(plan)
    written = "; ".join(f"{i.what} {footprint.human(i.bytes)}" for i in disk if i.where == "workdir")
    t5 = (f"prompt encoder (model.text_encoder_dtype): {assetcheck.prompt_encoder_line(plan.spec)}",
          ) if plan.spec.video2world else ()
    return (*estimate.lines(plan),
            f"writes ~{footprint.human(footprint.total(disk, 'workdir'))} to run.workdir ({written})", *t5)


def _stage_rows(plan: plan_mod.Plan) -> tuple[tuple[str, ...], ...]:
    rows = []
    for s in plan.stages:
        r = s.resources
        arr = ", ".join(f"{a}-{b - 1}" for a, b in s.chunks) + (f" %{r.array_throttle}" if r.array_throttle else "") \
            if s.array else "-"
        deps = ", ".join(f"{d.kind}:{d.stage}" for d in s.depends) or "-"
        res = f"{r.nodes}N x {r.ntasks_per_node}T, {r.gpus_per_node} GPU/N, {r.cpus_per_task} CPU/T, {r.time_min} min"
        tasks = f"{s.tasks} = {len(plan.eval_steps)} x {plan_mod.infer_shards(plan.spec.infer)}" \
            if s.name in ("infer", "evaluate") else str(s.tasks)
        rows.append((s.name, tasks, arr, deps, res, "yes" if s.container else "-"))
    return tuple(rows)


def scripts(plan: plan_mod.Plan, gathered: Gathered) -> tuple[Script, ...]:
    return _scripts(plan, _placeholder_paths(plan.spec, gathered.cache))


def _placeholder_paths(spec: spec_mod.RunSpec, use: CacheUse | None = None) -> RunPaths:
    """The run's paths as submit will make them, its id a placeholder; with a token cache, the entry's folder
    too (the container stages mount it)."""
    root = Path(spec.run.workdir) / f"{spec.run.name}-<run-id>"
    return RunPaths(root, None, cache.entry_of(spec, use.key).root if use is not None else None)


def _scripts(plan: plan_mod.Plan, paths: RunPaths | None = None, stages: tuple[str, ...] | None = None,
             folder: str = "") -> tuple[Script, ...]:
    """Every sbatch script (of `stages`, default all), rendered by the function `submit` uses (`slurm.script`),
    parents as placeholders; under `folder/` when given (a campaign member's)."""
    paths = paths or _placeholder_paths(plan.spec)
    placeholders = {s.name: [f"${{{s.name.upper().replace('-', '_')}_JOB_ID}}"] for s in plan.stages}
    return tuple(Script(f"{folder}{i:02d}-{s.name}{f'-{k}' if len(s.chunks) > 1 else ''}.sbatch", s.name,
                        slurm.script(plan, s, paths, placeholders, k))
                 for i, s in enumerate(plan.stages) if stages is None or s.name in stages
                 for k in range(len(s.chunks)))


@dataclass(frozen=True)
class CampaignView:
    """What `harness plan` shows for a sweep: the first member's view, the members and the jobs they share."""

    campaign: campaign.CampaignPlan
    first: PlanView
    member_header: tuple[str, ...]
    member_rows: tuple[tuple[str, ...], ...]
    job_header: tuple[str, ...]
    job_rows: tuple[tuple[str, ...], ...]
    scripts: tuple[Script, ...]
    """Per member under `<member run name>/`; the shared stages only in their owner's folder."""


def campaign_view(expanded: sweep.Expanded, gathered: list[Gathered]) -> CampaignView:
    cp = campaign.build(expanded, [g.facts for g in gathered])
    first = view(expanded.members[0].spec, gathered[0])
    rows, scripts = list[tuple[str, ...]](), list[Script]()
    for m in cp.members:
        owner = cp.members[m.owner]
        data = "prepares its own" if owner is m else f"member {owner.member.index}'s ({owner.member.name})"
        values = ", ".join(f"{k}={overrides.toml_text(v)}" for k, v in m.member.varied)
        rows.append((str(m.member.index), m.member.name, values, data))
        paths = _placeholder_paths(m.plan.spec, gathered[m.owner].cache)
        if owner is not m:
            paths = replace(paths, shared=_placeholder_paths(owner.plan.spec).root)
        scripts += _scripts(m.plan, paths, tuple(s.name for s in m.stages), f"{m.member.name}/")
    jobs = tuple((stage, str(calls), whom) for stage, calls, whom in cp.jobs(_cached(cp, gathered)))
    return CampaignView(cp, first, ("member", "run name", "values", "data (stage-assets, tokenize, merge)"),
                        tuple(rows), ("stage", "sbatch calls", "for"), jobs, tuple(scripts))


def _cached(cp: campaign.CampaignPlan, gathered: list[Gathered]) -> dict[int, str]:
    """Owner -> why its tokenize and merge are not submitted: its token-cache entry is reused or another run
    builds it, or an earlier member of this campaign builds the same key (the later ones wait on that build)."""
    out, builders = {}, dict[str, int]()
    for o in cp.owners:
        use = gathered[o].cache
        if use is None:
            continue
        if use.mode != "build":
            out[o] = use.line().removeprefix("tokenize: ")
        elif use.key in builders:
            out[o] = f"waits on member {builders[use.key] + 1}'s build of cache entry {use.key16}"
        else:
            builders[use.key] = o
    return out

