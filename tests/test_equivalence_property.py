"""Property: for random small datasets and every family, the generated tables (as written to the
control-plane JSON and read back) compute exactly what the quantised model computes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.models.base import all_families, requires_dense
from homunculus.passes.encode import encode_for_target
from homunculus.passes.lower import lower
from homunculus.passes.switch import MAX_SIGN_CLASSES, lower_for_switch
from homunculus.targets.p4.entries import read_runtime_entries, runtime_entries
from homunculus.targets.p4.twin import simulate, with_installed_entries

FAMILIES = sorted(n for n, f in all_families().items() if not requires_dense(f))  # tables


@st.composite
def small_problems(draw: st.DrawFn):
    n_features = draw(st.integers(1, 3))
    widths = [draw(st.sampled_from([1, 3, 8, 12, 16])) for _ in range(n_features)]
    n_classes = draw(st.integers(2, 4))
    n = draw(st.integers(12, 60))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = np.stack([rng.integers(0, 1 << w, n) for w in widths], axis=1)
    y = rng.integers(0, n_classes, n)
    y[:n_classes] = np.arange(n_classes)  # every class present
    y[n_classes:2 * n_classes] = np.arange(n_classes)  # at least twice
    probe = np.stack([rng.integers(0, 1 << w, 200) for w in widths], axis=1)
    probe[0], probe[1] = 0, [(1 << w) - 1 for w in widths]  # the extremes of every width
    return widths, x, y, n_classes, probe, seed


def check_family(family: str, widths, x, y, n_classes, probe, seed, supports_range,
                 merge_to: int | None = None) -> None:
    fam = all_families()[family]
    feats = [FeatureDecl(f"x{i}", w) for i, w in enumerate(widths)]
    ds = make_dataset(feats, x, [f"c{v}" for v in y], x[:2], [f"c{v}" for v in y[:2]], "prop")
    params = fam.default_params()
    trained = fam.train(params, ds.x_train, ds.y_train, ds.n_classes, ds.widths, seed)
    verdict = VerdictPlan(kind=VerdictKind.DROP, drop=frozenset({0}))
    pipeline = encode_for_target(
        lower(trained.quantised, ds.features, ds.class_labels, verdict, trained.winner_to_class,
              merge_to), supports_range)
    expected = trained.predict_quantised(np.vstack([ds.x_train, probe]))
    switch = lower_for_switch(pipeline)  # what a switch executes, installed from its entries
    installed = read_runtime_entries(runtime_entries(switch, program_name="p"), switch)
    for form in (pipeline, with_installed_entries(switch, installed)):
        twin = simulate(form, np.vstack([ds.x_train, probe]))
        np.testing.assert_array_equal(twin.class_index, expected)
        # the verdict follows the class: class 0 dropped, others forwarded
        np.testing.assert_array_equal(twin.fields["verdict_drop"], (expected == 0).astype(int))


@pytest.mark.parametrize("family", FAMILIES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=small_problems(), supports_range=st.booleans(),
       merge_to=st.sampled_from([None, 1, 2]))
def test_generated_tables_equal_quantised_model(family, problem, supports_range, merge_to) -> None:
    widths, x, y, n_classes, probe, seed = problem
    check_family(family, widths, x, y, n_classes, probe, seed, supports_range, merge_to)


@pytest.mark.parametrize("family", FAMILIES)
def test_exhaustive_on_narrow_features(family) -> None:
    """With 3+4 bit features every possible input is checked."""
    rng = np.random.default_rng(1)
    widths = [3, 4]
    x = np.stack([rng.integers(0, 8, 80), rng.integers(0, 16, 80)], axis=1)
    y = (x[:, 0] + x[:, 1]) % 3
    grid = np.array([[a, b] for a in range(8) for b in range(16)])
    check_family(family, widths, x, y, 3, grid, 0, supports_range=False)


@pytest.mark.parametrize("family", ["gnb", "rf", "svm"])
def test_many_classes_take_the_tournament(family) -> None:
    """Beyond MAX_SIGN_CLASSES classes the switch arg-max is a tournament of sign gateways."""
    rng = np.random.default_rng(2)
    n_classes = MAX_SIGN_CLASSES + 3
    x = np.stack([rng.integers(0, 256, 400), rng.integers(0, 16, 400)], axis=1)
    y = (x[:, 0] // 24 + x[:, 1]) % n_classes
    probe = np.stack([rng.integers(0, 256, 300), rng.integers(0, 16, 300)], axis=1)
    check_family(family, [8, 4], x, y, n_classes, probe, 0, supports_range=False)
