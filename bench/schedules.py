"""Schedules (issue 11): joint allocation against fixed halves, and a split forest against one
device.

joint: for each app and seed, every model of the schedule is searched once on the shared
Tofino (the same trials for both methods). The integer program then picks one variant per model
(cut and re-solved until the fused program passes the real allocation); the baseline gives each
model a fixed half of what the models may use together (every additive resource of the
integer program, after the shared parser, flow registers and combining table) and takes each
model's best variant within its half. Both choices are fused and placed by the real allocation
pass. Reported: the weighted sum of cross-validated metrics, the sum of test metrics, and
whether the fused program fits.

split: for each seed, the same forest search (algorithms: rf) over a chain of three Tofinos and
over one Tofino (a chain of one: the same partitioner and code compaction, so only the number of
devices differs): test and cross-validated metric, devices used, carry header bytes.

    python bench/schedules.py joint [--trials 20] [--seeds 0 1 2]
    python bench/schedules.py split [--trials 20] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import REPO, machine, markdown_table, mean_std, source_note, source_state

from homunculus.compile import CompileOptions
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.schedule.chain import compile_chain
from homunculus.schedule.driver import search_schedule
from homunculus.schedule.joint import JointInfeasible, select
from homunculus.search.metrics import score

IOT = REPO / "examples" / "iot" / "iot_features.csv"
COMPOSED = REPO / "examples" / "composed" / "spec.yaml"
SPLIT = REPO / "examples" / "split" / "spec.yaml"

IOT_PAIR = {
    "name": "iot-pair",
    "models": [
        {"name": "kind", "algorithms": ["dt", "rf", "xgb", "gnb"],
         "verdict": {"kind": "dscp", "dscp": {"speaker": 34}},
         "data": {"path": str(IOT), "label": "device", "features": [
             {"name": "ip_len", "width": 16, "field": "ipv4.total_len"},
             {"name": "ttl", "width": 8, "field": "ipv4.ttl"},
             {"name": "dst_port", "width": 16}]}},
        {"name": "device", "algorithms": ["dt", "rf", "xgb", "gnb"],
         "verdict": {"kind": "dscp", "dscp": {"camera": 46}},
         "data": {"path": str(IOT), "label": "device", "features": [
             {"name": "ip_len", "width": 16, "field": "ipv4.total_len"},
             {"name": "proto", "width": 8, "field": "ipv4.protocol"},
             {"name": "src_port", "width": 16}, {"name": "dst_port", "width": 16},
             {"name": "iat_bucket", "width": 8}]}},
    ],
    "schedule": "kind | device",
    "platform": {"target": "tofino", "constraints": {"resources": {"stages": 12}}},
    "search": {"trials": 20, "seed": 0},
}


def apps(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Spec files of the benchmark's schedules and the limit that makes the device tight."""
    composed = yaml.safe_load(COMPOSED.read_text())
    composed["platform"]["constraints"]["resources"] = {"stages": 12, "entries": 1200}
    composed_path = tmp / "composed.yaml"
    composed_path.write_text(yaml.safe_dump(composed))
    iot = dict(IOT_PAIR)
    iot["platform"] = {"target": "tofino",
                       "constraints": {"resources": {"stages": 12, "tcam_kbit": 264}}}
    iot_path = tmp / "iot_pair.yaml"
    iot_path.write_text(yaml.safe_dump(iot))
    return {"ad > tc (traffic; entries <= 1200)": (composed_path, "entries 1200"),
            "kind \\| device (IoT table; TCAM <= 264 Kbit)": (iot_path, "tcam 264 Kbit")}


def halves(s: Any) -> dict[str, int] | None:
    """Each model's best variant within half of what the models may use together."""
    choice = {}
    for m in s.order:
        fitting = [i for i, v in enumerate(s.variants[m])
                   if all(v.cost.get(k, 0.0) <= cap / 2 for k, cap in s.capacity.items())]
        if not fitting:
            return None
        choice[m] = max(fitting, key=lambda i: s.variants[m][i].metric)
    return choice


def test_sum(s: Any, choice: dict[str, int]) -> float:
    total = 0.0
    for m in s.order:
        b = s.searched[m].front[choice[m]]
        ds = b.problem.dataset
        total += s.weights[m] * score(b.problem.metric, ds.y_test,
                                      b.trained.predict_quantised(ds.x_test), ds.n_classes,
                                      b.problem.positive)
    return total


def run_joint(trials: int, seeds: list[int]) -> str:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hmn_bench_sched_") as tmp_dir:
        tmp = Path(tmp_dir)
        for app, (spec, _limit) in apps(tmp).items():
            per = {"joint": [], "half": []}
            for seed in seeds:
                plan = plan_from_yaml(spec)
                start = time.monotonic()
                s = search_schedule(plan, CompileOptions(tmp / f"o{seed}", trials=trials,
                                                         seed=seed, progress=False),
                                    seed, tmp / f"s{seed}_{abs(hash(app))}.db")
                try:
                    joint = select(s.variants, s.weights, s.capacity, s.fits).chosen
                except JointInfeasible:
                    joint = None
                half = halves(s)
                for method, choice in (("joint", joint), ("half", half)):
                    if choice is None:
                        per[method].append((seed, None, None, False, None))
                        continue
                    cv = sum(s.weights[m] * s.variants[m][choice[m]].metric for m in s.order)
                    fits = s.composition(choice).feasibility.feasible
                    stages = s.composition(choice).usage.stages
                    per[method].append((seed, cv, test_sum(s, choice), fits, stages))
                print(f"{app} seed {seed}: {time.monotonic() - start:.0f} s", flush=True)
            for method in ("joint", "half"):
                got = per[method]
                ok = [g for g in got if g[1] is not None and g[3]]
                rows.append([app, method, f"{len(ok)}/{len(got)}",
                             mean_std([g[1] for g in ok]) if ok else "-",
                             mean_std([g[2] for g in ok]) if ok else "-",
                             "; ".join(f"s{g[0]}: " + ("none fits its half" if g[1] is None else
                                                        f"cv {g[1]:.4f}, test {g[2]:.4f}, "
                                                        f"{g[4]} stages"
                                                        + ("" if g[3] else " (does not fit)"))
                                       for g in got)])
    return markdown_table(["schedule", "method", "fits", "sum of CV metrics",
                           "sum of test metrics", "per seed"], rows)


def run_split(trials: int, seeds: list[int]) -> str:
    rows = []
    base = yaml.safe_load(SPLIT.read_text())
    base["data"]["path"] = str(IOT)
    with tempfile.TemporaryDirectory(prefix="hmn_bench_split_") as tmp_dir:
        tmp = Path(tmp_dir)
        for label, n in (("chain of 3 Tofinos", 3), ("one Tofino", 1)):
            spec = dict(base)
            spec["platforms"] = base["platforms"][:n]
            path = tmp / f"split{n}.yaml"
            path.write_text(yaml.safe_dump(spec))
            results = []
            for seed in seeds:
                start = time.monotonic()
                r = compile_chain(plan_from_yaml(path),
                                  CompileOptions(tmp / f"out{n}_{seed}", trials=trials,
                                                 seed=seed, progress=False))
                rep = r.report
                results.append((seed, rep["metrics"]["pipeline"],
                                rep["metrics"]["validation_quantised"], rep["devices_used"],
                                rep["header_bytes"], rep["params"].get("rf_n_estimators"),
                                rep["params"].get("rf_max_depth")))
                print(f"{label} seed {seed}: {time.monotonic() - start:.0f} s", flush=True)
            rows.append([label, mean_std([x[1] for x in results]),
                         mean_std([x[2] for x in results]),
                         " ".join(str(x[3]) for x in results),
                         " ".join(str(x[4]) for x in results),
                         "; ".join(f"s{x[0]}: {x[5]} trees, depth {x[6]}" for x in results)])
    return markdown_table(["devices", "test F1 (macro)", "CV F1 (macro)", "devices used per seed",
                           "carry header bytes per seed", "forest per seed"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("joint", "split"))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    before = source_state()
    start = time.monotonic()
    table = (run_joint if args.what == "joint" else run_split)(args.trials, args.seeds)
    print()
    print(f"## Schedules ({args.what}): {args.trials} trials per search, seeds "
          f"{' '.join(map(str, args.seeds))}")
    print()
    print(table)
    print()
    print(f"{machine()}; {time.monotonic() - start:.0f} s; {source_note(before)}")


if __name__ == "__main__":
    main()
