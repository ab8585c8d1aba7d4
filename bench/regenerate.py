"""The real compilers' fixture programs, next to what the current code generates from the same
specs: the calibration table of docs/targets.md.

For every program in tests/fixtures/real-compilers (run through p4c-barefoot for Tofino 1 and
p4c-bm2-ss for bmv2 outside the project): what the compiler said, the stages it reported, the
estimate of the release that generated it, this model's estimate of that same program (read
back from its P4 text, targets/p4/calibration.py), the rules it breaks (targets/p4/rules.py),
and the program regenerated from the same spec with the fixture's budget and seed: the rules it
breaks (none) and its estimated stages.

    python bench/regenerate.py [--only iot-dt-tofino ...] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from common import REPO, machine, markdown_table, source_note, source_state

from homunculus.compile import CompileOptions, compile_plan
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.targets.p4.calibration import calibrate
from homunculus.targets.p4.profiles import PROFILES
from homunculus.targets.p4.rules import rule_violations

FIXTURES = REPO / "tests" / "fixtures" / "real-compilers"


def compiler_said(folder: Path) -> tuple[str, int | None]:
    """('accepted' or the first error, the real stage count when there is one)."""
    log = next(folder.glob("*.log")).read_text()
    error = re.search(r"error: (.*)", log)
    res = folder / "resources.json"
    real = None
    if res.exists():
        real = len(json.loads(res.read_text())["resources"]["mau"]["mau_stages"]) or None
    if error is None:
        return "accepted", real
    return error.group(1).strip()[:70], real


def regenerate(folder: Path, root: Path, trials: int | None) -> dict:
    text = (folder / "spec.yaml").read_text().replace(
        "path: iot_features.csv", f"path: {REPO / 'examples' / 'iot' / 'iot_features.csv'}")
    spec = root / f"{folder.name}.yaml"
    spec.write_text(text)
    out = root / folder.name
    plan = plan_from_yaml(spec)
    budget = trials or (12 if folder.name.startswith("iot") else 10)
    result = compile_plan(plan, CompileOptions(out, trials=budget, seed=0, progress=False))
    arch = "tna" if folder.parent.name == "tna" else "v1model"
    program = next((out / "p4").glob("*.p4")).read_text()
    totals = result.report["resources"]["totals"]
    return {"family": result.family, "violations": len(rule_violations(program, arch)),
            "stages": totals["stages"], "tables": totals["tables"],
            "entries": totals["entries"], "metric": result.metrics["pipeline"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    before = source_state()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in sorted(FIXTURES.glob("*/*")):
            if not (folder / "spec.yaml").exists():
                continue
            if args.only and folder.name not in args.only:
                continue
            arch = "tna" if folder.parent.name == "tna" else "v1model"
            profile = PROFILES["tofino" if arch == "tna" else "bmv2"]
            old_text = (folder / "program.p4").read_text()
            said, real = compiler_said(folder)
            old_estimate = json.loads((folder / "estimate-resources.json").read_text())
            model = calibrate(folder.name, old_text, profile, real).estimated if real else None
            new = regenerate(folder, Path(tmp), args.trials)
            rows.append([folder.name, said, real or "-", old_estimate["totals"]["stages"],
                         model or "-", len(rule_violations(old_text, arch)), new["family"],
                         new["violations"], new["stages"], new["tables"], new["entries"]])
    print(markdown_table(
        ["program", "real compiler", "real stages", "old estimate", "model, old program",
         "rules broken (old)", "family (new)", "rules broken (new)", "est. stages (new)",
         "tables (new)", "entries (new)"], rows))
    print(f"\n{machine()}. {source_note(before)}")


if __name__ == "__main__":
    main()
