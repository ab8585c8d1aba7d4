"""Selection on small data: repeated folds, and the defaults kept unless beaten significantly."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.search.problem import default_repeats, plan_folds, repeated_ratio
from homunculus.search.study import (
    DEFAULT_ATTR,
    FOLDS_ATTR,
    SIGNIFICANT_T,
    Budget,
    fail_stale_trials,
    pick_best,
    significantly_better,
    warm_start,
)


def dataset(n: int, groups: bool = False):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 2))
    y = np.array([f"c{v}" for v in (x[:, 0] > 128).astype(int)])
    feats = [FeatureDecl("a", 8), FeatureDecl("b", 8)]
    cut = int(n * 0.75)
    ds = make_dataset(feats, x[:cut], y[:cut], x[cut:], y[cut:], "t")
    if groups:
        from dataclasses import replace
        ds = replace(ds, groups_train=np.arange(cut) // 3)
    return ds


@pytest.mark.parametrize(("rows", "repeats"), [(100, 4), (500, 4), (501, 2), (1000, 2),
                                               (1001, 1)])
def test_small_data_repeats_its_folds(rows: int, repeats: int) -> None:
    assert default_repeats(rows) == repeats


def test_repeated_folds_validate_every_row_four_times() -> None:
    ds = dataset(160)  # 120 training rows
    scheme, folds = plan_folds(ds, seed=3)
    assert scheme == "5 stratified folds x 4 repeats" and len(folds) == 20
    counts = np.bincount(np.concatenate([val for _, val in folds]), minlength=120)
    assert (counts == 4).all()
    for fit, val in folds:
        assert not set(fit) & set(val) and len(fit) + len(val) == 120
    assert repeated_ratio(folds) == pytest.approx(24 / 96)


def test_explicit_folds_grouped_and_large_data_are_not_repeated() -> None:
    assert plan_folds(dataset(160), seed=0, n_folds=5)[0] == "5 stratified folds"
    assert "repeats" not in plan_folds(dataset(160, groups=True), seed=0)[0]
    scheme, folds = plan_folds(dataset(1600), seed=0)  # 1,200 training rows: 3 folds
    assert scheme == "3 stratified folds" and repeated_ratio(folds) is None


def test_corrected_t_by_hand() -> None:
    challenger, incumbent = [0.9, 1.0, 0.8, 1.0], [0.8, 0.9, 0.8, 0.9]
    diff = np.array([0.1, 0.1, 0.0, 0.1])
    t = diff.mean() / math.sqrt(diff.var(ddof=1) * (1 / 4 + 0.25))  # = 0.075 / 0.0354 = 2.12
    assert t > SIGNIFICANT_T
    assert significantly_better(challenger, incumbent, 0.25)
    # the same differences on folds that overlap more (a larger ratio) are not significant:
    # t = 0.075 / sqrt(0.0025 * (1/4 + 3)) = 0.83
    assert not significantly_better(challenger, incumbent, 3.0)
    assert not significantly_better([0.9] * 4, [0.9] * 4, 0.25)  # equal: keep the incumbent
    assert significantly_better([0.9] * 4, [0.8] * 4, 0.25)  # better on every fold, no spread
    assert significantly_better([0.9] * 4, [0.8] * 5, 0.25)  # not the same folds: by metric


def trial(number: int, metric: float, folds: list[float], default: bool = False,
          entries: int = 10) -> optuna.trial.FrozenTrial:
    attrs = {"feasible": True, "metric": metric, "usage": {"entries": entries},
             FOLDS_ATTR: folds, "index": number}
    if default:
        attrs[DEFAULT_ATTR] = True
    return optuna.trial.create_trial(params={}, distributions={}, values=[metric],
                                     user_attrs=attrs)


def test_small_data_keeps_the_default_unless_beaten_significantly() -> None:
    default = trial(0, 0.90, [0.9, 0.9, 0.9, 0.9], default=True)
    lucky = trial(1, 0.925, [1.0, 0.8, 1.0, 0.9])  # higher mean, large spread: t = 0.37
    clear = trial(2, 0.975, [1.0, 0.95, 1.0, 0.95])  # t = 0.075 / 0.0204 = 3.7
    objectives = ("metric",)
    assert pick_best([default, lucky], objectives) is lucky  # large data: the best metric
    assert pick_best([default, lucky], objectives, cv_ratio=0.25) is default
    assert pick_best([default, lucky, clear], objectives, cv_ratio=0.25) is clear
    # the best of several defaults is the incumbent
    other = trial(3, 0.92, [0.92] * 4, default=True)
    assert pick_best([default, other, lucky], objectives, cv_ratio=0.25) is other


def test_warm_start_marks_the_defaults_and_a_requeue_keeps_the_mark(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="s")
    warm_start(study, ["dt", "gnb"], Budget(trials=10))
    waiting = study.get_trials(deepcopy=False)
    assert [t.user_attrs.get(DEFAULT_ATTR) for t in waiting] == [True, True]
    first = study.ask()  # the first default starts, then its process dies
    assert first.user_attrs.get(DEFAULT_ATTR)
    fail_stale_trials(study)
    again = [t for t in study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.WAITING]
    assert len(again) == 2 and all(t.user_attrs.get(DEFAULT_ATTR) for t in again)
