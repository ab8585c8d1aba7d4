"""Iris, wine and the IoT example on the switch targets: every family's compiled pipeline against
the same family's scikit-learn (or xgboost) model with default settings trained on the whole
training set.

Data: scikit-learn's bundled iris (150 x 4, 3 classes) and wine (178 x 13, 3 classes), and the
bundled IoT example (``examples/iot/iot_features.csv``, 6,000 x 7, 5 classes, the spec's widths).
Split: stratified 70 % / 30 % with ``random_state = split``. Iris and wine features are scaled to
8-bit integers with the training split's minimum and maximum, ``round(255 * (x - min) / (max -
min))`` clipped to 0..255; the IoT features are integers already. The reference models are
trained on the same integers. Each compile is the real thing
(cross-validated search with the family forced, the model trained on the whole training
set, quantise, lower, emit, verify
the twin at 100 %) for Tofino (TNA) and bmv2 (v1model).

    python bench/small_tabular.py [--splits 0 1 2 3 4] [--trials 12] [--families dt rf ...]

Prints a markdown table (means over the splits) and writes nothing into the source tree.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from common import machine, markdown_table, source_note, source_state
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split
from sklearn.naive_bayes import CategoricalNB, GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier

from homunculus.compile import CompileOptions, compile_plan
from homunculus.frontend.yaml_spec import plan_from_yaml

FAMILIES = ("dt", "rf", "xgb", "gnb", "cnb", "svm", "kmeans")
TARGETS = ("tofino", "bmv2")
DATASETS = ("iris", "wine", "iot")
IOT = Path(__file__).resolve().parent.parent / "examples" / "iot"
IOT_WIDTHS = {"ip_len": 16, "ttl": 8, "proto": 8, "dscp_byte": 8, "src_port": 16, "dst_port": 16,
              "iat_bucket": 8}


def to_uint8(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = train.min(axis=0), train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)

    def scale(x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(255 * (x - lo) / span), 0, 255).astype(np.int64)

    return scale(train), scale(test)


def split(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                         list[int]]:
    """Train and test features and labels, and the features' widths."""
    if name == "iot":
        table = pd.read_csv(IOT / "iot_features.csv")
        x = table[list(IOT_WIDTHS)].to_numpy()
        y = pd.factorize(table["device"], sort=True)[0]
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed,
                                                  stratify=y)
        return x_tr, x_te, y_tr, y_te, list(IOT_WIDTHS.values())
    data = {"iris": load_iris, "wine": load_wine}[name]()
    x_tr, x_te, y_tr, y_te = train_test_split(data.data, data.target, test_size=0.3,
                                              random_state=seed, stratify=data.target)
    x_tr, x_te = to_uint8(x_tr, x_te)
    return x_tr, x_te, y_tr, y_te, [8] * x_tr.shape[1]


class MajorityKMeans:
    """k-means (scikit-learn defaults) whose clusters vote their training majority class."""

    def __init__(self, seed: int) -> None:
        self.model = KMeans(n_init="auto", random_state=seed)

    def fit(self, x: np.ndarray, y: np.ndarray) -> MajorityKMeans:
        clusters = self.model.fit_predict(x)
        self.label = {c: int(np.bincount(y[clusters == c]).argmax()) for c in set(clusters)}
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.array([self.label[c] for c in self.model.predict(x)])


def reference(family: str, seed: int, widths: list[int]):  # noqa: ANN201  (an estimator)
    return {
        "dt": lambda: DecisionTreeClassifier(random_state=seed),
        "rf": lambda: RandomForestClassifier(random_state=seed),
        "xgb": lambda: XGBClassifier(random_state=seed, n_jobs=1),
        "gnb": GaussianNB,
        "cnb": lambda: CategoricalNB(min_categories=np.asarray([1 << w for w in widths])),
        "svm": lambda: make_pipeline(StandardScaler(), LinearSVC(random_state=seed)),
        "kmeans": lambda: MajorityKMeans(seed),
    }[family]()


def write_data(root: Path, name: str, x_tr, x_te, y_tr, y_te) -> Path:
    cols = [f"f{i}" for i in range(x_tr.shape[1])]
    for part, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        frame = pd.DataFrame(x, columns=cols)
        frame["label"] = [f"class{v}" for v in y]
        frame.to_csv(root / f"{name}_{part}.csv", index=False)
    return root


def spec_text(name: str, widths: list[int], family: str, target: str, trials: int,
              seed: int) -> str:
    features = "\n".join(f"    - {{name: f{i}, width: {w}}}" for i, w in enumerate(widths))
    return f"""name: {name}-{family}-{target}
data:
  path: {name}_train.csv
  test_path: {name}_test.csv
  label: label
  features:
{features}
model:
  name: m
  metric: accuracy
  algorithms: [{family}]
platform:
  target: {target}
search:
  trials: {trials}
  seed: {seed}
"""


def run(dataset: str, seed: int, family: str, target: str, trials: int, root: Path
        ) -> dict[str, float]:
    x_tr, x_te, y_tr, y_te, widths = split(dataset, seed)
    write_data(root, dataset, x_tr, x_te, y_tr, y_te)
    spec = root / f"{dataset}-{family}-{target}.yaml"
    spec.write_text(spec_text(dataset, widths, family, target, trials, seed))
    result = compile_plan(plan_from_yaml(spec),
                          CompileOptions(root / f"out-{family}-{target}", progress=False))
    ref = reference(family, seed, widths).fit(x_tr, y_tr)
    totals = result.report["resources"]["totals"]
    return {"pipeline": result.metrics["pipeline"],
            "sklearn": float(np.mean(ref.predict(x_te) == y_te)),
            "entries": totals["entries"], "stages": totals["stages"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    args = parser.parse_args()
    before = source_state()
    rows: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for seed in args.splits:
                for family in args.families:
                    for target in args.targets:
                        root = Path(tmp) / f"{dataset}-{seed}"
                        root.mkdir(exist_ok=True)
                        rows[(dataset, family, target)].append(
                            run(dataset, seed, family, target, args.trials, root))
    table = []
    for (dataset, family, target), runs in rows.items():
        def mean(key: str, runs=runs) -> float:
            return statistics.fmean(r[key] for r in runs)

        wins = sum(r["pipeline"] >= r["sklearn"] for r in runs)
        gap = 100 * (mean("pipeline") - mean("sklearn"))
        table.append([dataset, family, target, f"{mean('pipeline'):.3f}",
                      f"{mean('sklearn'):.3f}", f"{gap:+.2f}", f"{wins}/{len(runs)}",
                      f"{mean('entries'):.0f}", f"{mean('stages'):.1f}"])
    print(markdown_table(["data", "family", "target", "pipeline acc.", "sklearn default acc.",
                          "difference (points)", "pipeline >= sklearn", "entries",
                          "est. stages"], table))
    print(f"\n{len(args.splits)} splits ({args.splits}), {args.trials} trials per compile. "
          f"{machine()}. {source_note(before)}")


if __name__ == "__main__":
    main()
