"""Constrained (multi-objective) Bayesian optimisation over families and their hyperparameters.

Each trial picks a family and its hyperparameters, trains, quantises, lowers and costs the
pipeline on the target. The metric is measured on a validation split; the target's feasibility
becomes Optuna constraints (<= 0 is feasible), so an infeasible point is recorded as infeasible,
not as a bad score, and the TPE sampler learns to avoid that region. Studies live in SQLite so an
interrupted compile resumes.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from homunculus.errors import InfeasibleError
from homunculus.models.base import get_family
from homunculus.models.categorical import (
    CAT_FEATURE,
    CAT_SUPPORT,
    CAT_TABLE,
    DEFAULT_SIZE,
    DEFAULT_SUPPORT,
    SUPPORTS,
    size_choices,
)
from homunculus.search.problem import (
    DECIDE_PARAM,
    MERGE_PARAM,
    Evaluation,
    Problem,
    categorical_features,
    decision_choices,
    evaluate,
    feature_param,
    max_table_entries,
    merge_budget,
)
from homunculus.targets.base import LIMIT_KEYS, UNITS, CapacityExceeded

RESOURCE_OBJECTIVES = ("entries", "tables", "stages", "sram_kbit", "tcam_kbit", "phv_bits")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Budget:
    trials: int | None = 30
    seconds: float | None = None


@dataclass
class SearchProgress:
    """Live counters for a progress display."""

    done: int = 0
    infeasible: int = 0
    best: float | None = None
    on_update: Callable[[SearchProgress], None] | None = None

    def record(self, trial: optuna.trial.FrozenTrial) -> None:
        """Count a finished trial; pruned ones (no feature selected) are neither kind."""
        self.done += 1
        if trial.state == optuna.trial.TrialState.COMPLETE:
            if not trial.user_attrs.get("feasible", False):
                self.infeasible += 1
            elif trial.user_attrs.get("metric") is not None:
                m = trial.user_attrs["metric"]
                self.best = m if self.best is None else max(self.best, m)
        if self.on_update:
            self.on_update(self)


@dataclass(frozen=True)
class OracleVerdict:
    """An outside judge's say on a trial (the vendor P4 compiler): feasible or why not."""

    feasible: bool
    constraint: float  # Optuna constraint value: <= 0 when feasible
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


Oracle = Callable[[Evaluation], OracleVerdict]
ORACLE_KEY = "toolchain"  # the constraint, binding and user-attr name of the oracle's verdict


@dataclass
class SearchResult:
    study: optuna.Study
    best_trial: optuna.trial.FrozenTrial
    seconds: float
    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)


def make_sampler(kind: str, seed: int, n_trials: int | None) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(5, min(10, (n_trials or 30) // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          n_startup_trials=startup)


def record(trial: optuna.Trial, ev: Evaluation, verdict: OracleVerdict | None = None) -> None:
    """Store everything the report needs about one evaluated configuration (and the oracle's
    verdict on it, when one was asked: a rejection makes the trial infeasible)."""
    rejected = verdict is not None and not verdict.feasible
    violations = list(ev.feasibility.violations)
    if rejected:
        violations.append(verdict.reason or "rejected by the toolchain")
    trial.set_user_attr("family", ev.family)
    trial.set_user_attr("metric", ev.metric)
    trial.set_user_attr("feasible", ev.feasibility.feasible and not rejected)
    trial.set_user_attr("binding", ORACLE_KEY if rejected else ev.feasibility.binding)
    trial.set_user_attr("violations", violations)
    trial.set_user_attr("usage", {k: ev.usage.totals()[k] for k in LIMIT_KEYS})
    for key, value in ev.feasibility.constraint_values().items():
        trial.set_constraint(key, value)  # <= 0 is feasible; the sampler learns the boundary
    if verdict is not None:
        trial.set_user_attr(ORACLE_KEY, {"feasible": verdict.feasible, "reason": verdict.reason,
                                         **verdict.details})
        trial.set_constraint(ORACLE_KEY, verdict.constraint)


def objective_values(ev: Evaluation, objectives: tuple[str, ...]) -> list[float]:
    values = []
    for name in objectives:
        values.append(ev.metric if name == "metric" else float(ev.usage.totals()[name]))
    return values


def directions(objectives: tuple[str, ...]) -> list[str]:
    return ["maximize" if o == "metric" else "minimize" for o in objectives]


@dataclass(frozen=True)
class TableSpace:
    """The category table's knobs: sizes (0: none), categorical features, supports."""

    sizes: tuple[int, ...] = ()
    features: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return len(self.sizes) > 1 and bool(self.features)

    def defaults(self) -> dict[str, Any]:
        """The warm start's table: the default size (or the largest that fits), the first
        feature, the default support."""
        if not self.active:
            return {}
        size = max(s for s in self.sizes if s <= max(DEFAULT_SIZE, min(self.sizes[1:])))
        return {CAT_TABLE: size, CAT_FEATURE: self.features[0], CAT_SUPPORT: DEFAULT_SUPPORT}


def table_space(problem: Problem) -> TableSpace:
    """The category table's design space for ``problem`` (empty without categorical features):
    sizes up to what the target holds under the limits, and no larger than the first size that
    covers every distinct value seen in training."""
    names = categorical_features(problem.dataset)
    if not names:
        return TableSpace()
    ds = problem.dataset
    distinct = max(len(np.unique(ds.x_train[:, [f.name for f in ds.features].index(n)]))
                   for n in names)
    sizes = size_choices(max_table_entries(problem.target, problem.limits))
    covering = [s for s in sizes if s >= distinct]
    sizes = [s for s in sizes if s < distinct] + covering[:1]
    return TableSpace(tuple(sizes), tuple(names))


def suggest_configuration(trial: optuna.Trial, families: list[str], can_merge: bool,
                          n_select: int = 0, tables: TableSpace = TableSpace(),
                          decisions: tuple[int, ...] = ()) -> tuple[str, dict[str, Any]]:
    """A family, its hyperparameters, the resource knobs, the category table, the per-flow
    decision and (optionally) the feature set."""
    family = trial.suggest_categorical("family", families)
    params = get_family(family).suggest(trial)
    if can_merge:
        params[MERGE_PARAM] = trial.suggest_categorical(MERGE_PARAM, [False, True])
    if tables.active:
        params[CAT_TABLE] = trial.suggest_categorical(CAT_TABLE, list(tables.sizes))
        if params[CAT_TABLE]:
            params[CAT_FEATURE] = trial.suggest_categorical(CAT_FEATURE, list(tables.features))
            params[CAT_SUPPORT] = trial.suggest_categorical(CAT_SUPPORT, list(SUPPORTS))
    if decisions:
        params[DECIDE_PARAM] = trial.suggest_categorical(DECIDE_PARAM, list(decisions))
    for i in range(n_select):
        params[feature_param(i)] = trial.suggest_categorical(feature_param(i), [True, False])
    if n_select and not any(params[feature_param(i)] for i in range(n_select)):
        raise optuna.TrialPruned("no feature selected")
    return family, params


def open_study(storage_path: Path, name: str, objectives: tuple[str, ...], sampler_kind: str,
               seed: int, budget: Budget, resume: bool) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path}")
    if not resume:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
    return optuna.create_study(
        study_name=name, storage=storage, load_if_exists=resume,
        directions=directions(objectives),
        sampler=make_sampler(sampler_kind, seed, budget.trials),
    )


def warm_start(study: optuna.Study, families: list[str], budget: Budget,
               tables: TableSpace = TableSpace(), decisions: tuple[int, ...] = ()) -> None:
    """Queue each family's hand-tuned default configuration (with the default category table
    when the data has categorical features) as the first trials of a new study (at most half
    the trial budget): strong baselines the sampler then improves on."""
    n = len(families) if budget.trials is None else min(len(families), budget.trials // 2)
    for family in families[:n]:
        study.enqueue_trial({"family": family, **get_family(family).default_params(),
                             **tables.defaults(), **({DECIDE_PARAM: 0} if decisions else {})},
                            skip_if_exists=True)


def run_search(problem: Problem, families: list[str], objectives: tuple[str, ...],
               budget: Budget, study: optuna.Study,
               progress: SearchProgress | None = None,
               oracle: Oracle | None = None) -> SearchResult:
    """Run the remaining budget of ``study`` and return its best feasible trial.

    With an ``oracle``, every trial the estimate finds feasible is also judged by it.
    """
    progress = progress or SearchProgress()
    can_merge = merge_budget(problem) is not None
    n_select = len(problem.dataset.features) if problem.select_features else 0
    tables = table_space(problem)
    decisions = decision_choices(problem)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        progress.record(t)

    def objective(trial: optuna.Trial) -> list[float]:
        family, params = suggest_configuration(trial, families, can_merge, n_select, tables,
                                               decisions)
        try:
            ev = evaluate(problem, family, params)
        except CapacityExceeded as exc:  # beyond the target's compiled capacity: skip it
            raise optuna.TrialPruned(str(exc)) from None
        verdict = oracle(ev) if oracle is not None and ev.feasibility.feasible else None
        record(trial, ev, verdict)
        return objective_values(ev, objectives)

    if not study.get_trials(deepcopy=False):
        warm_start(study, families, budget, tables, decisions)
    finished = len([t for t in study.get_trials(deepcopy=False) if t.state.is_finished()])
    remaining = None if budget.trials is None else max(budget.trials - finished, 0)
    start = time.monotonic()
    if remaining != 0:
        study.optimize(objective, n_trials=remaining, timeout=budget.seconds,
                       callbacks=[lambda _s, t: progress.record(t)], catch=())
    seconds = time.monotonic() - start
    trials = study.get_trials(deepcopy=False)
    return SearchResult(study, pick_best(trials, objectives), seconds, trials)


def pick_best(trials: list[optuna.trial.FrozenTrial],
              objectives: tuple[str, ...]) -> optuna.trial.FrozenTrial:
    """Best feasible metric; ties go to the cheaper pipeline (then the earlier trial)."""
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in complete if t.user_attrs.get("feasible")]
    if not feasible:
        raise InfeasibleError(infeasibility_message(complete))
    tie_break = next((o for o in objectives if o != "metric"), "entries")
    return max(feasible, key=lambda t: (t.user_attrs["metric"],
                                        -t.user_attrs["usage"][tie_break], -t.number))


def infeasibility_message(trials: list[optuna.trial.FrozenTrial]) -> str:
    """Say which constraint binds most often and the smallest use of it that was seen."""
    if not trials:
        return "the search finished no trial (budget too small?)"
    binding: dict[str, int] = {}
    for t in trials:
        key = t.user_attrs.get("binding")
        if key:
            binding[key] = binding.get(key, 0) + 1
    key = max(binding, key=lambda k: binding[k]) if binding else None
    if key is None:
        return f"none of {len(trials)} trials met the constraints"
    if key == ORACLE_KEY:
        first = next(t for t in trials if t.user_attrs.get("binding") == ORACLE_KEY)
        return (f"no feasible pipeline in {len(trials)} trials: the P4 compiler turned down "
                f"{binding[key]} of them (first: trial {first.number}, "
                f"{first.user_attrs['family']}: {first.user_attrs[ORACLE_KEY]['reason']})")
    pick = min if key != "throughput_gpps" else max
    best = pick(trials, key=lambda t: t.user_attrs["usage"][key])
    return (f"no feasible pipeline in {len(trials)} trials: the binding constraint is '{key}' "
            f"(binding in {binding[key]} trials); the smallest use seen was "
            f"{best.user_attrs['usage'][key]:g} {UNITS[key]} (trial {best.number}, "
            f"{best.user_attrs['family']}): {'; '.join(best.user_attrs['violations'])}")
