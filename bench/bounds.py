"""Algorithmic bounds: how the passes and parsers that hostile input can stretch grow with it.

Side by side in one run, medians of --repeat runs:

1. the table-merging pass on n single-key tables (2-4 entries each, merged down to one table
   within 4096 entries), this version against main's (``git show main:...``), which sorts all
   pairs every round; both pick the same pairs (checked against tests/adversarial.py);
2. resynchronisation over the worst captures for it (tests/adversarial.py: a plausible header at
   every few bytes whose check needs a read a window away), this version against main's reader
   (``git show main:src/homunculus/data/pcap.py``) on the smaller sizes;
3. a spec with n unbound features: parse, data, candidate selection and one evaluation with
   table merging (lookup-sum family on bmv2);
4. YAML bombs: a billion-laughs document and 50,000 levels of nesting (refused);
5. a 5,000-character class label in the confusion plot and a 100,000-character name printed.

    python bench/bounds.py [--repeat 3] [--skip-main]

Prints markdown tables (paste them into docs/robustness.md). Temporary files only.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, machine, markdown_table, source_note, source_state

sys.path.insert(0, str(REPO / "tests"))

from adversarial import (  # noqa: E402  (shared with the tests)
    FAR,
    adversarial_pcap,
    adversarial_pcapng,
    naive_merge_tables,
    score_table,
)

from homunculus.compile import build_problem, choose_candidates  # noqa: E402
from homunculus.data.pcap import ingest  # noqa: E402
from homunculus.display import shown  # noqa: E402
from homunculus.errors import SpecError  # noqa: E402
from homunculus.frontend.yaml_spec import plan_from_yaml  # noqa: E402
from homunculus.models.base import get_family  # noqa: E402
from homunculus.passes.merge import merge_tables  # noqa: E402
from homunculus.report.render import plot_confusion  # noqa: E402
from homunculus.search.problem import evaluate  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main_module(rel: str, name: str):  # noqa: ANN201
    """A module of main's source (git show), loaded beside this version's package."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"main:{rel}"], capture_output=True,
                          text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def merge_rows(repeat: int, with_main: bool) -> list[list[object]]:
    old = main_module("src/homunculus/passes/merge.py", "merge_main") if with_main else None
    rows = []
    for n in (100, 200, 400, 800):
        rng = random.Random(n)
        tables = [score_table(i, rng.choice([2, 3, 4])) for i in range(n)]
        fast = timed(lambda t=tables: merge_tables(t, 1), repeat)
        names = [t.name for t in merge_tables(tables, 1)]
        assert names == [t.name for t in naive_merge_tables(tables, 1, 4096)] if n <= 200 else True
        slow = timed(lambda t=tables: old.merge_tables(t, 1), 1) if old is not None else None
        rows.append([n, f"{fast:.3f}", f"{slow:.2f}" if slow else "-",
                     f"{slow / fast:.0f}x" if slow else "-"])
    return rows


def resync_rows(repeat: int, with_main: bool) -> list[list[object]]:
    old = main_module("src/homunculus/data/pcap.py", "pcap_main") if with_main else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("pcapng", adversarial_pcapng), ("pcap", adversarial_pcap)):
            for mib in (1.25, 2, 4, 16):
                path = Path(tmp) / f"{name}_{mib}"
                path.write_bytes(make(int(mib * (1 << 20))))
                new = timed(lambda p=path: ingest([p], on_warning=lambda _m: None), repeat)
                before = None
                if old is not None and mib <= 2:
                    before = timed(lambda p=path: old.ingest([p], on_warning=lambda _m: None), 1)
                region = mib - FAR / (1 << 20)  # where the far-probing candidates lie
                rows.append([name, mib, f"{new:.2f}", f"{new / region:.2f}",
                             f"{before:.1f}" if before is not None else "-"])
    return rows


def wide_spec(directory: Path, n: int) -> Path:
    rng = np.random.default_rng(n)
    x = rng.integers(0, 4, (300, n))
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(n)])
    frame["label"] = np.where(x[:, 0] + x[:, 1] > 3, "a", "b")
    frame.to_csv(directory / f"wide{n}.csv", index=False)
    feats = "\n".join(f"    - {{name: f{i}, width: 2}}" for i in range(n))
    spec = directory / f"wide{n}.yaml"
    spec.write_text(f"name: wide\ndata:\n  path: wide{n}.csv\n  label: label\n  features:\n"
                    f"{feats}\nmodel:\n  name: m\n  algorithms: [gnb]\nplatform:\n"
                    "  target: bmv2\nsearch:\n  trials: 1\n")
    return spec


def wide_rows(repeat: int) -> list[list[object]]:
    rows = []
    params = {**get_family("gnb").default_params(), "merge_tables": True}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (100, 200, 400, 800):
            spec = wide_spec(Path(tmp), n)
            parse = timed(lambda s=spec: plan_from_yaml(s), repeat)
            plan = plan_from_yaml(spec)
            prep = timed(lambda p=plan: choose_candidates(*build_problem(p, 0)), repeat)
            problem, _ = build_problem(plan, 0)
            ev = timed(lambda p=problem: evaluate(p, "gnb", params), repeat)
            rows.append([n, f"{parse:.2f}", f"{prep:.2f}", f"{ev:.2f}",
                         f"{(parse + prep + ev) / n * 1000:.1f}"])
    return rows


def bomb_rows(repeat: int) -> list[list[object]]:
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    cases = {"billion laughs (10^10 nodes)": "\n".join(laughs) + "\n",
             "50,000 levels of nesting": "a: " + "[" * 50_000 + "]" * 50_000 + "\n"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for what, text in cases.items():
            path = Path(tmp) / "bomb.yaml"
            path.write_text(text)

            def refuse(p: Path = path) -> str:
                try:
                    plan_from_yaml(p)
                except SpecError as exc:
                    return exc.message
                raise AssertionError("accepted")

            rows.append([what, f"{timed(refuse, repeat) * 1000:.1f}", refuse()])
    return rows


def string_rows(repeat: int) -> list[list[object]]:
    label = "L" * 5000
    report = {"confusion_matrix": {"labels": [label, "b"], "matrix": [[3, 1], [0, 5]]}}
    svg = plot_confusion(report)
    name = "n" * 100_000
    plot_s = timed(lambda: plot_confusion(report), repeat)
    shown_s = timed(lambda: shown(name), repeat)
    return [["confusion plot, 5,000-character label", f"{plot_s:.2f}",
             f"{len(svg):,} bytes of SVG"],
            ["a 100,000-character name shown", f"{shown_s:.5f}",
             f"{len(shown(name))} characters printed"]]


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-main", action="store_true")
    args = parser.parse_args()
    state = source_state()
    print("### Table merging (seconds)\n")
    print(markdown_table(["tables", "this version", "main (all pairs sorted each round)",
                          "speed-up"], merge_rows(args.repeat, not args.skip_main)))
    print("\n### Resynchronisation over worst-case captures (seconds)\n")
    print(markdown_table(["format", "MiB", "this version", "s per MiB of candidates", "main"],
                         resync_rows(args.repeat, not args.skip_main)))
    print("\n### A spec with n unbound features (seconds)\n")
    print(markdown_table(["features", "parse", "data + candidates", "one evaluation (merged)",
                          "ms per feature"], wide_rows(args.repeat)))
    print("\n### YAML bombs (refused)\n")
    print(markdown_table(["input", "ms to refuse", "message"], bomb_rows(args.repeat)))
    print("\n### Long user strings\n")
    print(markdown_table(["input", "seconds", "size"], string_rows(args.repeat)))
    print(f"\n{machine()}; {source_note(state)}")


if __name__ == "__main__":
    run()
