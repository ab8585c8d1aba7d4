"""Each model of a schedule: its data (with upstream classes), its search, its front of variants.

A model is searched on its own data against the device it shares (every variant must fit the
device alone), multi-objectively: its metric against the resources that bind there (stages and
TCAM on a switch, latency on a host). Its front (feasible variants no other variant beats on the
metric without using more of some resource) is thinned to at most ``k`` variants spread over the
metric, and each is rebuilt (its training is seeded, so it is the trial's model) for the joint
allocation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from homunculus.compile import (
    check_algorithms,
    choose_candidates,
    positive_class,
    verdict_plan,
)
from homunculus.data.dataset import Dataset, FeatureDecl
from homunculus.frontend.schedule_plan import CLASS_KIND, ModelPlan
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.pipeline import Pipeline, bits_for
from homunculus.models.base import TrainedModel, get_family
from homunculus.search.problem import (
    MERGE_PARAM,
    Problem,
    build_pipeline,
    chosen_features,
    make_problem,
)
from homunculus.search.study import (
    Budget,
    SearchResult,
    open_study,
    run_search,
    shipped_configuration,
)
from homunculus.targets.base import Feasibility, Limits, Target, Usage, assess

SWITCH_OBJECTIVES = ("metric", "stages", "tcam_kbit")
CPU_OBJECTIVES = ("metric", "latency_ns")
FRONT_KEYS = ("stages", "tables", "sram_kbit", "tcam_kbit", "entries", "phv_bits",
              "latency_ns")


@dataclass
class Built:
    """One configuration of a model, trained on the whole training set and lowered."""

    family: str
    params: dict[str, Any]
    trained: TrainedModel
    pipeline: Pipeline | CpuProgram
    usage: Usage
    feasibility: Feasibility
    problem: Problem  # as built (restricted to its features when the search selects them)
    metric: float  # the search's cross-validated metric for this configuration
    trial: int


@dataclass
class Searched:
    """A model after its search: its problem, the search, the best variant and the front."""

    plan: ModelPlan
    problem: Problem
    candidates: list[Any]
    result: SearchResult
    best: Built
    front: list[Built]
    objectives: tuple[str, ...]


def objectives_for(plan: ModelPlan, target: Target) -> tuple[str, ...]:
    if len(plan.model.objectives) > 1:
        return tuple(plan.model.objectives)
    return CPU_OBJECTIVES if getattr(target, "lowering", "tables") == "cpu" \
        else SWITCH_OBJECTIVES


UpstreamRows = dict[str, tuple[tuple[str, ...], np.ndarray]]
"""Upstream model -> its features' names and values on this model's test rows."""


def with_class_features(plan: ModelPlan, dataset: Dataset,
                        upstream: dict[str, tuple[Dataset, TrainedModel]]
                        ) -> tuple[Dataset, UpstreamRows]:
    """``dataset`` with each upstream class appended as a feature, computed by the upstream
    model (its best variant) from its features on this model's rows; and those features' values
    on the test rows (the verification composes rows from them)."""
    rows: UpstreamRows = {}
    if not plan.class_features:
        return dataset, rows
    x_train, x_test = dataset.x_train, dataset.x_test
    decls = list(dataset.features)
    traffic = dataset.traffic
    for c in plan.class_features:
        up_data, up_model = upstream[c.model]
        need = bits_for(max(up_data.n_classes - 1, 1))
        if c.width < need:
            raise plan.error(c.field_path, f"feature '{c.name}' holds the class of '{c.model}' "
                                           f"({up_data.n_classes} classes): it needs {need} "
                                           f"bits, not {c.width}")
        assert plan.upstream_values is not None
        up_train, up_test = plan.upstream_values(dataset, up_data)
        rows[c.model] = (tuple(f.name for f in up_data.features), up_test)
        x_train = np.column_stack([x_train, up_model.predict_quantised(up_train)])
        x_test = np.column_stack([x_test, up_model.predict_quantised(up_test)])
        decls.append(FeatureDecl(c.name, c.width))
        if traffic is not None:
            from homunculus.features.library import FeatureDef

            traffic = replace(traffic, features=(*traffic.features,
                                                 FeatureDef(c.name, CLASS_KIND, c.width)))
    return replace(dataset, features=tuple(decls), x_train=x_train.astype(np.int64),
                   x_test=x_test.astype(np.int64), traffic=traffic), rows


def class_feature_index(plan: ModelPlan, dataset: Dataset) -> dict[int, str]:
    """Feature index -> upstream model, for the appended class features."""
    n = len(dataset.features) - len(plan.class_features)
    return {n + i: c.model for i, c in enumerate(plan.class_features)}


def make_model_problem(plan: ModelPlan, dataset: Dataset, target: Target, limits: Limits,
                       seed: int) -> Problem:
    """One model's search problem; without per-flow decisions (a schedule's models classify
    every packet: the program built from a trial has none)."""
    return replace(make_problem(dataset, target, limits, plan.model.metric,
                        positive_class(plan, dataset), verdict_plan(plan, dataset), seed,
                        plan.search.validation_fraction, plan.select_features,
                        plan.search.cv_folds), flow_decisions=False)


def build(problem: Problem, family: str, params: dict[str, Any], metric: float,
          trial: int) -> Built:
    """Train ``family`` with ``params`` on the whole training set and lower it (the same model
    the search's trial built, given its :func:`shipped_configuration`: training is seeded)."""
    chosen = chosen_features(problem, params)
    if len(chosen) < len(problem.dataset.features):
        problem = problem.restricted(chosen)
    ds = problem.dataset
    trained = get_family(family).train(params, ds.x_train, ds.y_train, ds.n_classes, ds.widths,
                                       problem.seed)
    pipeline = build_pipeline(problem, trained, bool(params.get(MERGE_PARAM, False)))
    usage = problem.target.estimate(pipeline)
    return Built(family, params, trained, pipeline, usage, assess(usage, problem.limits),
                 problem, metric, trial)


def front_trials(result: SearchResult, k: int) -> list[Any]:
    """The feasible trials on the front of metric against resource use, at most ``k``."""
    from homunculus.schedule.joint import pareto, spread

    feasible = [t for t in result.trials
                if t.state.name == "COMPLETE" and t.user_attrs.get("feasible")]
    unique: dict[str, Any] = {}
    for t in feasible:  # the same configuration twice (warm start, TPE) counts once
        unique.setdefault(repr(sorted(t.params.items())), t)
    trials = list(unique.values())
    points = [(t.user_attrs["metric"], tuple(float(t.user_attrs["usage"][key])
                                              for key in FRONT_KEYS)) for t in trials]
    keep = pareto(points)
    picks = spread(keep, [p[0] for p in points], k)
    return [trials[i] for i in picks]


def search_model(plan: ModelPlan, index: int, dataset: Dataset, target: Target, limits: Limits,
                 seed: int, budget: Budget, storage: Any, resume: bool, k: int,
                 progress: Any = None) -> Searched:
    """Search one model of a schedule and rebuild its front."""
    from homunculus.ir.names import sanitise_identifier

    requested = check_algorithms(plan)
    problem = make_model_problem(plan, dataset, target, limits, seed)
    candidates, allowed = choose_candidates(problem, requested)
    objectives = objectives_for(plan, target)
    study = open_study(storage, sanitise_identifier(f"{index}_{plan.model.name}", "study"),
                       objectives, plan.search.sampler, seed, budget, resume)
    result = run_search(problem, allowed, objectives, budget, study, progress)
    best_trial = result.best_trial
    family, params = shipped_configuration(best_trial)
    best = build(problem, family, params, best_trial.user_attrs["metric"], best_trial.number)
    front = []
    for t in front_trials(result, k):
        f, p = shipped_configuration(t)
        front.append(best if t.number == best_trial.number else
                     build(problem, f, p, t.user_attrs["metric"], t.number))
    if not any(b is best for b in front):  # the best is always a candidate
        front.insert(0, best)
    return Searched(plan, problem, candidates, result, best, front, objectives)
