"""The compiler driver: plan -> candidates -> search -> best pipeline -> artefacts -> verification.

Everything a compile writes, its search study included, goes to a workspace beside OUT that
replaces OUT in one atomic rename only after the executable twin has agreed with the quantised
model on every test sample (and the vendor P4 compiler, when one runs, has accepted the
program: see toolchain_hook.py). A failed or killed compile leaves the previous OUT exactly as
it was (see outputs.py), and OUT is locked for the length of a compile. All checks of the spec
and the data run before the search starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from homunculus.data.dataset import Dataset
from homunculus.errors import InfeasibleError, NotSupportedError, SpecError, VerificationError
from homunculus.faults import checkpoint
from homunculus.frontend.plan import Plan
from homunculus.frontend.spec import MAX_SEED
from homunculus.ir.names import sanitise_identifier
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.ir.quantised import to_json
from homunculus.ir.serialize import compiled_to_json
from homunculus.models.base import all_families
from homunculus.outputs import check_out_dir, open_output
from homunculus.progress import search_progress
from homunculus.report.render import write_report
from homunculus.report.summary import (
    candidates_section,
    confusion,
    resources_section,
    trial_rows,
)
from homunculus.search.candidates import allowed_or_raise, known_families, select_candidates
from homunculus.search.distributed import (
    Shared,
    Work,
    check_settings,
    counted_trials,
    join_shared,
    open_coordinated,
    process_seed,
    run_shared,
    snapshot,
    stored_settings,
    with_sampler,
)
from homunculus.search.metrics import NEEDS_POSITIVE, score
from homunculus.search.problem import (
    DECIDE_PARAM,
    Evaluation,
    Problem,
    decided,
    decision_choices,
    evaluate,
    make_problem,
    max_table_entries,
    merge_budget,
)
from homunculus.search.study import (
    Budget,
    SearchResult,
    choose_best,
    directions,
    make_objective,
    make_sampler,
    open_study,
    pick_best,
    run_search,
    shipped_configuration,
    table_space,
    trial_index,
    warm_features,
    warm_start,
)
from homunculus.targets.base import Limits, Target
from homunculus.targets.registry import make_target, with_adapt
from homunculus.toolchain_hook import check_final_program, make_oracle, resolve_hook


@dataclass(frozen=True)
class CompileOptions:
    out_dir: Path
    trials: int | None = None  # None: the spec's budget
    seconds: float | None = None
    resume: bool = False
    seed: int | None = None
    progress: bool = True
    p4c: str | None = None  # the P4 compiler to run (overrides platform.toolchain and PATH)
    p4c_timeout: float | None = None  # seconds per compiler run (None: the hook's default)
    toolchain_feasibility: bool = False  # the compiler judges each trial (also search.*)
    inputs: tuple[Path, ...] = ()  # files the compile reads (OUT may not contain them)
    shared: Shared | None = None  # a study shared with workers (--storage, --study)


@dataclass(frozen=True)
class WorkerOptions:
    """``homunculus worker``: the shared study to join and how long to wait for it."""

    shared: Shared
    wait_s: float = 60.0
    progress: bool = True
    p4c: str | None = None
    p4c_timeout: float | None = None


@dataclass
class CompileResult:
    out_dir: Path
    family: str
    params: dict[str, Any]
    metrics: dict[str, float]
    report: dict[str, Any] = field(repr=False)
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- plan checks


def class_index(plan: Plan, dataset: Dataset, label: str, field_path: str) -> int:
    if label not in dataset.class_labels:
        raise plan.error(field_path, f"class '{label}' is not a label of the data "
                                     f"(labels: {list(dataset.class_labels)})")
    return dataset.class_labels.index(label)


def positive_class(plan: Plan, dataset: Dataset) -> int | None:
    coi = plan.model.class_of_interest
    if coi is not None:
        return class_index(plan, dataset, coi, "model.class_of_interest")
    if plan.model.metric in NEEDS_POSITIVE:
        if dataset.n_classes != 2:
            raise plan.error("model.class_of_interest", f"metric '{plan.model.metric}' needs a "
                             "class_of_interest when there are more than two classes")
        return 1
    return None


def verdict_plan(plan: Plan, dataset: Dataset) -> VerdictPlan:
    v = plan.model.verdict
    return VerdictPlan(
        kind=VerdictKind(v.kind), default_port=v.default_port,
        ports={class_index(plan, dataset, k, f"model.verdict.ports.{k}"): p
               for k, p in v.ports.items()},
        drop=frozenset(class_index(plan, dataset, k, "model.verdict.drop") for k in v.drop),
        dscp={class_index(plan, dataset, k, f"model.verdict.dscp.{k}"): d
              for k, d in v.dscp.items()},
    )


def check_algorithms(plan: Plan) -> list[str] | None:
    requested = plan.model.algorithms
    if requested is None:
        return None
    known = known_families()
    for i, name in enumerate(requested):
        if name not in known:
            raise plan.error(f"model.algorithms[{i}]",
                             f"unknown algorithm family '{name}'; known families: {known}")
    if not requested:
        raise plan.error("model.algorithms", "the list of algorithm families is empty")
    return list(requested)


def check_seed(plan: Plan, seed: int, from_cli: bool) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        where = "--seed" if from_cli else "search.seed"
        raise plan.error("search.seed", f"{where} is {seed!r}; a seed is an integer in "
                                        f"0..{MAX_SEED}")
    return seed


def check_header_mix(plan: Plan, dataset: Dataset, target: Target) -> None:
    """A switch or XDP program parses TCP or UDP, and the feature header rides on UDP: features
    cannot need TCP fields together with UDP fields or unbound (feature-header) features."""
    if target.name == "c":
        return  # the C library takes feature vectors, not packets
    section = "data" if dataset.traffic is None else "traffic"
    tcp = [i for i, f in enumerate(dataset.features) if (f.field or "").startswith("tcp.")]
    other = [i for i, f in enumerate(dataset.features)
             if (f.field or "").startswith("udp.") or (f.field is None and f.kind is None)]
    if tcp and other:
        a, b = dataset.features[tcp[0]], dataset.features[other[0]]
        what = f"UDP field {b.field}" if b.field else "no header field (it rides in the " \
                                                      "feature header, after UDP)"
        raise plan.error(f"{section}.features[{other[0]}]" if section == "data" else
                         f"{section}.features",
                         f"feature '{a.name}' reads TCP field {a.field} but feature '{b.name}' "
                         f"has {what}; no packet carries both: bind the features to fields of "
                         "one transport protocol")


def make_target_and_limits(plan: Plan) -> tuple[Target, Limits]:
    try:
        target, limits = make_target(plan.platform.target, plan.platform.profile)
    except (KeyError, ValueError) as exc:
        raise plan.error("platform.profile", str(exc.args[0])) from None
    try:
        target = with_adapt(target, plan.adapt)
    except KeyError as exc:
        message = str(exc.args[0])
        field = "adapt.sampling" if message.startswith("adapt.sampling") else "adapt"
        raise plan.error(field, message) from None
    c = plan.platform.constraints
    wanted = {**c.resources.model_dump(exclude_none=True),
              **c.performance.model_dump(exclude_none=True)}
    return target, limits.merged(wanted)


def check_categorical(plan: Plan, dataset: Dataset, target: Target, limits: Limits) -> None:
    """A categorical feature promises values a table can enumerate: one with more distinct
    training values than the largest table the target holds under the limits is ruled out
    before the search (declare it numeric, or coarsen it)."""
    cap = max_table_entries(target, limits)
    for i, f in enumerate(dataset.features):
        if not f.categorical:
            continue
        distinct = len(np.unique(dataset.x_train[:, i]))
        if distinct > cap:
            bound = ("resources.entries" if limits.entries is not None and limits.entries == cap
                     else f"the {target.name} target")
            raise plan.error(plan.feature_path(i) + ".categorical",
                             f"categorical feature '{f.name}' has {distinct:,} distinct values "
                             f"in the training data, more than any exact-match table can hold "
                             f"here ({cap:,} entries: {bound}); declare it numeric, or coarsen "
                             "it")


def build_problem(plan: Plan, seed: int) -> tuple[Problem, list[str] | None]:
    """Every check of the spec and the data, then the search problem (before any search)."""
    requested = check_algorithms(plan)
    target, limits = make_target_and_limits(plan)
    dataset = plan.load_data()
    check_header_mix(plan, dataset, target)
    check_categorical(plan, dataset, target, limits)
    try:
        problem = make_problem(dataset, target, limits, plan.model.metric,
                               positive_class(plan, dataset), verdict_plan(plan, dataset), seed,
                               plan.search.validation_fraction, plan.select_features,
                               plan.search.cv_folds)
    except ValueError as exc:
        folds = plan.search.cv_folds
        field = "search.cv_folds" if folds not in (None, 1) else "search.validation_fraction"
        raise plan.error(field, f"cannot split {len(dataset.y_train)} training rows into "
                                f"validation folds (cv_folds {folds}, validation_fraction "
                                f"{plan.search.validation_fraction:g}): {exc}") from None
    return problem, requested


def search_settings(problem: Problem, allowed: list[str]) -> dict[str, Any]:
    """What a stored search depends on besides its seed: a study continued or joined by a
    worker must match it (the data by a digest of the training rows and folds)."""
    ds = problem.dataset
    digest = hashlib.sha256()
    arrays = [ds.x_train, ds.y_train, *(rows for fold in problem.folds for rows in fold)]
    for arr in arrays:
        digest.update(repr((arr.shape, arr.dtype.str)).encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    digest.update(json.dumps(list(ds.class_labels)).encode())
    v = problem.verdict
    settings = {
        "families": list(allowed), "metric": problem.metric, "positive": problem.positive,
        "features": [[f.name, f.width, f.field, f.kind] for f in ds.features],
        "select_features": problem.select_features, "target": problem.target.name,
        "profile": profile_of(problem.target), "limits": problem.limits.as_dict(),
        "verdict": {"kind": v.kind.value, "default_port": v.default_port,
                    "ports": sorted(v.ports.items()), "drop": sorted(v.drop),
                    "dscp": sorted(v.dscp.items())},
        "data": digest.hexdigest()[:24],
    }
    return json.loads(json.dumps(settings, default=str))  # as the study stores it


def choose_candidates(problem: Problem, requested: list[str] | None
                      ) -> tuple[list[Any], list[str]]:
    """Candidate selection as the compiler runs it: (all verdicts, the allowed families)."""
    candidates = select_candidates(requested, problem.dataset, problem.target, problem.limits,
                                   problem.verdict, merge_budget(problem),
                                   problem.select_features)
    return candidates, allowed_or_raise(candidates)


# ----------------------------------------------------------------------------- artefacts


def verdict_json(plan: VerdictPlan) -> dict[str, Any]:
    """The verdict plan by class index (what a retrained model must act the same way on)."""
    return {"kind": plan.kind.value, "default_port": plan.default_port,
            "ports": {str(k): v for k, v in plan.ports.items()}, "drop": sorted(plan.drop),
            "dscp": {str(k): v for k, v in plan.dscp.items()}}


def verdict_from_json(data: dict[str, Any]) -> VerdictPlan:
    return VerdictPlan(VerdictKind(data["kind"]), int(data["default_port"]),
                       {int(k): int(v) for k, v in data["ports"].items()},
                       frozenset(int(c) for c in data["drop"]),
                       {int(k): int(v) for k, v in data["dscp"].items()})


def write_model(out: Path, ev: Evaluation, dataset: Dataset,
                verdict: VerdictPlan | None = None) -> None:
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(ev.trained.float_model, model_dir / "float_model.joblib")
    quantised = {
        "family": ev.family,
        "params": ev.params,
        "features": [{"name": f.name, "width": f.width, "field": f.field,
                      "categorical": f.categorical} for f in dataset.features],
        "class_labels": list(dataset.class_labels),
        "winner_to_class": list(ev.trained.winner_to_class or range(dataset.n_classes)),
        "model": to_json(ev.trained.quantised),
        "category_table": None if ev.trained.shortcut is None else ev.trained.shortcut.as_json(),
        "decide_at": int(ev.params.get(DECIDE_PARAM, 0) or 0),
        "verdict": None if verdict is None else verdict_json(verdict),
        "seed": ev.problem.seed,
        "traffic": None if dataset.traffic is None else {
            "features": [asdict(f) for f in dataset.traffic.features],
            "config": asdict(dataset.traffic.config)},
    }
    (model_dir / "quantised.json").write_text(json.dumps(quantised, indent=1) + "\n")


def verify_packets(out: Path, dataset: Dataset, target: Target) -> dict[str, Any] | None:
    """For traffic compiles: the whole data plane (flow registers included) over every packet of
    the capture must agree with the model on reference features (not for C: it takes features)."""
    if dataset.traffic is None or dataset.traffic.table is None or target.name == "c":
        return None
    from homunculus.simulate import simulate_capture

    return simulate_capture(out, dataset.traffic.table).as_dict()


def verify(problem: Problem, ev: Evaluation, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Run the twin on the written entries over the test set; raise unless it agrees 100%."""
    x = problem.dataset.x_test
    expected = ev.trained.predict_quantised(x)
    produced = problem.target.run_twin(ev.pipeline, out, x).class_index
    bad = np.nonzero(expected != produced)[0]
    if len(bad):
        i = int(bad[0])
        raise VerificationError(
            f"the generated pipeline disagrees with the quantised model on {len(bad)} of "
            f"{len(x)} test samples (first: row {i}, features {x[i].tolist()}, model class "
            f"{expected[i]}, pipeline class {produced[i]})")
    return expected, produced


# ----------------------------------------------------------------------------- driver


def compile_plan(plan: Plan, options: CompileOptions) -> CompileResult:
    """Compile ``plan`` into ``options.out_dir``; see the module docstring."""
    if plan.n_models != 1:
        raise NotSupportedError("schedules of more than one model are not supported yet")
    seed = check_seed(plan, plan.search.seed if options.seed is None else options.seed,
                      options.seed is not None)
    budget = Budget(options.trials if options.trials is not None else plan.search.trials,
                    options.seconds if options.seconds is not None else plan.search.seconds)
    if options.shared is not None and options.resume:
        raise SpecError("--resume continues the study kept in OUT; a --storage study is always "
                        "continued when it exists: drop --resume")
    out_dir = check_out_dir(options.out_dir, [*plan.inputs, *options.inputs])
    with open_output(out_dir) as output:
        output.start(options.resume)
        problem, requested = build_problem(plan, seed)
        hook = resolve_hook(plan, problem.target, options.p4c, options.p4c_timeout)
        program = sanitise_identifier(plan.name, "hmn")
        judged = options.toolchain_feasibility or plan.search.toolchain_feasibility
        oracle = make_oracle(hook, program, problem.limits) if judged else None
        candidates, allowed = choose_candidates(problem, requested)
        objectives = tuple(plan.model.objectives)
        if options.shared is not None:
            settings = shared_settings(plan, problem, allowed, seed, judged)
            result = coordinate(plan, problem, allowed, budget, settings, oracle, options)
        else:
            settings = {**search_settings(problem, allowed), "toolchain_feasibility": judged}
            study = open_study(output.study_path, sanitise_identifier(plan.name, "study"),
                               objectives, plan.search.sampler, seed, budget,
                               output.resumed is not None, settings,
                               missing_ok=output.resumed == "partial")
            with search_progress(budget.trials, plan.model.metric, options.progress) as progress:
                result = run_search(problem, allowed, objectives, budget, study, progress,
                                    oracle)
        best = result.best_trial
        family, params = shipped_configuration(best)
        ev = evaluate(problem, family, params)  # trained on the whole training set
        shared = None if options.shared is None else shared_section(options.shared,
                                                                     result.trials)
        report = write_artefacts(output.work, plan, ev, result, candidates, seed, hook, program,
                                 shared)
        if options.shared is not None:
            output.study_path.unlink(missing_ok=True)
            snapshot(result.study, output.study_path)  # a record of the shared search
        warnings = output.commit()
    left = [f"files added to {out_dir} during the compile were left in "
            f"{output.paths.partial}: {', '.join(warnings[:5])}"] if warnings else []
    return CompileResult(out_dir, family, params, report["metrics"], report, left)


def write_artefacts(work: Path, plan: Plan, ev: Evaluation, result: Any, candidates: list[Any],
                    seed: int, hook: Any, program: str,
                    shared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Emit, verify (twin, then the vendor compiler if one runs) and report the chosen pipeline
    into the workspace; the report (``shared``: the account of a shared search)."""
    problem = ev.problem  # restricted to the chosen features when the search selects them
    problem.target.emit(ev.pipeline, work, program)
    (work / "pipeline.json").write_text(json.dumps(compiled_to_json(ev.pipeline)) + "\n")
    checkpoint("final-write")
    expected, produced = verify(problem, ev, work)
    toolchain = check_final_program(hook, work, program, ev.usage, problem.limits,
                                    getattr(problem.target, "profile", None))
    write_model(work, ev, problem.dataset, problem.verdict)
    packet_check = verify_packets(work, problem.dataset, problem.target)
    report = build_report(plan, problem, ev, result, candidates, expected, produced, seed)
    report["packet_simulation"] = packet_check
    if shared is not None:
        report["search"]["shared"] = shared
    report["traffic"] = traffic_section(problem.dataset)
    report["toolchain"] = toolchain
    label_resources(report["resources"], toolchain)
    (work / "resources.json").write_text(json.dumps(report["resources"], indent=1) + "\n")
    write_report(work, report)
    return report


# ----------------------------------------------------------------------------- shared search


def shared_settings(plan: Plan, problem: Problem, allowed: list[str], seed: int,
                    judged: bool) -> dict[str, Any]:
    """Everything a worker must agree on with the coordinator (the data included)."""
    return {**search_settings(problem, allowed), "seed": seed, "sampler": plan.search.sampler,
            "objectives": list(plan.model.objectives), "toolchain_feasibility": judged}


def coordinate(plan: Plan, problem: Problem, allowed: list[str], budget: Budget,
               settings: dict[str, Any], oracle: Any, options: CompileOptions) -> SearchResult:
    """Create or continue the shared study, run trials beside the workers until the budget is
    counted, and return the study's best trial."""
    assert options.shared is not None
    objectives = tuple(plan.model.objectives)
    tables, decisions = table_space(problem), decision_choices(problem)
    study = open_coordinated(options.shared, settings, directions(objectives), budget.trials,
                             budget.seconds,
                             lambda st: warm_start(st, allowed, budget, tables, decisions,
                                                   warm_features(problem),
                                                   len(problem.dataset.features),
                                                   problem.limits.entries))
    sampler = make_sampler(plan.search.sampler, process_seed(settings["seed"]), budget.trials,
                           concurrent=True)
    study = with_sampler(study, options.shared, sampler)
    with search_progress(budget.trials, plan.model.metric, options.progress) as progress:
        work = run_shared(study, make_objective(problem, allowed, objectives, oracle),
                          progress.record)
    trials = counted_trials(study)
    return SearchResult(study, pick_best(trials, objectives, problem.cv_ratio), work.seconds,
                        trials)


def shared_section(shared: Shared, trials: list[Any]) -> dict[str, Any]:
    """The report's account of a shared search: where, and which processes ran its trials."""
    workers: dict[str, int] = {}
    for t in trials:
        name = str(t.user_attrs.get("worker", "?"))
        workers[name] = workers.get(name, 0) + 1
    retried = sum(1 for t in trials if "failed_trial" in t.system_attrs)
    return {"storage": shared.storage.shown, "study": shared.study, "workers": workers,
            "retried": retried}


def work_plan(plan: Plan, options: WorkerOptions) -> Work:
    """``homunculus worker``: join the shared study, check that this spec and data are the ones
    it was made from, and run its trials until the budget is counted."""
    if not isinstance(plan, Plan) or plan.n_models != 1:
        raise SpecError("a shared search runs one model on one platform: schedules and chains "
                        "are searched by 'homunculus compile' alone (without --storage)",
                        file=getattr(plan, "source", None))
    study = join_shared(options.shared, options.wait_s)
    stored = stored_settings(study)
    seed = stored.get("seed")
    if not isinstance(seed, int):
        raise SpecError(f"study '{options.shared.study}' holds no seed: it was not made by "
                        "homunculus compile --storage")
    problem, requested = build_problem(plan, seed)
    hook = resolve_hook(plan, problem.target, options.p4c, options.p4c_timeout)
    judged = bool(stored.get("toolchain_feasibility"))
    oracle = make_oracle(hook, sanitise_identifier(plan.name, "hmn"), problem.limits) \
        if judged else None
    _, allowed = choose_candidates(problem, requested)
    check_settings(study, shared_settings(plan, problem, allowed, seed, judged), options.shared,
                   "worker")
    objectives = tuple(plan.model.objectives)
    trials = study.user_attrs.get("homunculus_shared", {}).get("trials")
    sampler = make_sampler(plan.search.sampler, process_seed(seed), trials, concurrent=True)
    study = with_sampler(study, options.shared, sampler)
    with search_progress(trials, plan.model.metric, options.progress) as progress:
        return run_shared(study, make_objective(problem, allowed, objectives, oracle),
                          progress.record)


def label_resources(resources: dict[str, Any], toolchain: dict[str, Any]) -> None:
    """Say that the resource figures are estimates; put the compiler's beside them."""
    resources["basis"] = "estimated"
    real = toolchain.get("resources") if toolchain.get("ran") else None
    resources["real"] = None if real is None else {
        "tool": toolchain["tool"],
        **{k: real[k] for k in ("stages", "tables", "sram_kbit", "tcam_kbit", "sram_blocks",
                                "tcam_blocks")}}
    resources["note"] = toolchain.get("note") or (
        f"Estimated by Homunculus; {toolchain['tool']} accepted the program"
        + ("; its own figures are under 'real'." if real is not None else
           " (it reports no resource figures)."))


def profile_of(target: Target) -> dict[str, Any]:
    profile = getattr(target, "profile", None)
    if profile is None:
        return {"target": target.name}
    return profile.as_dict() if hasattr(profile, "as_dict") else asdict(profile)


def traffic_section(dataset: Dataset) -> dict[str, Any] | None:
    info = dataset.traffic
    if info is None:
        return None
    return {"packets": info.packets, "samples": info.samples, "labels": info.label_counts,
            "split": info.split, "ingest": info.ingest,
            "flow": asdict(info.config), "features": [asdict(f) for f in info.features]}


def selection_of(trials: list[Any], plan: Plan, problem: Problem) -> str | None:
    """How the shipped configuration was chosen among the trials (None without trials)."""
    try:
        return choose_best(trials, tuple(plan.model.objectives), problem.cv_ratio)[1]
    except InfeasibleError:
        return None


def cv_section(problem: Problem, ev: Evaluation) -> dict[str, Any]:
    """The trial metric of the shipped configuration: the folds' mean and spread, and how the
    folds were drawn (the model that ships is the refit on the whole training set)."""
    folds = np.asarray(ev.fold_metrics, dtype=float)
    return {"metric": ev.metric, "mean": float(folds.mean()) if len(folds) else None,
            "std": float(folds.std(ddof=1)) if len(folds) > 1 else 0.0, "folds": len(folds),
            "scheme": problem.fold_scheme}


def category_section(ds: Dataset, ev: Evaluation) -> dict[str, Any] | None:
    """The hybrid's exact-match table: its feature, entries, and the test rows it decides."""
    table = ev.trained.shortcut
    if table is None:
        return None
    hit, _ = table.lookup(ds.x_test)
    return {"feature": ds.features[table.feature].name, "entries": len(table),
            "size_knob": ev.params.get("cat_table"), "support": ev.params.get("cat_support"),
            "test_rows_decided": float(hit.mean()) if len(hit) else 0.0}


def per_class_f1(y: np.ndarray, pred: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """F1 of each class (one against the rest) on the test set."""
    from sklearn.metrics import f1_score

    values = f1_score(y, pred, labels=list(range(len(labels))), average=None, zero_division=0)
    return {label: float(v) for label, v in zip(labels, values, strict=True)}


def build_report(plan: Plan, problem: Problem, ev: Evaluation, result: Any,
                 candidates: list[Any], expected: np.ndarray, produced: np.ndarray,
                 seed: int) -> dict[str, Any]:
    ds = problem.dataset
    y = ds.y_test

    def applied(pred: np.ndarray) -> np.ndarray:  # with the per-flow decision, if any
        return decided(problem, ev.params, pred, test=True)

    def metric_of(pred: np.ndarray) -> float:
        return score(problem.metric, y, applied(pred), ds.n_classes, problem.positive)

    rows = trial_rows(result.trials)
    return {
        "name": plan.name,
        "target": problem.target.name,
        "metric": problem.metric,
        "class_labels": list(ds.class_labels),
        "family": ev.family,
        "params": ev.params,
        "families": {k: f.description for k, f in all_families().items()},
        "metrics": {
            "float": metric_of(ev.trained.predict_float(ds.x_test)),
            "quantised": metric_of(expected),
            "pipeline": metric_of(produced),
            "agreement": float(np.mean(expected == produced)),
            "validation_quantised": ev.metric,
            "cv_folds": [round(m, 6) for m in ev.fold_metrics],
            "cv": {**cv_section(problem, ev),
                   "selection": selection_of(result.trials, plan, problem)},
            "test_samples": len(y),
            "per_class_f1": per_class_f1(y, applied(produced), ds.class_labels),
            "decide_at": int(ev.params.get(DECIDE_PARAM, 0) or 0),
        },
        "category_table": category_section(ds, ev),
        "trials": rows,
        "best_trial": trial_index(result.best_trial),
        "confusion_matrix": confusion(y, applied(produced), ds.class_labels),
        "resources": resources_section(ev.usage, problem.limits, ev.feasibility,
                                       problem.target.name),
        "candidates": candidates_section(candidates),
        "search": {"trials": len(rows), "infeasible": sum(not r["feasible"] for r in rows),
                   "seconds": result.seconds, "sampler": plan.search.sampler, "seed": seed,
                   "objectives": list(plan.model.objectives)},
        "profile": profile_of(problem.target),
    }
