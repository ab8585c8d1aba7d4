"""A forest or booster sampled larger than the switch holds ships as the largest prefix of it
that fits (search/problem.py, ``fit_to_limits``), and the trial records the size it shipped."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.ir.pipeline import VerdictPlan
from homunculus.models.base import get_family
from homunculus.report.summary import trial_rows
from homunculus.search.problem import evaluate, fewest_stages, make_problem, size_bound
from homunculus.search.study import FITTED_ATTR, record, shipped_configuration
from homunculus.targets.base import Feasibility, Limits, Usage
from homunculus.targets.registry import make_target


def noisy_dataset(n: int = 1200, seed: int = 0):
    """Four 8-bit features, three classes with overlapping boundaries: deep trees, many leaves."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 4))
    y = ((x[:, 0] + x[:, 1] // 2 + rng.integers(0, 90, n)) // 130).clip(0, 2)
    labels = np.array([f"c{v}" for v in y])
    feats = [FeatureDecl(f"f{i}", 8) for i in range(4)]
    cut = int(n * 0.7)
    return make_dataset(feats, x[:cut], labels[:cut], x[cut:], labels[cut:], "noisy")


@pytest.mark.parametrize("family", ["rf", "xgb"])
def test_an_oversized_ensemble_ships_as_the_largest_prefix_that_fits(family) -> None:
    ds = noisy_dataset()
    target, limits = make_target("bmv2", {})
    knob = get_family(family).size_param
    big = {**get_family(family).default_params(), knob: 12}
    free = evaluate(make_problem(ds, target, limits, "accuracy", None, VerdictPlan(), 0),
                    family, big)
    assert free.params[knob] == 12 and free.feasibility.feasible
    cap = free.usage.entries * 2 // 3  # an entry limit the 12-tree model breaks
    problem = make_problem(ds, target, limits.merged({"entries": cap}), "accuracy", None,
                           VerdictPlan(), 0)
    ev = evaluate(problem, family, big)
    size = ev.params[knob]
    assert ev.feasibility.feasible and ev.usage.entries <= cap and 1 <= size < 12
    bigger = evaluate(problem, family, {**big, knob: size + 1})  # the largest that fits
    assert bigger.feasibility.feasible and bigger.params[knob] <= size + 1
    if family == "rf":  # a booster cut down takes larger steps (resize): other trees
        assert bigger.params[knob] == size  # one more is sized down to the same prefix
    same = evaluate(problem, family, ev.params)  # what it shipped with: the same model again
    assert same.params == ev.params
    assert same.metric == ev.metric and same.usage.entries == ev.usage.entries
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"family": family, knob: 12})
    queued = study.ask({"family": optuna.distributions.CategoricalDistribution([family]),
                        knob: optuna.distributions.IntDistribution(1, 24)})
    record(queued, ev)
    assert queued.user_attrs[FITTED_ATTR] == {knob: size}
    study.tell(queued, ev.metric)
    (row,) = trial_rows(study.trials)  # the report shows the size it shipped with
    assert row["params"][knob] == 12 and row["fitted_to_limits"] == {knob: size}
    # rebuilding the trial (the compile's refit, a schedule's build) takes the shipped size
    assert shipped_configuration(study.trials[0]) == (family, {knob: size})


def test_a_booster_cut_to_fewer_rounds_takes_larger_steps() -> None:
    xgb = get_family("xgb")
    asked = {**xgb.default_params(), "xgb_n_estimators": 10, "xgb_learning_rate": 0.1}
    assert xgb.resize(asked, 10) == asked
    assert xgb.resize(asked, 5)["xgb_learning_rate"] == 0.2  # step x rounds kept
    assert xgb.resize(asked, 1)["xgb_learning_rate"] == 0.6  # up to XGB_RESIZED_STEP
    steep = {**asked, "xgb_learning_rate": 0.8}
    assert xgb.resize(steep, 2)["xgb_learning_rate"] == 0.8  # never smaller than asked
    ds = noisy_dataset()
    target, limits = make_target("bmv2", {})
    free = evaluate(make_problem(ds, target, limits, "accuracy", None, VerdictPlan(), 0),
                    "xgb", asked)
    problem = make_problem(ds, target, limits.merged({"entries": free.usage.entries // 2}),
                           "accuracy", None, VerdictPlan(), 0)
    ev = evaluate(problem, "xgb", asked)
    rounds = ev.params["xgb_n_estimators"]
    assert rounds < 10 and ev.params["xgb_learning_rate"] == min(0.6, round(1.0 / rounds, 6))
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"family": "xgb", **asked})
    trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["xgb"]),
                       **{k: optuna.distributions.FloatDistribution(0.0, 100.0)
                          for k in asked}})
    record(trial, ev)  # the trial records both knobs it shipped with
    assert trial.user_attrs[FITTED_ATTR] == {"xgb_n_estimators": rounds,
                                             "xgb_learning_rate": ev.params["xgb_learning_rate"]}


def test_a_model_that_fits_or_cannot_shrink_is_unchanged() -> None:
    ds = noisy_dataset()
    target, limits = make_target("bmv2", {})
    problem = make_problem(ds, target, limits.merged({"entries": 3}), "accuracy", None,
                           VerdictPlan(), 0)
    rf = {**get_family("rf").default_params(), "rf_n_estimators": 4}
    ev = evaluate(problem, "rf", rf)  # not even one tree fits 3 entries: left as asked
    assert not ev.feasibility.feasible and ev.params["rf_n_estimators"] == 4
    dt = evaluate(problem, "dt", get_family("dt").default_params())  # no size knob
    assert not dt.feasibility.feasible


def test_the_size_bound_is_where_linear_usage_would_reach_the_limit() -> None:
    over = Feasibility(False, "stages", {"stages": 47 / 12, "entries": 0.5}, ("stages",))
    assert size_bound(64, over) == 17  # ceil(64 * 12 / 47)
    worst = Feasibility(False, "phv", {"stages": 2.0, "phv": 4.0}, ("stages", "phv"))
    assert size_bound(64, worst) == 16  # the worst ratio decides
    assert size_bound(3, Feasibility(False, "stages", {"stages": 1.01}, ("stages",))) == 2
    assert size_bound(64, Feasibility(False, "stages", {"stages": 100.0}, ("stages",))) == 1


class _CannedTarget:
    """A target whose estimate of each (stand-in) pipeline is given."""

    def __init__(self, usages: dict[str, Usage]) -> None:
        self.usages = usages

    def estimate(self, pipeline: str) -> Usage:
        return self.usages[pipeline]


def _usage(stages: int, tcam_kbit: float, phv_bits: int) -> Usage:
    return Usage(stages=stages, tables=4, sram_kbit=10.0, tcam_kbit=tcam_kbit, entries=100,
                 phv_bits=phv_bits, throughput_gpps=1.2, latency_ns=300.0)


def test_the_code_layout_that_fits_the_limits_wins_over_fewer_stages() -> None:
    """Seed 0 of the IoT search: a 5-round booster's shared codes took as few stages as its
    per-tree codes and fewer PHV bits, but 1,276 Kbit of TCAM against the 800 allowed; the
    layout that fits must be the one shipped, not a cut to fewer rounds."""
    target = _CannedTarget({"shared": _usage(10, 1276.0, 1286),
                            "per_tree": _usage(10, 726.0, 2318)})
    limits = Limits(stages=12, tcam_kbit=800.0)
    assert fewest_stages(target, ["shared", "per_tree"]) == "shared"  # no limits: stages, PHV
    assert fewest_stages(target, ["shared", "per_tree"], limits) == "per_tree"
    target.usages["per_tree"] = _usage(11, 726.0, 2318)  # fits in more stages: still it
    assert fewest_stages(target, ["shared", "per_tree"], limits) == "per_tree"
    target.usages["shared"] = _usage(9, 700.0, 1286)  # both fit: the fewest stages
    assert fewest_stages(target, ["shared", "per_tree"], limits) == "shared"
