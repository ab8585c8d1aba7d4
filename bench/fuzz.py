"""The long fuzz run: thousands of spec, capture and command-line variants (tests/fuzzing.py).

Every variant must end normally or with a HomunculusError (exit 2 and one ``error:`` message):
any other exception is a traceback, a variant past its time bound a hang, and any change to a
file outside OUT a touched file. Variants are drawn from one seeded random.Random each (seed =
--seed + index), so a failure is reproduced by its index alone.

* spec variants run every check a compile makes before its search (tests/fuzzing.validate_spec:
  parse, data, target, candidate selection); the variant's directory must not change at all;
* compile variants are spec variants that passed validation, compiled through the CLI
  (``compile SPEC -o OUT --trials 1``): exit 0 or 2, nothing changed outside OUT, no workspace
  or lock left beside it;
* capture variants are read whole (rows or a DataError; every timestamp in range);
* command lines come from the CLI's grammar with hostile values, run in a scratch directory.

    python bench/fuzz.py [--specs 10000] [--captures 10000] [--compiles 100] [--cli 1000]
                         [--seed 0] [--log DIR]

Prints a markdown table (paste it into docs/robustness.md) and writes every failure with its
traceback to DIR/failures.jsonl (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO, machine, markdown_table, source_note, source_state

sys.path.insert(0, str(REPO / "tests"))

from fuzzing import (  # noqa: E402  (the shared mutators and checks live with the tests)
    Hang,
    Touched,
    capture_variant,
    cli_variant,
    compile_variant,
    snapshot,
    spec_variant,
    time_bound,
)

BOUNDS = {"spec": 60.0, "capture": 30.0, "compile": 300.0, "cli": 300.0}


@dataclass
class Tally:
    kind: str
    variants: int = 0
    outcomes: Counter = field(default_factory=Counter)
    tracebacks: int = 0
    hangs: int = 0
    touched: int = 0
    seconds: list[float] = field(default_factory=list)
    peak_rss_mib: float = 0.0

    def row(self) -> list[object]:
        s = sorted(self.seconds) or [0.0]
        ok = self.outcomes.get("ok", 0) + self.outcomes.get("exit 0", 0)
        return [self.kind, self.variants, ok, self.variants - ok - self.tracebacks - self.hangs,
                self.tracebacks, self.hangs, self.touched, f"{sum(s) / len(s) * 1000:.0f}",
                f"{s[len(s) // 2] * 1000:.0f}", f"{s[-1]:.2f}", f"{self.peak_rss_mib:.0f}"]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(tally: Tally, index: int, seed: int, body: Callable[[random.Random, Path], str],
                log: Path) -> None:
    rng = random.Random(seed)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{tally.kind}-") as tmp, \
                warnings.catch_warnings(), time_bound(BOUNDS[tally.kind]):
            warnings.simplefilter("ignore")
            outcome = body(rng, Path(tmp))
    except Hang:
        tally.hangs += 1
        outcome = "hang"
    except Touched as exc:
        tally.touched += 1
        outcome = f"touched {exc}"
    except BaseException as exc:  # noqa: BLE001 - a traceback is what the run counts
        if isinstance(exc, KeyboardInterrupt):
            raise
        tally.tracebacks += 1
        outcome = f"traceback {type(exc).__name__}"
        with open(log, "a") as f:
            f.write(json.dumps({"kind": tally.kind, "index": index, "seed": seed,
                                "error": repr(exc)[:2000],
                                "traceback": traceback.format_exc()[-6000:]}) + "\n")
    tally.seconds.append(time.perf_counter() - start)
    tally.outcomes[outcome] += 1
    tally.variants += 1
    tally.peak_rss_mib = max(tally.peak_rss_mib, rss_mib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", type=int, default=10_000)
    parser.add_argument("--captures", type=int, default=10_000)
    parser.add_argument("--compiles", type=int, default=100)
    parser.add_argument("--cli", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    log_dir = args.log or Path(tempfile.mkdtemp(prefix="homunculus-fuzz-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "failures.jsonl"
    state = source_state()
    sentinel = {k: v for k, v in snapshot(REPO, lambda r: r.startswith(
        (".git", ".venv", ".hypothesis")) or "__pycache__" in r).items()}
    started = time.perf_counter()
    tallies = []
    for kind, n, body, offset in (("spec", args.specs, spec_variant, 0),
                                  ("capture", args.captures, capture_variant, 10**6),
                                  ("compile", args.compiles, compile_variant, 2 * 10**6),
                                  ("cli", args.cli, cli_variant, 3 * 10**6)):
        tally = Tally(kind)
        t0 = time.perf_counter()
        for i in range(n):
            run_variant(tally, i, args.seed + offset + i, body, log)
            if (i + 1) % 500 == 0:
                print(f"{kind}: {i + 1}/{n} in {time.perf_counter() - t0:.0f} s; "
                      f"tracebacks {tally.tracebacks}, hangs {tally.hangs}, "
                      f"touched {tally.touched}", file=sys.stderr, flush=True)
        tallies.append(tally)
    repo_changed = sentinel != {k: v for k, v in snapshot(REPO, lambda r: r.startswith(
        (".git", ".venv", ".hypothesis")) or "__pycache__" in r).items()}
    headers = ["variants", "count", "ok / exit 0", "clean error (exit 2)", "tracebacks", "hangs",
               "touched outside OUT", "mean ms", "median ms", "max s", "peak RSS MiB"]
    print(markdown_table(headers, [t.row() for t in tallies]))
    print()
    for t in tallies:
        top = ", ".join(f"{k}: {v}" for k, v in t.outcomes.most_common(6))
        print(f"- {t.kind} outcomes: {top}")
    print(f"\nsource tree changed during the run: {'yes' if repo_changed else 'no'}; "
          f"failures logged to {log} ({log.stat().st_size if log.exists() else 0} bytes)")
    print(f"total {time.perf_counter() - started:.0f} s; seed {args.seed}; {machine()}; "
          f"{source_note(state)}")


if __name__ == "__main__":
    main()
