"""One compile problem and the evaluation of a configuration: train, quantise, lower, cost."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from homunculus.data.dataset import Dataset, select_features
from homunculus.ir.dense import QMLP
from homunculus.ir.flow import lower_flow_features
from homunculus.ir.pipeline import Pipeline, VerdictPlan
from homunculus.models.base import TrainedModel, get_family
from homunculus.passes.lower import lower
from homunculus.search.metrics import score
from homunculus.targets.base import Feasibility, Limits, Target, Usage, assess

MERGE_PARAM = "merge_tables"  # design-space knob: fuse lookup tables to save tables/stages


@dataclass(frozen=True)
class Problem:
    """Everything a trial needs: the data splits, the target, its limits and the metric."""

    dataset: Dataset
    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    target: Target
    limits: Limits
    metric: str
    positive: int | None
    verdict: VerdictPlan
    seed: int
    select_features: bool = False  # the feature set is part of the design space

    def restricted(self, indices: list[int]) -> Problem:
        """This problem on a subset of the features."""
        return replace(self, dataset=select_features(self.dataset, indices),
                       x_fit=self.x_fit[:, indices], x_val=self.x_val[:, indices])


def feature_param(i: int) -> str:
    return f"use_feature_{i}"


def chosen_features(problem: Problem, params: dict[str, Any]) -> list[int]:
    """Indices of the features a configuration uses (all unless the search selects them)."""
    n = len(problem.dataset.features)
    if not problem.select_features:
        return list(range(n))
    return [i for i in range(n) if params.get(feature_param(i), True)]


def make_problem(dataset: Dataset, target: Target, limits: Limits, metric: str,
                 positive: int | None, verdict: VerdictPlan, seed: int,
                 validation_fraction: float = 0.25, select: bool = False) -> Problem:
    """Carve a validation split out of the training data (the test set stays unseen): stratified,
    or by group (flow or capture) when the rows carry groups, so no flow is on both sides."""
    y = dataset.y_train
    if dataset.groups_train is not None and len(np.unique(dataset.groups_train)) >= 2:
        splitter = GroupShuffleSplit(n_splits=1, test_size=validation_fraction,
                                     random_state=seed)
        fit, val = next(splitter.split(dataset.x_train, y, dataset.groups_train))
        x_fit, x_val, y_fit, y_val = dataset.x_train[fit], dataset.x_train[val], y[fit], y[val]
    else:
        counts = np.bincount(y, minlength=dataset.n_classes)
        stratify = y if counts.min() >= 2 else None
        x_fit, x_val, y_fit, y_val = train_test_split(
            dataset.x_train, y, test_size=validation_fraction, random_state=seed,
            stratify=stratify)
    return Problem(dataset, x_fit, y_fit, x_val, y_val, target, limits, metric, positive,
                   verdict, seed, select)


@dataclass(frozen=True)
class Evaluation:
    family: str
    params: dict[str, Any]
    trained: TrainedModel
    pipeline: Pipeline
    usage: Usage
    feasibility: Feasibility
    metric: float  # on the validation split, of the quantised model
    problem: Problem  # the problem as evaluated (restricted to the chosen features)


def merge_budget(problem: Problem) -> int | None:
    """How many lookup tables fit beside the encoders: one stage's tables, within the limit."""
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


def build_pipeline(problem: Problem, trained: TrainedModel, merge: bool = False) -> Pipeline:
    """Lower, optionally merge lookup tables (to ``merge_budget``), then encode for the target."""
    ds = problem.dataset
    pipeline = lower_model(trained.quantised, ds, problem.verdict, trained.winner_to_class,
                           merge_budget(problem) if merge else None)
    return problem.target.prepare(with_flow(pipeline, ds))


def with_flow(pipeline: Pipeline, dataset: Dataset) -> Pipeline:
    """Attach the flow-state program when the dataset's features come from packets."""
    if dataset.traffic is None:
        return pipeline
    return replace(pipeline, flow=lower_flow_features(list(dataset.traffic.features),
                                                      dataset.traffic.config))


def evaluate(problem: Problem, family: str, params: dict[str, Any]) -> Evaluation:
    """Train ``family`` with ``params`` on the fit split and cost its pipeline on the target."""
    chosen = chosen_features(problem, params)
    if not chosen:
        raise ValueError("a configuration must use at least one feature")
    if len(chosen) < len(problem.dataset.features):
        problem = problem.restricted(chosen)
    ds = problem.dataset
    trained = get_family(family).train(params, problem.x_fit, problem.y_fit, ds.n_classes,
                                       ds.widths, problem.seed)
    pipeline = build_pipeline(problem, trained, bool(params.get(MERGE_PARAM, False)))
    usage = problem.target.estimate(pipeline)
    feasibility = assess(usage, problem.limits)
    metric = score(problem.metric, problem.y_val, trained.predict_quantised(problem.x_val),
                   ds.n_classes, problem.positive)
    return Evaluation(family, params, trained, pipeline, usage, feasibility, metric, problem)


@dataclass(frozen=True)
class FinalModel:
    """The configuration the compile ships: refit on the whole training set when that stays
    within the limits, else the model the search validated (and why)."""

    evaluation: Evaluation
    validated: Evaluation  # trained on the fit split; its metric is the validation score
    refit: bool
    note: str


def refit(problem: Problem, family: str, params: dict[str, Any]) -> FinalModel:
    """Retrain the chosen configuration on fit + validation (the whole training set)."""
    validated = evaluate(problem, family, params)
    ds = problem.dataset
    whole = replace(problem, x_fit=ds.x_train, y_fit=ds.y_train)
    final = evaluate(whole, family, params)
    if not final.feasibility.feasible:
        note = ("refit on the whole training set breaks the limits ("
                + "; ".join(final.feasibility.violations)
                + "): shipping the model trained on the fit split")
        return FinalModel(validated, validated, False, note)
    return FinalModel(replace(final, metric=validated.metric), validated, True,
                      f"refit on all {len(ds.y_train)} training rows")
