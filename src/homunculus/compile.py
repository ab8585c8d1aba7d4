"""The compiler driver: plan -> candidates -> search -> best pipeline -> artefacts -> verification.

Artefacts are written to a staging directory beside OUT and moved into place only after the
executable twin has agreed with the quantised model on every test sample (and the vendor P4
compiler, when one runs, has accepted the program: see toolchain_hook.py), so a failed compile
never leaves a half-written OUT (the search database stays in OUT so ``--resume`` works).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from homunculus.data.dataset import Dataset
from homunculus.errors import NotSupportedError, VerificationError
from homunculus.frontend.plan import Plan
from homunculus.ir.names import sanitise_identifier
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.ir.quantised import to_json
from homunculus.ir.serialize import compiled_to_json
from homunculus.models.base import all_families
from homunculus.progress import search_progress
from homunculus.report.render import write_report
from homunculus.report.summary import (
    candidates_section,
    confusion,
    resources_section,
    trial_rows,
)
from homunculus.search.candidates import allowed_or_raise, known_families, select_candidates
from homunculus.search.metrics import NEEDS_POSITIVE, score
from homunculus.search.problem import (
    Evaluation,
    Problem,
    evaluate,
    make_problem,
    merge_budget,
)
from homunculus.search.study import Budget, open_study, run_search
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


@dataclass
class CompileResult:
    out_dir: Path
    family: str
    params: dict[str, Any]
    metrics: dict[str, float]
    report: dict[str, Any] = field(repr=False)


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


def make_target_and_limits(plan: Plan) -> tuple[Target, Limits]:
    try:
        target, limits = make_target(plan.platform.target, plan.platform.profile)
    except KeyError as exc:
        raise plan.error("platform.profile", str(exc.args[0])) from None
    try:
        target = with_adapt(target, plan.adapt)
    except KeyError as exc:
        raise plan.error("adapt", str(exc.args[0])) from None
    c = plan.platform.constraints
    wanted = {**c.resources.model_dump(exclude_none=True),
              **c.performance.model_dump(exclude_none=True)}
    return target, limits.merged(wanted)


def build_problem(plan: Plan, seed: int) -> tuple[Problem, list[str] | None]:
    requested = check_algorithms(plan)
    dataset = plan.load_data()
    target, limits = make_target_and_limits(plan)
    problem = make_problem(dataset, target, limits, plan.model.metric,
                           positive_class(plan, dataset), verdict_plan(plan, dataset), seed,
                           plan.search.validation_fraction, plan.select_features,
                           plan.search.cv_folds)
    return problem, requested


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
        "features": [{"name": f.name, "width": f.width, "field": f.field}
                     for f in dataset.features],
        "class_labels": list(dataset.class_labels),
        "winner_to_class": list(ev.trained.winner_to_class or range(dataset.n_classes)),
        "model": to_json(ev.trained.quantised),
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


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move ``staging`` to ``out_dir``, replacing what was there."""
    backup = None
    if out_dir.exists():
        backup = out_dir.with_name(f".{out_dir.name}.old")
        if backup.exists():
            shutil.rmtree(backup)
        out_dir.rename(backup)
    staging.rename(out_dir)
    if backup is not None:
        shutil.rmtree(backup)


# ----------------------------------------------------------------------------- driver


def compile_plan(plan: Plan, options: CompileOptions) -> CompileResult:
    """Compile ``plan`` into ``options.out_dir``; see the module docstring."""
    if plan.n_models != 1:
        raise NotSupportedError("schedules of more than one model are not supported yet")
    seed = plan.search.seed if options.seed is None else options.seed
    problem, requested = build_problem(plan, seed)
    hook = resolve_hook(plan, problem.target, options.p4c, options.p4c_timeout)
    program = sanitise_identifier(plan.name, "hmn")
    oracle = None
    if options.toolchain_feasibility or plan.search.toolchain_feasibility:
        oracle = make_oracle(hook, program, problem.limits)
    candidates, allowed = choose_candidates(problem, requested)
    budget = Budget(options.trials if options.trials is not None else plan.search.trials,
                    options.seconds if options.seconds is not None else plan.search.seconds)
    out_dir = options.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    objectives = tuple(plan.model.objectives)
    study = open_study(out_dir / "study.db", sanitise_identifier(plan.name, "study"), objectives,
                       plan.search.sampler, seed, budget, options.resume)
    with search_progress(budget.trials, plan.model.metric, options.progress) as progress:
        result = run_search(problem, allowed, objectives, budget, study, progress, oracle)
    best = result.best_trial
    family = best.params["family"]
    params = {k: v for k, v in best.params.items() if k != "family"}
    ev = evaluate(problem, family, params)  # trained on the whole training set
    problem = ev.problem  # restricted to the chosen features when the search selects them
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.staging."))
    try:
        problem.target.emit(ev.pipeline, staging, program)
        (staging / "pipeline.json").write_text(json.dumps(compiled_to_json(ev.pipeline)) + "\n")
        expected, produced = verify(problem, ev, staging)
        toolchain = check_final_program(hook, staging, program, ev.usage, problem.limits,
                                        getattr(problem.target, "profile", None))
        write_model(staging, ev, problem.dataset, problem.verdict)
        packet_check = verify_packets(staging, problem.dataset, problem.target)
        report = build_report(plan, problem, ev, result, candidates, expected, produced, seed)
        report["packet_simulation"] = packet_check
        report["traffic"] = traffic_section(problem.dataset)
        report["toolchain"] = toolchain
        label_resources(report["resources"], toolchain)
        (staging / "resources.json").write_text(json.dumps(report["resources"], indent=1) + "\n")
        write_report(staging, report)
        shutil.copy2(out_dir / "study.db", staging / "study.db")
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return CompileResult(out_dir, family, params, report["metrics"], report)


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


def build_report(plan: Plan, problem: Problem, ev: Evaluation, result: Any,
                 candidates: list[Any], expected: np.ndarray, produced: np.ndarray,
                 seed: int) -> dict[str, Any]:
    ds = problem.dataset
    y = ds.y_test

    def metric_of(pred: np.ndarray) -> float:
        return score(problem.metric, y, pred, ds.n_classes, problem.positive)

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
            "test_samples": len(y),
        },
        "trials": rows,
        "best_trial": result.best_trial.number,
        "confusion_matrix": confusion(y, produced, ds.class_labels),
        "resources": resources_section(ev.usage, problem.limits, ev.feasibility,
                                       problem.target.name),
        "candidates": candidates_section(candidates),
        "search": {"trials": len(rows), "infeasible": sum(not r["feasible"] for r in rows),
                   "seconds": result.seconds, "sampler": plan.search.sampler, "seed": seed,
                   "objectives": list(plan.model.objectives)},
        "profile": profile_of(problem.target),
    }
