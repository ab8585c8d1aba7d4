"""The compiler's sampler: a softmax over families, TPE within a family."""

from __future__ import annotations

import math

import optuna
import pytest

from homunculus.search.study import FAMILY_TEMPERATURE, FamilySampler, make_sampler

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
