"""How large a random forest the Tofino budget admits on the IoT example, against bmv2.

Evaluates fixed forests (the family's default, two larger ones, and a 64-tree ask that Tofino
sizes down, ``fit_to_limits``) on split 0 of ``bench/small_tabular.py``'s IoT data for both
switch targets: the trees shipped, estimated stages and entries, feasibility under the
target's default limits, test accuracy and the evaluation's CPU seconds, next to
scikit-learn's default forest. Writes nothing into the source tree.

    python bench/forest_fit.py [--split 0]
    python bench/forest_fit.py --float-grid [--splits 0 1 2]
    python bench/forest_fit.py --eleven-trees [--splits 0 1 2]
    python bench/forest_fit.py --binned [--splits 0 1 2 3 4]
    python bench/forest_fit.py --phv [--split 0]

``--float-grid``: no compile; scikit-learn forests of n trees and depth d (sqrt of the
features per split, ``random_state`` = split) in floating point, mean test accuracy over the
splits: how many trees of which depth the data asks for.

``--eleven-trees``: no compile; what a forest of the 11 depth-10-ish trees a Tofino holds
reaches in floating point when trained otherwise (share of features per split, bootstrap or
not), and forests of random feature subspaces (each tree sees k of the features), against
scikit-learn's default forest.

``--binned``: no compile; forests trained on each feature cut into B quantile bins of the
training data (B - 1 cut points per feature), against the raw features: whether narrower
keys, and so more trees a Tofino stage, could come from coarser thresholds. Also the mean
distinct (feature, threshold) pairs per tree, the bits of the tree's thermometer key.

``--phv``: where the PHV of the largest forest Tofino ships goes (a 64-tree ask, depth 10, half
the features per split): the estimate's bits by kind of metadata field (per-tree threshold
codes, the trees' class scores, the arg-max), as containers and as the fields' own widths,
next to the headers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import load_setup, markdown_table
from small_tabular import reference, spec_text, split, write_data

from homunculus.search.problem import evaluate

FORESTS = (
    {"rf_n_estimators": 10, "rf_max_depth": 6, "rf_min_samples_leaf": 1,
     "rf_max_features": 0.5, "rf_leaf_bits": 4},
    {"rf_n_estimators": 10, "rf_max_depth": 10, "rf_min_samples_leaf": 1,
     "rf_max_features": 0.4, "rf_leaf_bits": 4},
    {"rf_n_estimators": 24, "rf_max_depth": 10, "rf_min_samples_leaf": 1,
     "rf_max_features": 0.4, "rf_leaf_bits": 4},
    {"rf_n_estimators": 64, "rf_max_depth": 10, "rf_min_samples_leaf": 1,
     "rf_max_features": 0.5, "rf_leaf_bits": 4},
)


GRID_TREES = (9, 13, 24, 64, 100)
GRID_DEPTHS = (10, 12, None)


def float_grid(splits: list[int]) -> None:
    """Mean test accuracy of floating-point forests over ``splits``, trees x depth."""
    from sklearn.ensemble import RandomForestClassifier

    data = [split("iot", s) for s in splits]
    rows = []
    for n in GRID_TREES:
        row = [n]
        for depth in GRID_DEPTHS:
            accs = [np.mean(RandomForestClassifier(n, max_depth=depth, max_features="sqrt",
                                                   random_state=s).fit(x_tr, y_tr)
                            .predict(x_te) == y_te)
                    for s, (x_tr, x_te, y_tr, y_te, _) in zip(splits, data, strict=True)]
            row.append(f"{np.mean(accs):.4f}")
        rows.append(row)
    print(markdown_table(["trees"] + [f"depth {d or 'unlimited'}" for d in GRID_DEPTHS], rows))
    print(f"\nIoT splits {splits}, floating point, mean test accuracy.")


ELEVEN = 11
SHARES = ("sqrt", 0.5, 0.7, 1.0)
SUBSPACE_TREES = (11, 22, 33, 64)


def eleven_trees(splits: list[int]) -> None:
    """Mean test accuracy of 11-tree forests trained otherwise, and of subspace forests."""
    from sklearn.ensemble import BaggingClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    data = [split("iot", s) for s in splits]

    def mean_accuracy(make) -> str:  # noqa: ANN001  (seed -> estimator)
        return f"{np.mean([np.mean(make(s).fit(x_tr, y_tr).predict(x_te) == y_te) for s, (x_tr, x_te, y_tr, y_te, _) in zip(splits, data, strict=True)]):.4f}"  # noqa: E501

    rows = [[depth or "unlimited", share, bootstrap,
             mean_accuracy(lambda s, d=depth, f=share, b=bootstrap: RandomForestClassifier(
                 ELEVEN, max_depth=d, max_features=f, bootstrap=b, random_state=s))]
            for depth in GRID_DEPTHS for share in SHARES for bootstrap in (True, False)]
    print(markdown_table(["depth", "features per split", "bootstrap",
                          f"{ELEVEN} trees, test acc."], rows))
    rows = [[n, k, mean_accuracy(lambda s, n=n, k=k: BaggingClassifier(
                DecisionTreeClassifier(max_depth=10), n_estimators=n, max_features=k,
                random_state=s))]
            for n in SUBSPACE_TREES for k in (3, 4, 5)]
    print()
    print(markdown_table(["trees", "features per tree", "depth-10 subspace forest, test acc."],
                         rows))
    print(f"\nscikit-learn's default forest: "
          f"{mean_accuracy(lambda s: RandomForestClassifier(random_state=s))}; "
          f"IoT splits {splits}, floating point, mean test accuracy.")


BIN_COUNTS = (8, 16, 32, None)
BINNED_FORESTS = ((24, 10), (36, 12), (64, 12), (100, None))


def quantile_cuts(x: np.ndarray, bins: int) -> list[np.ndarray]:
    """Per feature, at most ``bins - 1`` cut points: training values at the inner quantiles."""
    inner = np.linspace(0, 1, bins + 1)[1:-1]
    return [np.unique(np.quantile(x[:, j], inner, method="lower")) for j in range(x.shape[1])]


def bin_index(x: np.ndarray, cuts: list[np.ndarray]) -> np.ndarray:
    return np.stack([np.searchsorted(c, x[:, j], side="right") for j, c in enumerate(cuts)],
                    axis=1)


def binned(splits: list[int]) -> None:
    """Mean test accuracy and thresholds per tree of forests on quantile-binned features."""
    from sklearn.ensemble import RandomForestClassifier

    data = [split("iot", s) for s in splits]
    rows = []
    for bins in BIN_COUNTS:
        for trees, depth in BINNED_FORESTS:
            accuracies, thresholds = [], []
            for s, (x_tr, x_te, y_tr, y_te, _) in zip(splits, data, strict=True):
                if bins is not None:
                    cuts = quantile_cuts(x_tr, bins)
                    x_tr, x_te = bin_index(x_tr, cuts), bin_index(x_te, cuts)
                forest = RandomForestClassifier(trees, max_depth=depth, max_features="sqrt",
                                                random_state=s).fit(x_tr, y_tr)
                accuracies.append(np.mean(forest.predict(x_te) == y_te))
                thresholds.append(np.mean([
                    len({(f, t) for f, t in zip(e.tree_.feature, e.tree_.threshold,
                                                strict=True) if f >= 0})
                    for e in forest.estimators_]))
            rows.append([bins or "raw", trees, depth or "unlimited",
                         f"{np.mean(accuracies):.4f}", f"{np.mean(thresholds):.0f}"])
    print(markdown_table(["bins per feature", "trees", "depth", "test acc.",
                          "thresholds per tree (key bits)"], rows))
    print(f"\nIoT splits {splits}, floating point, sqrt of the features per split.")


def phv_breakdown(split_seed: int) -> None:
    """The Tofino PHV estimate of the largest shipped forest, by kind of metadata field."""
    import re
    from collections import Counter

    from homunculus.passes.switch import lower_for_switch
    from homunculus.targets.p4.codegen import build_context
    from homunculus.targets.p4.profiles import TOFINO
    from homunculus.targets.p4.resources import container_bits

    x_tr, x_te, y_tr, y_te, widths = split("iot", split_seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, "iot", x_tr, x_te, y_tr, y_te)
        spec = root / "tofino.yaml"
        spec.write_text(spec_text("iot", widths, "rf", "tofino", 1, split_seed))
        ev = evaluate(load_setup(spec, split_seed).problem, "rf", FORESTS[-1])
    context = build_context(lower_for_switch(ev.pipeline), "tna", program_name="estimate",
                            feature_udp_port=1)
    containers: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for f in context["meta_fields"]:
        kind = re.sub(r"\d+", "N", f["name"])
        containers[kind] += container_bits(f["width"])
        own[kind] += f["width"]
    rows = [[kind, bits, own[kind]] for kind, bits in containers.most_common()]
    headers = ev.usage.phv_bits - sum(containers.values())  # the estimate's remainder
    rows.append(["(headers, the feature header included)", headers, headers])
    print(markdown_table(["metadata fields", "PHV bits (containers)", "bits of the fields"],
                         rows))
    print(f"\n{ev.params['rf_n_estimators']} trees shipped of {FORESTS[-1]['rf_n_estimators']}"
          f" asked; PHV estimate {ev.usage.phv_bits} of Tofino's {TOFINO.phv_bits} bits; "
          f"split {split_seed}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--float-grid", action="store_true")
    parser.add_argument("--eleven-trees", action="store_true")
    parser.add_argument("--binned", action="store_true")
    parser.add_argument("--phv", action="store_true")
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    studies = ((args.float_grid, float_grid, args.splits),
               (args.eleven_trees, eleven_trees, args.splits),
               (args.binned, binned, args.splits), (args.phv, phv_breakdown, args.split))
    for chosen, study, argument in studies:
        if chosen:
            study(argument)
            return
    x_tr, x_te, y_tr, y_te, widths = split("iot", args.split)
    sklearn = float(np.mean(reference("rf", args.split, widths).fit(x_tr, y_tr).predict(x_te)
                            == y_te))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, "iot", x_tr, x_te, y_tr, y_te)
        for target in ("tofino", "bmv2"):
            spec = root / f"{target}.yaml"
            spec.write_text(spec_text("iot", widths, "rf", target, 1, args.split))
            problem = load_setup(spec, args.split).problem
            for params in FORESTS:
                start = time.process_time()
                ev = evaluate(problem, "rf", params)
                seconds = time.process_time() - start
                accuracy = float(np.mean(ev.trained.predict_quantised(x_te) == y_te))
                rows.append([target, params["rf_n_estimators"], ev.params["rf_n_estimators"],
                             params["rf_max_depth"], ev.usage.stages, ev.usage.entries,
                             "yes" if ev.feasibility.feasible else
                             "; ".join(ev.feasibility.violations), f"{accuracy:.4f}",
                             f"{seconds:.1f}"])
    print(markdown_table(["target", "trees asked", "trees shipped", "depth", "est. stages",
                          "entries", "fits", "test acc.", "CPU s"], rows))
    print(f"\nscikit-learn's default forest (100 trees, unlimited depth): {sklearn:.4f}")


if __name__ == "__main__":
    main()
