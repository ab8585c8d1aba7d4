"""One compile problem and the evaluation of a configuration: train, quantise, lower, cost."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.model_selection import (
    GroupShuffleSplit,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from homunculus.data.dataset import Dataset, select_features
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.dense import QMLP
from homunculus.ir.flow import FlowProgram, lower_flow_features
from homunculus.ir.pipeline import Pipeline, VerdictPlan
from homunculus.models.base import TrainedModel, get_family
from homunculus.passes.lower import lower
from homunculus.passes.lower_cpu import lower_cpu
from homunculus.search.metrics import score
from homunculus.targets.base import Feasibility, Limits, Target, Usage, assess

MERGE_PARAM = "merge_tables"  # design-space knob: fuse lookup tables to save tables/stages


Fold = tuple[np.ndarray, np.ndarray]  # (fit rows, validation rows) of the training set


@dataclass(frozen=True)
class Problem:
    """Everything a trial needs: the training data and its folds, the target, its limits and
    the metric. A trial trains once on the whole training set (the model it would ship: its
    pipeline, resources and feasibility) and once per fold (the cross-validated metric)."""

    dataset: Dataset
    folds: tuple[Fold, ...]
    target: Target
    limits: Limits
    metric: str
    positive: int | None
    verdict: VerdictPlan
    seed: int
    select_features: bool = False  # the feature set is part of the design space

    def restricted(self, indices: list[int]) -> Problem:
        """This problem on a subset of the features."""
        return replace(self, dataset=select_features(self.dataset, indices))


def feature_param(i: int) -> str:
    return f"use_feature_{i}"


def chosen_features(problem: Problem, params: dict[str, Any]) -> list[int]:
    """Indices of the features a configuration uses (all unless the search selects them)."""
    n = len(problem.dataset.features)
    if not problem.select_features:
        return list(range(n))
    return [i for i in range(n) if params.get(feature_param(i), True)]


def default_folds(n_rows: int) -> int:
    """Cross-validation folds by data size, cheap enough to stay the default (1 = holdout): on
    the IoT example (4,200 rows) 3 folds cost 2.0-3.0x the old single 75 % training per trial
    for six of seven families (bench numbers in the issue note)."""
    if n_rows <= 1_000:
        return 5
    if n_rows <= 50_000:
        return 3
    return 1


def make_folds(dataset: Dataset, seed: int, n_folds: int | None = None,
               validation_fraction: float = 0.25) -> tuple[Fold, ...]:
    """Seeded folds of the training set: by group (flow or capture) when the rows carry groups,
    so no flow is on both sides; stratified when every class has enough rows. ``n_folds`` = 1
    is one validation split of ``validation_fraction``."""
    y = dataset.y_train
    n = len(y)
    k = default_folds(n) if n_folds is None else n_folds
    groups = dataset.groups_train
    grouped = groups is not None and len(np.unique(groups)) >= 2
    counts = np.bincount(y, minlength=dataset.n_classes)
    if k == 1 or (grouped and len(np.unique(groups)) < k) or (not grouped and n < 2 * k):
        if grouped:
            splitter = GroupShuffleSplit(n_splits=1, test_size=validation_fraction,
                                         random_state=seed)
            return (next(splitter.split(dataset.x_train, y, groups)),)
        stratify = y if counts[counts > 0].min() >= 2 else None
        fit, val = train_test_split(np.arange(n), test_size=validation_fraction,
                                    random_state=seed, stratify=stratify)
        return ((np.sort(fit), np.sort(val)),)
    if grouped:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return tuple(splitter.split(dataset.x_train, y, groups))
    if counts[counts > 0].min() >= k:
        return tuple(StratifiedKFold(k, shuffle=True, random_state=seed).split(
            dataset.x_train, y))
    return tuple(KFold(k, shuffle=True, random_state=seed).split(dataset.x_train))


def make_problem(dataset: Dataset, target: Target, limits: Limits, metric: str,
                 positive: int | None, verdict: VerdictPlan, seed: int,
                 validation_fraction: float = 0.25, select: bool = False,
                 n_folds: int | None = None) -> Problem:
    """The compile problem; the test set stays unseen (see :func:`make_folds`)."""
    folds = make_folds(dataset, seed, n_folds, validation_fraction)
    return Problem(dataset, folds, target, limits, metric, positive, verdict, seed, select)


@dataclass(frozen=True)
class Evaluation:
    family: str
    params: dict[str, Any]
    trained: TrainedModel
    pipeline: Pipeline | CpuProgram  # the table pipeline (switches) or CPU program (XDP, C)
    usage: Usage
    feasibility: Feasibility
    metric: float  # the quantised model's cross-validated metric (mean over the folds), at most
    # the shipped model's metric on its own training data
    problem: Problem  # the problem as evaluated (restricted to the chosen features)
    fold_metrics: tuple[float, ...] = ()


def merge_budget(problem: Problem) -> int | None:
    """How many lookup tables fit beside the encoders: one stage's tables, within the limit
    (None: no merging, e.g. on CPU targets, which have no tables to merge)."""
    if cpu_lowering(problem.target):
        return None
    caps = [getattr(getattr(problem.target, "profile", None), "tables_per_stage", None)]
    if problem.limits.tables is not None:
        caps.append(problem.limits.tables - len(problem.dataset.features) - 1)
    caps = [c for c in caps if c is not None]
    return max(1, min(caps)) if caps else None


def lower_model(model: Any, dataset: Dataset, verdict: VerdictPlan,
                winner_to_class: tuple[int, ...] | None,
                max_lookup_tables: int | None = None) -> Pipeline:
    """Lower any quantised model: tables for trees and lookup-sum models, a dense stage for MLPs."""
    if isinstance(model, QMLP):
        from homunculus.passes.lower_mlp import lower_mlp

        return lower_mlp(model, dataset.features, dataset.class_labels, verdict, winner_to_class)
    return lower(model, dataset.features, dataset.class_labels, verdict, winner_to_class,
                 max_lookup_tables)


def cpu_lowering(target: Target) -> bool:
    """Whether ``target`` runs the CPU program (passes/lower_cpu.py) rather than tables."""
    return getattr(target, "lowering", "tables") == "cpu"


def lower_for(target: Target, model: Any, dataset: Dataset, verdict: VerdictPlan,
              winner_to_class: tuple[int, ...] | None,
              max_lookup_tables: int | None = None) -> Pipeline | CpuProgram:
    """Lower ``model`` for ``target`` and prepare it: the CPU program for the XDP and C targets,
    the table pipeline (tables merged to ``max_lookup_tables``) for switches."""
    if cpu_lowering(target):
        program = lower_cpu(model, dataset.features, dataset.class_labels, verdict,
                            winner_to_class, flow_program(dataset))
        return target.prepare(program)
    pipeline = lower_model(model, dataset, verdict, winner_to_class, max_lookup_tables)
    return target.prepare(with_flow(pipeline, dataset))


def build_pipeline(problem: Problem, trained: TrainedModel,
                   merge: bool = False) -> Pipeline | CpuProgram:
    """Lower (optionally merging lookup tables to ``merge_budget``) and prepare for the target."""
    return lower_for(problem.target, trained.quantised, problem.dataset, problem.verdict,
                     trained.winner_to_class, merge_budget(problem) if merge else None)


def flow_program(dataset: Dataset) -> FlowProgram | None:
    """The flow-state program when the dataset's features come from packets."""
    if dataset.traffic is None:
        return None
    return lower_flow_features(list(dataset.traffic.features), dataset.traffic.config)


def with_flow(pipeline: Pipeline, dataset: Dataset) -> Pipeline:
    """Attach the flow-state program when the dataset's features come from packets."""
    program = flow_program(dataset)
    return pipeline if program is None else replace(pipeline, flow=program)


def cross_validate(problem: Problem, family: str, params: dict[str, Any]
                   ) -> tuple[float, ...]:
    """The quantised model's metric on each fold's validation rows, trained on the rest."""
    ds = problem.dataset
    fam = get_family(family)
    scores = []
    for fit, val in problem.folds:
        trained = fam.train(params, ds.x_train[fit], ds.y_train[fit], ds.n_classes, ds.widths,
                            problem.seed)
        scores.append(score(problem.metric, ds.y_train[val],
                            trained.predict_quantised(ds.x_train[val]), ds.n_classes,
                            problem.positive))
    return tuple(scores)


def evaluate(problem: Problem, family: str, params: dict[str, Any]) -> Evaluation:
    """Train ``family`` with ``params`` on the whole training set (the model this configuration
    ships: its pipeline, resources, feasibility) and score it by cross-validation."""
    chosen = chosen_features(problem, params)
    if not chosen:
        raise ValueError("a configuration must use at least one feature")
    if len(chosen) < len(problem.dataset.features):
        problem = problem.restricted(chosen)
    ds = problem.dataset
    trained = get_family(family).train(params, ds.x_train, ds.y_train, ds.n_classes,
                                       ds.widths, problem.seed)
    pipeline = build_pipeline(problem, trained, bool(params.get(MERGE_PARAM, False)))
    usage = problem.target.estimate(pipeline)
    feasibility = assess(usage, problem.limits)
    folds = cross_validate(problem, family, params)
    # The shipped model's fit on its own training data bounds what it can do: when even that is
    # below the folds' mean, the folds' models were luckier than this one (an unstable
    # configuration, e.g. a forest of stumps whose votes tie), so it counts.
    fit = score(problem.metric, ds.y_train, trained.predict_quantised(ds.x_train), ds.n_classes,
                problem.positive)
    return Evaluation(family, params, trained, pipeline, usage, feasibility,
                      min(float(np.mean(folds)), fit), problem, folds)
