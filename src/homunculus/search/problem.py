"""One compile problem and the evaluation of a configuration: train, quantise, lower, cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sklearn.model_selection import (
    GroupShuffleSplit,
    KFold,
    RepeatedStratifiedKFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from homunculus.data.dataset import Dataset, select_features
from homunculus.features.library import DECIDE_AT
from homunculus.features.reference import flow_decisions
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.dense import QMLP
from homunculus.ir.flow import FlowProgram, lower_flow_features
from homunculus.ir.pipeline import Pipeline, VerdictPlan, class_rows_of, shortcut_of
from homunculus.ir.quantised import QTreeEnsemble
from homunculus.models.base import TrainedModel, get_family
from homunculus.models.categorical import CategoryTable, learn_table, rest_rows, table_knobs
from homunculus.passes.lower import TreeCodes, lower
from homunculus.passes.lower_cpu import lower_cpu
from homunculus.search.metrics import score
from homunculus.targets.base import CapacityExceeded, Feasibility, Limits, Target, Usage, assess

MERGE_PARAM = "merge_tables"  # design-space knob: fuse lookup tables to save tables/stages
DECIDE_PARAM = "flow_decide"  # design-space knob: per-flow decision at packet N (0: per packet)


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
    fold_scheme: str = ""  # how the folds were drawn (for the report)
    # Small data's repeated folds: a fold's validation rows over its training rows. When set,
    # the selection keeps the families' defaults unless a configuration is significantly better
    # on the same folds (search/study.py, ``pick_best``).
    cv_ratio: float | None = None
    flow_decisions: bool = True  # the per-flow decision may be searched (not in a schedule)

    def restricted(self, indices: list[int]) -> Problem:
        """This problem on a subset of the features."""
        return replace(self, dataset=select_features(self.dataset, indices))


def feature_param(i: int) -> str:
    return f"use_feature_{i}"


def chosen_features(problem: Problem, params: dict[str, Any]) -> list[int]:
    """Indices of the features a configuration uses (all unless the search selects them; the
    category table's feature always, since the table reads it)."""
    n = len(problem.dataset.features)
    if not problem.select_features:
        return list(range(n))
    size, name, _ = table_knobs(params)
    names = [f.name for f in problem.dataset.features]
    return [i for i in range(n)
            if params.get(feature_param(i), True) or (size and names[i] == name)]


DEFAULT_TABLE_ENTRIES = 1 << 16
"""The largest exact-match table a target holds unless it says otherwise (``max_table_entries``
of the target)."""


def max_table_entries(target: Target, limits: Limits) -> int:
    """Entries the largest category table may have on ``target`` under ``limits``."""
    cap = int(getattr(target, "max_table_entries", DEFAULT_TABLE_ENTRIES))
    return cap if limits.entries is None else min(cap, int(limits.entries))


def categorical_features(dataset: Dataset) -> list[str]:
    """Names of the features declared categorical, in order."""
    return [f.name for f in dataset.features if f.categorical]


def train_configuration(problem: Problem, family: str, params: dict[str, Any],
                        rows: np.ndarray | None = None) -> TrainedModel:
    """Train ``family`` on the training ``rows`` (all by default): with a category table
    (``cat_table`` > 0), the table is learned first and the model trains on what it misses."""
    ds = problem.dataset
    x = ds.x_train if rows is None else ds.x_train[rows]
    y = ds.y_train if rows is None else ds.y_train[rows]
    size, name, support = table_knobs(params)
    if not size:
        return train_present(family, params, x, y, ds.n_classes, ds.widths, problem.seed)
    names = [f.name for f in ds.features]
    if name not in names or not ds.features[names.index(name)].categorical:
        raise ValueError(f"'{name}' is not a categorical feature of the data")
    feature = names.index(name)
    groups = ds.groups_train
    if groups is not None and rows is not None:
        groups = groups[rows]
    table = learn_table(x[:, feature], y, groups, feature, ds.n_classes, size, support)
    hit, _ = table.lookup(x)
    rest = rest_rows(hit, y)
    trained = train_present(family, params, x[rest], y[rest], ds.n_classes, ds.widths,
                            problem.seed)
    return replace(trained, shortcut=table if len(table) else None)


class RemappedClassifier:
    """A float model trained on the classes present, predicting indices of all classes."""

    def __init__(self, model: Any, classes: np.ndarray) -> None:
        self.model, self.classes = model, classes

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[np.asarray(self.model.predict(x), dtype=np.int64)]


def train_present(family: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray,
                  n_classes: int, widths: tuple[int, ...], seed: int) -> TrainedModel:
    """Train on rows that may lack some classes (a fold, the rows a category table misses):
    the family sees the classes present as 0..k-1, and its winners map back to them."""
    present = np.unique(y)
    fam = get_family(family)
    if len(present) == n_classes or len(present) < 2:
        return fam.train(params, x, y, n_classes, widths, seed)
    trained = fam.train(params, x, np.searchsorted(present, y), len(present), widths, seed)
    inner = trained.winner_to_class or tuple(range(len(present)))
    return replace(trained, float_model=RemappedClassifier(trained.float_model, present),
                   winner_to_class=tuple(int(present[c]) for c in inner))


def default_folds(n_rows: int) -> int:
    """Cross-validation folds by data size, cheap enough to stay the default (1 = holdout): on
    the IoT example (4,200 rows) a 3-fold trial costs 1.9-2.9x the CPU time of the old single
    75 % training (bench/cv_cost.py; docs/benchmarks.md)."""
    if n_rows <= 1_000:
        return 5
    if n_rows <= 50_000:
        return 3
    return 1


SMALL_ROWS = 1_000
"""Up to this many training rows (ungrouped), the default folds are repeated: one 5-fold
partition of ~100 rows scores configurations on ~20 rows each, and which of two configurations
wins there is mostly chance."""


def default_repeats(n_rows: int) -> int:
    """Repetitions of the default stratified folds of small data (1 = not repeated): enough
    that every training row is validated about four times up to 500 rows, twice up to 1,000."""
    if n_rows <= 500:
        return 4
    return 2 if n_rows <= SMALL_ROWS else 1


def make_folds(dataset: Dataset, seed: int, n_folds: int | None = None,
               validation_fraction: float = 0.25) -> tuple[Fold, ...]:
    """Seeded folds of the training set: by group (flow or capture) when the rows carry groups,
    so no flow is on both sides; stratified when every class has enough rows. ``n_folds`` = 1
    is one validation split of ``validation_fraction``."""
    return plan_folds(dataset, seed, n_folds, validation_fraction)[1]


def plan_folds(dataset: Dataset, seed: int, n_folds: int | None = None,
               validation_fraction: float = 0.25) -> tuple[str, tuple[Fold, ...]]:
    """:func:`make_folds` with a description of the scheme (for the report)."""
    y = dataset.y_train
    n = len(y)
    k = default_folds(n) if n_folds is None else n_folds
    groups = dataset.groups_train
    grouped = groups is not None and len(np.unique(groups)) >= 2
    by = f" grouped by {dataset.group_name or 'group'}" if grouped else ""
    counts = np.bincount(y, minlength=dataset.n_classes)
    if k == 1 or (grouped and len(np.unique(groups)) < k) or (not grouped and n < 2 * k):
        if grouped:
            splitter = GroupShuffleSplit(n_splits=1, test_size=validation_fraction,
                                         random_state=seed)
            return (f"one validation split of {validation_fraction:g}{by}",
                    (next(splitter.split(dataset.x_train, y, groups)),))
        stratify = y if counts[counts > 0].min() >= 2 else None
        fit, val = train_test_split(np.arange(n), test_size=validation_fraction,
                                    random_state=seed, stratify=stratify)
        return (f"one {'stratified ' if stratify is not None else ''}validation split of "
                f"{validation_fraction:g}", ((np.sort(fit), np.sort(val)),))
    if grouped:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return f"{k} folds{by} (stratified)", tuple(splitter.split(dataset.x_train, y, groups))
    if counts[counts > 0].min() >= k:
        repeats = default_repeats(n) if n_folds is None else 1
        if repeats > 1:
            return (f"{k} stratified folds x {repeats} repeats",
                    tuple(RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats,
                                                  random_state=seed).split(dataset.x_train, y)))
        return f"{k} stratified folds", tuple(StratifiedKFold(k, shuffle=True, random_state=seed
                                                               ).split(dataset.x_train, y))
    return f"{k} folds", tuple(KFold(k, shuffle=True, random_state=seed).split(dataset.x_train))


def make_problem(dataset: Dataset, target: Target, limits: Limits, metric: str,
                 positive: int | None, verdict: VerdictPlan, seed: int,
                 validation_fraction: float = 0.25, select: bool = False,
                 n_folds: int | None = None) -> Problem:
    """The compile problem; the test set stays unseen (see :func:`make_folds`)."""
    scheme, folds = plan_folds(dataset, seed, n_folds, validation_fraction)
    return Problem(dataset, folds, target, limits, metric, positive, verdict, seed, select,
                   scheme, repeated_ratio(folds))


def repeated_ratio(folds: tuple[Fold, ...]) -> float | None:
    """Validation over training rows of repeated folds (a row validated more than once), the
    correction Nadeau and Bengio's resampled t-test needs; None for folds that are not
    repeated."""
    validated = sum(len(val) for _, val in folds)
    rows = len(np.unique(np.concatenate([val for _, val in folds]))) if folds else 0
    if not folds or validated <= rows:
        return None
    fit, val = folds[0]
    return len(val) / len(fit)


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
    if cpu_lowering(problem.target) or not getattr(problem.target, "merges", True):
        return None
    caps = [getattr(getattr(problem.target, "profile", None), "tables_per_stage", None)]
    if problem.limits.tables is not None:
        caps.append(problem.limits.tables - len(problem.dataset.features) - 1)
    caps = [c for c in caps if c is not None]
    return max(1, min(caps)) if caps else None


def lower_model(model: Any, dataset: Dataset, verdict: VerdictPlan,
                winner_to_class: tuple[int, ...] | None,
                max_lookup_tables: int | None = None,
                tree_codes: TreeCodes = TreeCodes.SHARED) -> Pipeline:
    """Lower any quantised model: tables for trees and lookup-sum models, a dense stage for MLPs."""
    if isinstance(model, QMLP):
        from homunculus.passes.lower_mlp import lower_mlp

        return lower_mlp(model, dataset.features, dataset.class_labels, verdict, winner_to_class)
    return lower(model, dataset.features, dataset.class_labels, verdict, winner_to_class,
                 max_lookup_tables, tree_codes)


def code_choices(target: Target, model: Any) -> tuple[TreeCodes, ...]:
    """The thermometer-code layouts worth lowering ``model`` with for ``target``: both for an
    ensemble of several trees on a switch whose stages limit a key's crossbar (Tofino), else
    the shared one (a single tree has one layout; without that limit, narrower keys save no
    stage)."""
    profile = getattr(target, "profile", None)
    limited = getattr(profile, "ternary_xbar_groups_per_stage", None) is not None
    if limited and isinstance(model, QTreeEnsemble) and len(model.trees) > 1:
        return (TreeCodes.SHARED, TreeCodes.PER_TREE)
    return (TreeCodes.SHARED,)


def fewest_stages(target: Target, pipelines: list[Pipeline],
                  limits: Limits | None = None) -> Pipeline:
    """Of equivalent pipelines, one whose estimate fits ``limits`` if any does, then the one the
    target's estimate puts in the fewest stages (then the fewest PHV bits; the first on a
    tie). Without the limits, a layout of fewer stages could be chosen over one that fits."""
    if len(pipelines) == 1:
        return pipelines[0]
    usages = [target.estimate(p) for p in pipelines]
    misfit = [limits is not None and not assess(u, limits).feasible for u in usages]
    best = min(range(len(pipelines)),
               key=lambda i: (misfit[i], usages[i].stages, usages[i].phv_bits, i))
    return pipelines[best]


def cpu_lowering(target: Target) -> bool:
    """Whether ``target`` runs the CPU program (passes/lower_cpu.py) rather than tables."""
    return getattr(target, "lowering", "tables") == "cpu"


def lower_for(target: Target, model: Any, dataset: Dataset, verdict: VerdictPlan,
              winner_to_class: tuple[int, ...] | None,
              max_lookup_tables: int | None = None,
              table: CategoryTable | None = None, decide_at: int = 0,
              limits: Limits | None = None) -> Pipeline | CpuProgram:
    """Lower ``model`` (with the hybrid's category ``table`` and the per-flow decision at packet
    ``decide_at``) for ``target`` and prepare it: the CPU program for the XDP and C targets, the
    table pipeline (tables merged to ``max_lookup_tables``) for switches, in the code layout
    that fits ``limits`` in the fewest stages (:func:`fewest_stages`)."""
    shortcut = None if table is None else shortcut_of(table.feature, table.values,
                                                       table.classes, verdict)
    if cpu_lowering(target):
        program = lower_cpu(model, dataset.features, dataset.class_labels, verdict,
                            winner_to_class, flow_program(dataset, decide_at))
        return target.prepare(replace(program, shortcut=shortcut))
    attach = getattr(target, "attach_model", None)  # a chain ending on a host (schedule/split.py)
    prepared = []
    for codes in code_choices(target, model) if attach is None else (TreeCodes.SHARED,):
        pipeline = lower_model(model, dataset, verdict, winner_to_class, max_lookup_tables, codes)
        if attach is not None:
            pipeline = attach(pipeline, model, dataset, verdict, winner_to_class)
        prepared.append(target.prepare(replace(
            with_flow(pipeline, dataset, decide_at), shortcut=shortcut,
            class_rows=class_rows_of(verdict, dataset.n_classes))))
    return fewest_stages(target, prepared, limits)


def build_pipeline(problem: Problem, trained: TrainedModel, merge: bool = False,
                   decide_at: int = 0) -> Pipeline | CpuProgram:
    """Lower (optionally merging lookup tables to ``merge_budget``) and prepare for the target."""
    return lower_for(problem.target, trained.quantised, problem.dataset, problem.verdict,
                     trained.winner_to_class, merge_budget(problem) if merge else None,
                     trained.shortcut, decide_at, problem.limits)


def flow_program(dataset: Dataset, decide_at: int = 0) -> FlowProgram | None:
    """The flow-state program when the dataset's features come from packets (with the
    per-flow decision's counter when ``decide_at`` > 0)."""
    if dataset.traffic is None:
        return None
    return lower_flow_features(list(dataset.traffic.features), dataset.traffic.config,
                               decide_at)


def with_flow(pipeline: Pipeline, dataset: Dataset, decide_at: int = 0) -> Pipeline:
    """Attach the flow-state program when the dataset's features come from packets."""
    program = flow_program(dataset, decide_at)
    return pipeline if program is None else replace(pipeline, flow=program)


def decision_choices(problem: Problem) -> tuple[int, ...]:
    """The per-flow decision's design space: packet N in ``DECIDE_AT`` (0: per packet) when the
    problem allows it, the data comes from packets, the target keeps flow state (not C: it
    takes feature rows) and every packet that updates flow state is classified (no feature
    reads a TCP- or UDP-only field), so the packet at n == N always stores its class.
    ``Problem.flow_decisions`` False turns it off (a schedule's models classify every packet;
    a chain of hosts' last device keeps no flow state)."""
    ds = problem.dataset
    if (not problem.flow_decisions or ds.flow_rows is None or ds.traffic is None
            or problem.target.name == "c"):
        return ()
    from homunculus.data.packets import required_header

    if any(f.kind == "header" and required_header(f.field) for f in ds.traffic.features):
        return ()
    return DECIDE_AT


def decided(problem: Problem, params: dict[str, Any], classes: np.ndarray,
            rows: np.ndarray | None = None, test: bool = False) -> np.ndarray:
    """``classes`` of the training ``rows`` (or the test rows) as the per-flow decision of
    ``params`` applies them (unchanged without one)."""
    at = int(params.get(DECIDE_PARAM, 0) or 0)
    fr = problem.dataset.flow_rows
    if not at or fr is None:
        return classes
    pos, ep = (fr.pos_test, fr.ep_test) if test else (fr.pos_train, fr.ep_train)
    if rows is not None:
        pos, ep = pos[rows], ep[rows]
    return flow_decisions(classes, pos, ep, at)


def cross_validate(problem: Problem, family: str, params: dict[str, Any]
                   ) -> tuple[float, ...]:
    """The quantised model's metric on each fold's validation rows, trained on the rest."""
    ds = problem.dataset
    scores = []
    for fit, val in problem.folds:
        trained = train_configuration(problem, family, params, fit)
        pred = decided(problem, params, trained.predict_quantised(ds.x_train[val]), val)
        scores.append(score(problem.metric, ds.y_train[val], pred, ds.n_classes,
                            problem.positive))
    return tuple(scores)


@dataclass(frozen=True)
class Shipped:
    """A configuration trained on the whole training set, lowered and costed: what it ships."""

    params: dict[str, Any]
    trained: TrainedModel
    pipeline: Pipeline | CpuProgram
    usage: Usage
    feasibility: Feasibility


def ship(problem: Problem, family: str, params: dict[str, Any]) -> Shipped:
    """Train ``params`` on the whole training set, lower it and cost it against the limits."""
    trained = train_configuration(problem, family, params)
    pipeline = build_pipeline(problem, trained, bool(params.get(MERGE_PARAM, False)),
                              int(params.get(DECIDE_PARAM, 0) or 0))
    usage = problem.target.estimate(pipeline)
    return Shipped(params, trained, pipeline, usage, assess(usage, problem.limits))


def fit_to_limits(problem: Problem, family: str, params: dict[str, Any]) -> Shipped:
    """:func:`ship`, and when the model exceeds the limits and its family has a size knob
    (``size_param``: a forest's trees, boosting's rounds), the largest size that fits, found by
    bisection (resources grow with the knob; :func:`resized` gives the configuration at a
    size). A forest sampled larger than the switch holds then ships as the largest prefix of
    it that fits, instead of costing a trial for nothing. Unchanged when even size 1 does not
    fit.

    The bisection first searches below :func:`size_bound` (the size at which usage that grows
    linearly from a fixed part would reach the limit), and above it only if the bound itself
    fits: lowering costs more than linearly in the trees, so the large sizes are skipped."""
    first = ship(problem, family, params)
    knob = getattr(get_family(family), "size_param", None)
    if first.feasibility.feasible or knob is None or int(params[knob]) <= 1:
        return first
    asked = int(params[knob])
    bound = size_bound(asked, first.feasibility)
    best = largest_fitting(problem, family, params, knob, 1, bound)
    if best is not None and int(best.params[knob]) == bound and bound < asked - 1:
        best = largest_fitting(problem, family, params, knob, bound + 1, asked - 1) or best
    return best or first


def size_bound(size: int, feasibility: Feasibility) -> int:
    """An upper estimate of the largest size that fits, from one model of ``size`` that does
    not: ``size / r`` for the worst usage-to-limit ratio r. Usage ``a + b * size`` with a fixed
    part ``a >= 0`` fits only below it."""
    worst = max((feasibility.ratios[k] for k in feasibility.ratios
                 if feasibility.ratios[k] > 1.0), default=1.0)
    return max(1, min(size - 1, math.ceil(size / worst)))


def resized(family: str, params: dict[str, Any], knob: str, size: int) -> dict[str, Any]:
    """``params`` with the size knob at ``size``, and whatever the family changes with it (its
    ``resize(params, size)``, e.g. boosting's step); by default only the knob."""
    resize = getattr(get_family(family), "resize", None)
    return resize(params, size) if resize is not None else {**params, knob: size}


def largest_fitting(problem: Problem, family: str, params: dict[str, Any], knob: str,
                    low: int, high: int) -> Shipped | None:
    """The largest size in ``[low, high]`` whose model fits, by bisection (None: none does)."""
    best = None
    while low <= high:
        size = (low + high) // 2
        try:
            candidate = ship(problem, family, resized(family, params, knob, size))
        except CapacityExceeded:
            candidate = None
        if candidate is not None and candidate.feasibility.feasible:
            best, low = candidate, size + 1
        else:
            high = size - 1
    return best


def evaluate(problem: Problem, family: str, params: dict[str, Any]) -> Evaluation:
    """Train ``family`` with ``params`` on the whole training set (the model this configuration
    ships: its pipeline, resources, feasibility; sized to the limits by :func:`fit_to_limits`,
    so the evaluation's ``params`` may hold a smaller size than asked) and score it by
    cross-validation."""
    chosen = chosen_features(problem, params)
    if not chosen:
        raise ValueError("a configuration must use at least one feature")
    if len(chosen) < len(problem.dataset.features):
        problem = problem.restricted(chosen)
    ds = problem.dataset
    shipped = fit_to_limits(problem, family, params)
    params, trained = shipped.params, shipped.trained
    folds = cross_validate(problem, family, params)
    # The shipped model's fit on its own training data bounds what it can do: when even that is
    # below the folds' mean, the folds' models were luckier than this one (an unstable
    # configuration, e.g. a forest of stumps whose votes tie), so it counts.
    fit = score(problem.metric, ds.y_train,
                decided(problem, params, trained.predict_quantised(ds.x_train)), ds.n_classes,
                problem.positive)
    return Evaluation(family, params, trained, shipped.pipeline, shipped.usage,
                      shipped.feasibility, min(float(np.mean(folds)), fit), problem, folds)
