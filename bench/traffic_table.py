"""The category table's class per value on the traffic example: majority of rows or of captures.

For each capture split s (the example's own split with seed s, as ``homunculus evaluate`` draws
it), a decision tree (min 4 rows per leaf) behind a server-port table of up to 256 entries (every
port seen in at least ``support`` captures) is trained two ways, which differ only in the class
each table entry gets: the class with the most rows ("rows", the rule before this bench) or the
class with the most captures' votes, each capture voting once, shared among its rows' classes
("captures", models/categorical.py). Reported per variant, support and depth: the mean over the
splits of the cross-validated macro-F1 (the search's own folds) and of the test macro-F1. No
search runs: the grid is fixed, so the figures compare the two rules, not a selection.

    python bench/traffic_table.py [--splits 8] [--depths 5 8 10 12] [--supports 1 2 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import REPO, machine, markdown_table, source_state

import homunculus.search.problem as problem_module
from homunculus.compile import build_problem
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.models.categorical import learn_table
from homunculus.search.metrics import score
from homunculus.search.problem import cross_validate, train_configuration

SPEC = REPO / "examples" / "traffic" / "spec.yaml"


def by_rows(column: np.ndarray, y: np.ndarray, groups: np.ndarray | None, feature: int,
            n_classes: int, size: int, support: int):  # noqa: ANN201
    """The same table's values, each with the class of most rows."""
    table = learn_table(column, y, groups, feature, n_classes, size, support)
    if not len(table):
        return table
    inside = np.isin(column, table.values)
    return learn_table(column[inside], y[inside], None, feature, n_classes, len(table), 1)


@contextmanager
def rule(name: str) -> Iterator[None]:
    """Train with the table rule ``name`` ('captures': the library's; 'rows': :func:`by_rows`)."""
    saved = problem_module.learn_table
    problem_module.learn_table = learn_table if name == "captures" else by_rows
    try:
        yield
    finally:
        problem_module.learn_table = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=SPEC)
    ap.add_argument("--splits", type=int, default=8)
    ap.add_argument("--depths", type=int, nargs="+", default=[5, 8, 10, 12])
    ap.add_argument("--supports", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    before = source_state()
    start = time.monotonic()
    cells: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    for seed in range(args.splits):
        problem, _ = build_problem(plan_from_yaml(args.spec, seed=seed), seed)
        ds = problem.dataset
        feature = next(f.name for f in ds.features if f.categorical)
        for name, support, depth in itertools.product(("rows", "captures"), args.supports,
                                                      args.depths):
            params = {"dt_max_depth": depth, "dt_min_samples_leaf": 4, "dt_criterion": "gini",
                      "cat_table": 256, "cat_feature": feature, "cat_support": support}
            with rule(name):
                cv = float(np.mean(cross_validate(problem, "dt", params)))
                trained = train_configuration(problem, "dt", params)
            test = score(problem.metric, ds.y_test, trained.predict_quantised(ds.x_test),
                         ds.n_classes, problem.positive)
            cells.setdefault((name, support, depth), []).append((cv, test))
        print(f"split {seed} done ({time.monotonic() - start:.0f} s)", flush=True)
    rows = []
    for (name, support, depth), values in cells.items():
        rows.append([name, support, depth, f"{statistics.fmean(v[0] for v in values):.4f}",
                     f"{statistics.fmean(v[1] for v in values):.4f}"])
    print(markdown_table(["class of a value", "support", "depth", "CV macro-F1 (mean)",
                          "test macro-F1 (mean)"], rows))
    for name in ("rows", "captures"):
        values = [v for (n, _, _), vs in cells.items() if n == name for v in vs]
        print(f"{name}: all cells, CV {statistics.fmean(v[0] for v in values):.4f}, test "
              f"{statistics.fmean(v[1] for v in values):.4f}")
    print(f"\n{machine()}; {before}; {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
