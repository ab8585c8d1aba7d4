"""Tests for homunculus.report: report.json / report.html writing and the Pareto helper."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from homunculus.report import derive, pareto_front, render_html, to_jsonable, write_report

HOSTILE = "<script>alert(1)</script>"


def _trial(number: int, rng: random.Random) -> dict[str, Any]:
    family = rng.choice(["decision_tree", "random_forest", "xgboost"])
    depth = rng.randint(2, 10)
    entries = int(depth * rng.randint(40, 400))
    feasible = entries < 2500
    metric: float | None = round(0.7 + 0.025 * depth - rng.random() * 0.05, 4)
    if number % 11 == 5:
        metric = None  # failed before an evaluation
    usage = {
        "stages": depth,
        "tables": depth + 1,
        "entries": entries,
        "sram_kbit": entries * 0.12,
        "tcam_kbit": entries * 0.03,
    }
    return {
        "number": number,
        "family": family,
        "params": {"max_depth": depth, "n_bits": 8},
        "state": "COMPLETE" if metric is not None else "FAIL",
        "feasible": feasible,
        "metric": metric,
        "entries": entries,
        "binding": None if feasible else "entries",
        "usage": usage,
    }


def make_report(n_trials: int = 40, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    trials = [_trial(i, rng) for i in range(n_trials)]
    feas = [t for t in trials if t["feasible"] and t["metric"] is not None]
    best = max(feas, key=lambda t: t["metric"])
    labels = ["benign", "ddos", "portscan"]
    return {
        "name": "iot-anomaly",
        "target": "tofino1",
        "metric": "macro_f1",
        "class_labels": labels,
        "metrics": {"float": 0.9312, "quantised": 0.9287, "pipeline": 0.9281, "agreement": 0.99734},
        "trials": trials,
        "best_trial": best["number"],
        "confusion_matrix": {"labels": labels, "matrix": [[812, 9, 3], [14, 455, 1], [2, 0, 377]]},
        "resources": {
            "stages": [
                {
                    "stage": 0,
                    "tables": ["feat_len", "feat_proto"],
                    "entries": 96,
                    "sram_bits": 12288,
                    "tcam_bits": 3072,
                },
                {
                    "stage": 1,
                    "tables": ["tree_level_1"],
                    "entries": 512,
                    "sram_bits": 65536,
                    "tcam_bits": 0,
                },
                {
                    "stage": 2,
                    "tables": ["tree_level_2", "vote"],
                    "entries": 1024,
                    "sram_bits": 131072,
                    "tcam_bits": 16384,
                },
            ],
            "totals": {
                "stages": 3,
                "tables": 5,
                "entries": 1632,
                "sram_kbit": 208.9,
                "tcam_kbit": 19.46,
                "phv_bits": 312,
                "latency_ns": 410.5,
                "throughput_gpps": 4.8,
            },
            "limits": {
                "stages": 12,
                "tables": None,
                "entries": 2500,
                "sram_kbit": 1280.0,
                "tcam_kbit": 440.0,
                "phv_bits": 4096,
                "latency_ns": None,
                "throughput_gpps": 1.0,
            },
            "feasible": True,
            "binding": "entries",
            "violations": [],
        },
        "candidates": [
            {"family": "decision_tree", "allowed": True, "reason": "fits match-action"},
            {"family": "mlp", "allowed": False, "reason": "needs multiplications"},
        ],
        "search": {
            "trials": n_trials,
            "infeasible": sum(not t["feasible"] for t in trials),
            "seconds": 42.7,
            "sampler": "TPESampler",
            "seed": 7,
        },
    }


def _write(tmp_path: Path, report: dict[str, Any]) -> tuple[dict[str, Any], str]:
    write_report(tmp_path, report)
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    return data, (tmp_path / "report.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------- write_report


def test_write_report_json_round_trips(tmp_path: Path) -> None:
    report = make_report()
    data, _ = _write(tmp_path, report)
    for key, value in report.items():
        assert data[key] == value
    assert set(data) == set(report) | {"derived"}
    assert data["derived"] == json.loads(json.dumps(derive(report)))


def test_write_report_html_has_plots_and_numbers(tmp_path: Path) -> None:
    report = make_report()
    _, html = _write(tmp_path, report)
    assert html.count("<svg") == 3
    # self-contained: no scripts, no external stylesheets, images or fonts
    for bad in ("<script", "<link", "src=", "@import", 'href="http'):
        assert bad not in html, bad
    assert not re.search(r"url\((?!#)", html)  # only in-document references
    for text in (
        "iot-anomaly",
        "tofino1",
        "macro_f1",
        "0.9312",
        "0.9287",
        "0.9281",
        "99.73%",
        "TPESampler",
        "needs multiplications",
        "tree_level_2",
        "131,072",
        "65.28%",
        "unconstrained",
        "ruled out",
    ):
        assert text in html, text
    n, k = report["search"]["trials"], report["search"]["infeasible"]
    assert f"{n} trials, {k} infeasible" in html
    for label in report["class_labels"]:
        assert label in html


def test_every_trial_is_listed(tmp_path: Path) -> None:
    report = make_report(n_trials=12)
    _, html = _write(tmp_path, report)
    for t in report["trials"]:
        assert (
            json.dumps(t["params"], sort_keys=True, separators=(", ", ": ")).replace('"', "&#34;")
            in html
        )


def test_hostile_strings_are_escaped(tmp_path: Path) -> None:
    report = make_report(n_trials=6)
    report["name"] = HOSTILE
    report["class_labels"] = [HOSTILE, "b", "c"]
    report["confusion_matrix"]["labels"] = [HOSTILE, "$x_1$ & y", "c"]
    report["candidates"][0]["reason"] = HOSTILE
    report["resources"]["stages"][0]["tables"] = [HOSTILE]
    report["trials"][0]["family"] = HOSTILE
    report["metric"] = "f1 $unbalanced"
    _, html = _write(tmp_path, report)
    assert HOSTILE not in html
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<svg") == 3


def test_nan_and_inf_become_null(tmp_path: Path) -> None:
    report = make_report(n_trials=5)
    report["metrics"]["quantised"] = float("nan")
    report["resources"]["totals"]["latency_ns"] = float("inf")
    report["trials"][1]["metric"] = float("-inf")
    data, html = _write(tmp_path, report)
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert data["metrics"]["quantised"] is None
    assert data["resources"]["totals"]["latency_ns"] is None
    assert data["trials"][1]["metric"] is None
    assert "—" in html


def test_to_jsonable_handles_numpy() -> None:
    np = pytest.importorskip("numpy")
    out = to_jsonable({"a": np.float32(0.5), "b": np.array([1, 2]), 3: (np.nan, np.int64(4))})
    assert out == {"a": 0.5, "b": [1, 2], "3": [None, 4]}
    json.dumps(out, allow_nan=False)


def test_minimal_report_renders(tmp_path: Path) -> None:
    data, html = _write(tmp_path, {"name": "bare"})
    assert data["name"] == "bare"
    assert "bare" in html and "<svg" not in html
    assert "No data to plot." in html


def test_partial_optional_keys(tmp_path: Path) -> None:
    report = make_report(n_trials=4)
    del report["search"], report["best_trial"], report["resources"]["limits"]
    report["confusion_matrix"] = {"matrix": [[1, 2], [3, 4]]}
    report["resources"]["stages"][0] = {"stage": 0}
    report["candidates"] = [{"family": "knn"}]
    _, html = _write(tmp_path, report)
    assert html.count("<svg") >= 2
    assert "knn" in html


def test_all_trials_infeasible_without_metric(tmp_path: Path) -> None:
    report = make_report(n_trials=5)
    for t in report["trials"]:
        t.update(feasible=False, metric=None, binding="tcam_kbit")
    report["best_trial"] = None
    _, html = _write(tmp_path, report)
    assert html.count("<svg") == 2  # history + confusion; no feasible points for Pareto
    assert "5 trials" in html


def test_render_html_is_deterministic() -> None:
    report = json.loads(json.dumps(make_report(n_trials=8)))
    assert render_html(report) == render_html(report)


def test_utilisation_and_pareto_in_derived() -> None:
    derived = derive(make_report())
    util = derived["utilisation_pct"]
    assert util["entries"] == pytest.approx(65.28)
    assert util["tables"] is None  # unconstrained
    assert util["throughput_gpps"] == pytest.approx(100 / 4.8, abs=0.01)  # lower bound
    assert derived["pareto_front"]
    best = derived["best_so_far"]
    assert [b[1] for b in best] == sorted(b[1] for b in best)


# ------------------------------------------------------------------------ pareto_front


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], []),
        ([(0.5, 10.0)], [0]),
        ([(0.9, 10), (0.8, 20)], [0]),  # first dominates
        ([(0.9, 20), (0.8, 10)], [0, 1]),  # trade-off
        ([(0.9, 10), (0.9, 10)], [0, 1]),  # duplicates both kept
        ([(0.9, 10), (0.9, 20)], [0]),  # tie in metric: fewer entries wins
        ([(0.9, 10), (0.8, 10)], [0]),  # tie in entries: higher metric wins
        ([(0.7, 5), (0.9, 30), (0.8, 10), (0.75, 40), (0.85, 30), (0.6, 1)], [0, 1, 2, 5]),
        ([(float("nan"), 1), (0.5, 2), (0.9, float("inf"))], [1]),
    ],
)
def test_pareto_front_cases(points: list[tuple[float, float]], expected: list[int]) -> None:
    assert pareto_front(points) == expected


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(3)
    for _ in range(200):
        pts = [(rng.randint(0, 5) / 5, rng.randint(0, 5)) for _ in range(rng.randint(0, 12))]
        assert pareto_front(pts) == _brute_front(pts)


def _brute_front(pts: list[tuple[float, float]]) -> list[int]:
    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    return [
        i
        for i, p in enumerate(pts)
        if math.isfinite(p[0]) and not any(dominates(q, p) for q in pts)
    ]
