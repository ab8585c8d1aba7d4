"""The compiler's sampler: a softmax over families, TPE within a family."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

from homunculus.models.base import default_configurations, get_family, sqrt_feature_share
from homunculus.search.problem import feature_param
from homunculus.search.study import (
    FAMILY_TEMPERATURE,
    STARTUP_TRIALS,
    Budget,
    FamilySampler,
    best_feasible,
    make_sampler,
    perturb,
    warm_features,
    warm_start,
)

FAMILIES = ["dt", "rf", "gnb", "cnb"]


def finished(family: str, metric: float, feasible: bool = True) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params={"family": family},
        distributions={"family": optuna.distributions.CategoricalDistribution(FAMILIES)},
        values=[metric], user_attrs={"metric": metric, "feasible": feasible, "family": family})


def test_families_close_to_the_leader_keep_their_chance() -> None:
    study = optuna.create_study(direction="maximize")
    for family, metric, ok in (("dt", 0.90, True), ("rf", 0.88, True), ("gnb", 0.60, True),
                               ("dt", 0.85, True)):
        study.add_trial(finished(family, metric, ok))
    sampler = make_sampler("tpe", 0, 20)
    assert isinstance(sampler, FamilySampler)
    w = dict(zip(FAMILIES, sampler.family_weights(study, FAMILIES), strict=True))
    assert w["cnb"] == pytest.approx(w["dt"])  # untried: level with the leader
    assert w["rf"] / w["dt"] == pytest.approx(math.exp(-0.02 / FAMILY_TEMPERATURE))
    assert w["gnb"] < 1e-2  # 0.3 behind: fades out
    assert sum(w.values()) == pytest.approx(1.0)


def test_never_feasible_families_fall_behind_with_each_try() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(finished("dt", 0.9))
    study.add_trial(finished("rf", 0.95, feasible=False))
    once = make_sampler("tpe", 0, 20).family_weights(study, FAMILIES)[1]
    study.add_trial(finished("rf", 0.95, feasible=False))
    assert make_sampler("tpe", 0, 20).family_weights(study, FAMILIES)[1] < once


def toy(trial: optuna.Trial) -> float:
    family = trial.suggest_categorical("family", FAMILIES)
    x = trial.suggest_float(f"{family}_x", 0.0, 1.0)
    metric = {"dt": 0.9, "rf": 0.8, "gnb": 0.5, "cnb": 0.7}[family] - (x - 0.3) ** 2
    trial.set_user_attr("metric", metric)
    trial.set_user_attr("feasible", True)
    return metric


def test_a_short_search_is_the_start_of_a_long_one() -> None:
    """The sampler does not look at the budget: the benchmark's 20-trial results are the
    first 20 trials of its 50-trial searches."""
    drawn = []
    for budget in (12, 30):
        study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", 7, budget))
        for family in FAMILIES:
            study.enqueue_trial({"family": family})
        study.optimize(toy, n_trials=budget)
        drawn.append([t.params for t in study.trials])
    assert drawn[0] == drawn[1][:12]
    late = [p["family"] for p in drawn[1][12:]]
    assert late.count("dt") > late.count("gnb")  # the leader gets most of the later trials


def test_a_neighbour_keeps_the_family_and_stays_in_range() -> None:
    dists = {"family": optuna.distributions.CategoricalDistribution(FAMILIES),
             "dt_depth": optuna.distributions.IntDistribution(1, 12),
             "dt_leaf": optuna.distributions.IntDistribution(1, 32, log=True),
             "dt_rate": optuna.distributions.FloatDistribution(0.05, 1.0, log=True),
             "merge": optuna.distributions.CategoricalDistribution([False, True])}
    params = {"family": "dt", "dt_depth": 12, "dt_leaf": 1, "dt_rate": 0.05, "merge": False}
    incumbent = optuna.trial.create_trial(params=params, distributions=dists, values=[0.9],
                                          user_attrs={"metric": 0.9, "feasible": True})
    rng = np.random.RandomState(0)
    moved = {name: 0 for name in params}
    for _ in range(200):
        out = perturb(incumbent, rng)
        assert out["family"] == "dt" and set(out) == set(params)
        changed = [n for n in params if out[n] != params[n]]
        assert changed  # every move changes something
        for name in changed:
            moved[name] += 1
            assert dists[name]._contains(dists[name].to_internal_repr(out[name]))
    assert moved["family"] == 0 and min(moved[n] for n in params if n != "family") > 20


def test_best_feasible_skips_infeasible_trials() -> None:
    trials = [finished("dt", 0.8), finished("rf", 0.95, feasible=False), finished("gnb", 0.85),
              finished("cnb", 0.85)]
    assert best_feasible(trials) is trials[2]  # the earlier of two equal ones
    assert best_feasible(trials[1:2]) is None


def test_local_trials_perturb_the_best_feasible_trial() -> None:
    """With ``local`` = 1 every trial after the start-up is a neighbour of the incumbent: same
    family, and its parameter near the incumbent's; with ``local`` = 0 none is."""
    drawn = {}
    for share in (0.0, 1.0):
        study = optuna.create_study(direction="maximize",
                                    sampler=make_sampler("tpe", 3, 30, local=share))
        for family in FAMILIES:
            study.enqueue_trial({"family": family, f"{family}_x": 0.9})
        study.optimize(toy, n_trials=30)
        drawn[share] = study.trials
    local = drawn[1.0]

    def incumbent(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
        return max(trials, key=lambda u: (u.user_attrs["metric"], -u.number))

    for t in local[STARTUP_TRIALS:]:
        best = incumbent(local[:t.number])
        assert t.params["family"] == best.params["family"] and t.params != best.params
    assert incumbent(local).user_attrs["metric"] > incumbent(
        local[:STARTUP_TRIALS]).user_attrs["metric"] + 0.05  # the moves climb
    plain = drawn[0.0]  # the same start-up trials, then TPE's draws
    assert [t.params for t in plain[:STARTUP_TRIALS]] == [t.params for t in
                                                          local[:STARTUP_TRIALS]]
    assert [t.params for t in plain[STARTUP_TRIALS:]] != [t.params for t in
                                                          local[STARTUP_TRIALS:]]


def test_the_warm_start_uses_the_features_the_default_tree_splits_on() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (400, 6))
    y = (x[:, 2] > 128).astype(int) + 2 * (x[:, 4] > 64).astype(int)
    data = SimpleNamespace(x_train=x, y_train=y)
    chosen = warm_features(SimpleNamespace(select_features=True, dataset=data, seed=0))
    assert chosen == {feature_param(i): i in (2, 4) for i in range(6)}
    assert warm_features(SimpleNamespace(select_features=False, dataset=data, seed=0)) == {}
    flat = SimpleNamespace(x_train=x, y_train=np.zeros(400, dtype=int))
    assert warm_features(SimpleNamespace(select_features=True, dataset=flat, seed=0)) == {}


def test_the_warm_start_queues_the_feature_set_with_every_default() -> None:
    study = optuna.create_study(direction="maximize")
    features = {feature_param(0): True, feature_param(1): False}
    warm_start(study, ["dt", "rf"], Budget(trials=10), features=features, n_features=2)
    queued = [t.system_attrs["fixed_params"] for t in study.trials]
    assert [q["family"] for q in queued] == ["dt", "rf", "rf"]  # rf: a data default
    assert all(q[feature_param(0)] is True and q[feature_param(1)] is False for q in queued)
    assert queued[2]["rf_max_features"] == 1.0  # sqrt(1) of the one selected feature


def test_the_warm_start_queues_every_first_default_before_the_data_defaults() -> None:
    study = optuna.create_study(direction="maximize")
    warm_start(study, ["rf", "xgb", "dt"], Budget(trials=12), n_features=13)
    queued = [t.system_attrs["fixed_params"] for t in study.trials]
    assert [q["family"] for q in queued] == ["rf", "xgb", "dt", "rf", "xgb"]
    assert [queued[i]["rf_max_features"] for i in (0, 3)] == [0.5, 0.2308]
    assert queued[3]["rf_n_estimators"] == 64 and queued[3]["rf_max_depth"] == 10
    assert queued[1]["xgb_colsample"] == 1.0 and queued[4]["xgb_colsample"] == 0.5
    assert all(q["merge_tables"] is False for q in queued)  # a default is the plain layout
    capped = optuna.create_study(direction="maximize")
    warm_start(capped, ["rf", "xgb", "dt"], Budget(trials=8), n_features=13)
    assert [t.system_attrs["fixed_params"]["family"] for t in capped.trials] == \
        ["rf", "xgb", "dt", "rf"]  # at most half the budget
    plain = optuna.create_study(direction="maximize")  # no feature count: first defaults only
    warm_start(plain, ["rf", "xgb", "dt"], Budget(trials=10))
    assert [t.system_attrs["fixed_params"]["family"] for t in plain.trials] == ["rf", "xgb", "dt"]


def test_the_forest_default_keeps_a_few_trees_under_an_entries_limit() -> None:
    rf = get_family("rf")
    (free,) = rf.data_defaults(7)
    assert free["rf_max_depth"] == 10 and free["rf_max_features"] == 0.2858  # 2 of 7
    (tight,) = rf.data_defaults(7, max_entries=2000)  # 250 leaves a tree: depth 7
    assert tight["rf_max_depth"] == 7 and tight["rf_max_features"] == 0.5
    assert rf.data_defaults(7, max_entries=10**6)[0]["rf_max_depth"] == 10
    assert rf.data_defaults(7, max_entries=3)[0]["rf_max_depth"] == 1
    study = optuna.create_study(direction="maximize")
    warm_start(study, ["rf"], Budget(trials=10), n_features=7, max_entries=2000)
    queued = [t.system_attrs["fixed_params"] for t in study.trials]
    assert queued[1]["rf_max_depth"] == 7
    # a forest of the default's size fits the limit it was sized for
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3000, 7))
    y = (x[:, 0] + rng.integers(0, 64, 3000) > x[:, 1]).astype(int)
    model = rf.train({**tight, "rf_n_estimators": 8}, x, y, 2, (8,) * 7, 0).quantised
    assert sum(sum(f < 0 for f in t.feature) for t in model.trees) <= 2000


def test_the_data_defaults_follow_the_number_of_features() -> None:
    assert sqrt_feature_share(13, 0.2, 1.0) == 0.2308  # floor(sqrt(13)) = 3 of 13
    assert sqrt_feature_share(4, 0.2, 1.0) == 0.5
    assert sqrt_feature_share(7, 0.2, 1.0) == 0.2858  # 0.2857 x 7 would draw one feature
    assert sqrt_feature_share(100, 0.2, 1.0) == 0.2  # within the search space
    for n in range(1, 300):  # the features scikit-learn draws: exactly floor(sqrt(n))
        assert int(sqrt_feature_share(n, 0.0, 1.0) * n) == int(n ** 0.5)
    assert get_family("xgb").data_defaults(3) == []  # too few features to draw from
    first, second = default_configurations(get_family("xgb"), 13)
    assert first == get_family("xgb").default_params() and second["xgb_colsample"] == 0.5
    assert default_configurations(get_family("dt"), 13) == [get_family("dt").default_params()]
    rng = np.random.default_rng(0)  # the column draw reaches xgboost
    x = rng.integers(0, 256, (300, 8))
    y = (x[:, 0] + x[:, 3] > 256).astype(int)
    xgb = get_family("xgb")
    models = [xgb.train(c, x, y, 2, (8,) * 8, 0).quantised for c in (first, second)]
    assert models[0] != models[1]
