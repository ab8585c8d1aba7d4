"""An XDP schedule with shared flow state against its models as separate XDP programs: ns per
packet in the kernel (BPF_PROG_TEST_RUN).

The compiled schedule (``OUT/xdp``) runs every model on one parse and one update of the shared
flow state; each model alone is its own single-model program (the XDP target's, built from the
model's snapshot in ``OUT/xdp/schedule.json``: its own parse and its own flow registers).
Frames are the first packets of the spec's capture (each model's traffic table is the same
spec's), through ``hmn_xdp`` with ``repeat`` runs per call, best of ``runs`` calls per frame,
mean over the frames. "Separate" is the sum of the models' programs (every packet through each).

    python bench/xdp_flow_schedule.py SPEC OUT [--frames 64] [--repeat 20000] [--runs 3]

``OUT`` is SPEC compiled (``homunculus compile SPEC -o OUT``). Needs root, clang and libbpf;
the single-model programs are built in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.schedule import xdp
from homunculus.targets.xdp.loader import BpfObject, prog_test_run
from homunculus.targets.xdp.runner import MAIN_PROG, load_built, packet_frame
from homunculus.targets.xdp.snapshot import read_snapshot
from homunculus.targets.xdp.target import XdpTarget


def frames_of(spec: Path, n: int) -> list[bytes]:
    """The first ``n`` IPv4 packets of the spec's first model's capture, as frames."""
    table = plan_from_yaml(spec).models[0].load_data().traffic.table
    rows = table[table["has_ipv4"]].head(n)
    return [packet_frame(row) for row in rows.to_dict("records")]


def ns_per_packet(obj: BpfObject, frames: list[bytes], repeat: int, runs: int) -> float:
    """Mean over the frames of the best of ``runs`` calls (each ``repeat`` runs) of hmn_xdp."""
    fd = obj.prog_fd(MAIN_PROG)
    return statistics.mean(min(prog_test_run(fd, f, repeat=repeat).duration_ns
                               for _ in range(runs)) for f in frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    frames = frames_of(args.spec, args.frames)
    doc = json.loads((args.out / "xdp" / "schedule.json").read_text())
    obj, _ = xdp.load_built(args.out)
    with obj:
        together = ns_per_packet(obj, frames, args.repeat, args.runs)
    alone = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, m in enumerate(doc["models"]):
            program, _ = read_snapshot(m["snapshot"])
            where = Path(tmp) / f"m{k}"
            XdpTarget().emit(program, where, f"m{k}")
            one, _ = load_built(where)
            with one:
                alone[m["name"]] = ns_per_packet(one, frames, args.repeat, args.runs)
    report = json.loads((args.out / "report.json").read_text())
    flow = report.get("flow_state") or {}
    print(f"{len(frames)} frames, repeat {args.repeat}, best of {args.runs}")
    for name, ns in alone.items():
        print(f"  {name} alone: {ns:.1f} ns/pkt")
    print(f"  separate (sum): {sum(alone.values()):.1f} ns/pkt")
    print(f"  schedule (shared flow state): {together:.1f} ns/pkt")
    if flow:
        print(f"  flow state: {flow['registers']} registers for {flow['registers_separate']}, "
              f"{flow['bytes']} bytes for {flow['bytes_separate']}")


if __name__ == "__main__":
    main()
