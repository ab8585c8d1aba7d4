"""The reference apps over seeded splits, this checkout against a baseline checkout, side by side.

For every app (``examples/<app>/spec.yaml``) and split seed s, the spec is compiled for real --
search, refit, quantise, lower, emit, verify -- with ``search.seed = s``, which also seeds the
train/test split (by capture for traffic, by flow for anomaly and botnet, stratified for iot), once
with this checkout's code and spec and once with the baseline checkout's (``--baseline ROOT``: its
``src`` and ``examples``), alternating, each in a fresh Python process, so that both see the same
machine load. Reported: the generated pipeline's test metric per split, mean and sample standard
deviation, and how often this checkout is better.

    python bench/splits.py --baseline /path/to/main/checkout [--apps anomaly traffic botnet]
                           [--seeds 0 1 2 3 4] [--trials N]

Writes nothing into either tree (specs are copied to a temporary directory with absolute data
paths; outputs go there too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import REPO, machine, markdown_table, source_note, source_state

APPS = ("anomaly", "traffic", "botnet")


def absolute_spec(spec: Path, seed: int, trials: int | None, out: Path) -> Path:
    """A copy of ``spec`` with ``search.seed`` = ``seed`` and data paths made absolute."""
    data = yaml.safe_load(spec.read_text())
    base = spec.parent.resolve()
    section = data.get("data") or {}
    for key in ("path", "test_path"):
        if section.get(key):
            section[key] = str(base / section[key])
    traffic = data.get("traffic") or {}
    if traffic.get("pcaps"):
        traffic["pcaps"] = [str(base / p) for p in traffic["pcaps"]]
    labels = traffic.get("labels") or {}
    if labels.get("path"):
        labels["path"] = str(base / labels["path"])
    data.setdefault("search", {})["seed"] = seed
    if trials is not None:
        data["search"]["trials"] = trials
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def per_class_f1(report: dict[str, Any]) -> dict[str, float]:
    """F1 per class from the report's confusion matrix (rows: truth, columns: prediction)."""
    cm = report["confusion_matrix"]
    out = {}
    for i, label in enumerate(cm["labels"]):
        tp = cm["matrix"][i][i]
        predicted = sum(row[i] for row in cm["matrix"])
        actual = sum(cm["matrix"][i])
        out[label] = 2 * tp / (predicted + actual) if predicted + actual else 0.0
    return out


def worker(spec: Path, out: Path) -> None:
    """Compile ``spec`` into ``out`` with whatever ``homunculus`` is importable; print JSON."""
    from homunculus.compile import CompileOptions, compile_plan
    from homunculus.frontend.yaml_spec import plan_from_yaml

    start = time.monotonic()
    result = compile_plan(plan_from_yaml(spec), CompileOptions(out, progress=False))
    report = result.report
    m = report["metrics"]
    print(json.dumps({
        "family": result.family, "pipeline": m["pipeline"], "quantised": m["quantised"],
        "float": m["float"], "cv": m.get("validation_quantised"),
        "per_class_f1": per_class_f1(report), "totals": report["resources"]["totals"],
        "feasible": report["resources"]["feasible"],
        "table": (report.get("category_table") or {}).get("entries"),
        "decide_at": m.get("decide_at", 0), "seconds": time.monotonic() - start}))


def run_one(root: Path, app: str, seed: int, trials: int | None, tmp: Path) -> dict[str, Any]:
    """One compile of ``root``'s app spec with ``root``'s code, in a fresh process."""
    tag = f"{root.name}-{app}-{seed}"
    spec = absolute_spec(root / "examples" / app / "spec.yaml", seed, trials,
                         tmp / f"{tag}.yaml")
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec), str(tmp / tag)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--apps", nargs="+", default=list(APPS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--trials", type=int, default=None, help="default: each spec's")
    args = parser.parse_args()
    before = source_state()
    roots = {"baseline": args.baseline.resolve(), "this": REPO}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hmn-splits-") as tmp:
        for app in args.apps:
            for seed in args.seeds:
                for name, root in roots.items():
                    row = run_one(root, app, seed, args.trials, Path(tmp))
                    row["seed"] = seed
                    results.setdefault((app, name), []).append(row)
                    print(f"{app} seed {seed} {name}: "
                          f"{row.get('pipeline', row.get('error'))}", file=sys.stderr)
    summary, per_seed = [], []
    for app in args.apps:
        base, ours = results[(app, "baseline")], results[(app, "this")]
        pairs = [(b, o) for b, o in zip(base, ours, strict=True)
                 if "pipeline" in b and "pipeline" in o]
        diffs = [o["pipeline"] - b["pipeline"] for b, o in pairs]
        summary.append([
            app, mean_std([r["pipeline"] for r in base if "pipeline" in r]),
            mean_std([r["pipeline"] for r in ours if "pipeline" in r]),
            f"{sum(d > 1e-9 for d in diffs)} / {sum(abs(d) <= 1e-9 for d in diffs)} / "
            f"{sum(d < -1e-9 for d in diffs)}", mean_std(diffs),
            ", ".join(r.get("family", "error") for r in base),
            ", ".join(r.get("family", "error") for r in ours)])
        for name, rows in (("baseline", base), ("this", ours)):
            for r in rows:
                t = r.get("totals", {})
                per_seed.append([app, r["seed"], name, r.get("family", r.get("error")),
                                 f"{r['pipeline']:.4f}" if "pipeline" in r else "-",
                                 f"{r['cv']:.4f}" if r.get("cv") is not None else "-",
                                 t.get("stages", "-"), t.get("entries", "-"),
                                 r.get("table") or "-", r.get("decide_at") or "-",
                                 f"{r.get('seconds', 0):.0f}"])
    print(markdown_table(["app", "baseline test (mean ± sd)", "this test (mean ± sd)",
                          "this better / tied / worse", "difference (mean ± sd)",
                          "baseline families", "this families"], summary))
    print()
    print(markdown_table(["app", "seed", "code", "family", "test", "cv", "stages", "entries",
                          "category table", "decide at", "seconds"], per_seed))
    print(f"\nSeeds {args.seeds}; trials: {args.trials or 'each spec'}'s; baseline "
          f"{roots['baseline']}; wall {time.monotonic() - started:.0f} s. {machine()}. "
          f"{source_note(before)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
