"""Cost model of the XDP program: instructions executed, map memory and per-packet latency.

Per packet: the parse, slot read, counters and verdict (``base``), the flow state (per
register), then the model as it runs: a single tree walks its depth; a forest adds per tree a
``bpf_loop`` step, its walk and its leaf row; a lookup model per feature a direct index or
binary-search steps and a score row; the MLP per output pair a ``bpf_loop`` step and per input a
packed multiply-accumulate (two outputs at once), per output a requantisation; the arg-max per
score. Every count is of the model as it runs (runtime tree counts, depths and widths); the
capacity only sets the map memory.

The nanosecond and instruction constants were fitted (least squares) to what ``bench/kernel.py``
measured with BPF_PROG_TEST_RUN and the verifier on the development machine (kernel 6.18, x86-64,
JIT on); the bench prints each configuration's estimate next to its measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.ir.cpu import SCALAR, WINNER, CpuProgram, LookupModel, TreeModel
from homunculus.ir.dense import QMLP
from homunculus.targets.base import Usage
from homunculus.targets.xdp.layout import Capacity, even


@dataclass(frozen=True)
class Work:
    """Operations of one packet."""

    registers: int = 0  # flow registers (0 and flow False without flow state)
    flow: bool = False
    steps: int = 0  # tree walk steps
    trees: int = 0  # bpf_loop steps over trees
    adds: int = 0  # score additions
    direct: int = 0  # direct-indexed encoders
    searches: int = 0  # binary-search steps
    macs: int = 0  # packed multiply-accumulates (two outputs each)
    pairs: int = 0  # bpf_loop steps over output pairs
    neurons: int = 0  # requantised outputs
    scores: int = 0  # arg-max contenders


# (name, ns, instructions) per operation
COSTS = {
    "base": (8.0, 180),
    "flow": (25.0, 200),
    "registers": (8.0, 30),
    "steps": (1.2, 9),
    "trees": (6.0, 30),
    "adds": (0.5, 4),
    "direct": (1.0, 5),
    "searches": (1.0, 6),
    "macs": (0.45, 4),
    "pairs": (6.0, 40),
    "neurons": (1.5, 20),
    "scores": (0.5, 4),
}


def work(program: CpuProgram) -> Work:
    model = program.model
    flow = program.flow
    common = {"registers": len(flow.registers) if flow else 0, "flow": flow is not None}
    if isinstance(model, TreeModel):
        if model.mode == WINNER:
            return Work(**common, steps=model.depth)
        width = 1 if model.mode == SCALAR else model.n_scores
        return Work(**common, steps=model.depth * len(model.trees), trees=len(model.trees),
                    adds=width * len(model.trees) + model.n_scores, scores=model.n_scores)
    if isinstance(model, LookupModel):
        searches = sum(max(e.n_bins - 1, 0).bit_length() for e in model.encoders if not e.direct)
        return Work(**common, direct=sum(e.direct for e in model.encoders), searches=searches,
                    adds=model.n_scores * (len(model.encoders) + 1), scores=model.n_scores)
    assert isinstance(model, QMLP)
    shapes = [layer.shape for layer in model.layers]
    pairs = [even(o) // 2 for o, _ in shapes]
    return Work(**common, macs=sum(p * i for p, (_, i) in zip(pairs, shapes, strict=True)),
                pairs=sum(pairs), neurons=sum(o for o, _ in shapes[:-1]),
                scores=model.n_classes)


def counts(w: Work) -> dict[str, int]:
    return {"base": 1, "flow": int(w.flow), "registers": w.registers, "steps": w.steps,
            "trees": w.trees, "adds": w.adds, "direct": w.direct, "searches": w.searches,
            "macs": w.macs, "pairs": w.pairs, "neurons": w.neurons, "scores": w.scores}


def latency_ns(program: CpuProgram) -> float:
    return sum(COSTS[k][0] * n for k, n in counts(work(program)).items())


def instructions(program: CpuProgram) -> int:
    return sum(COSTS[k][1] * n for k, n in counts(work(program)).items())


# verifier instructions processed (hmn_xdp) per element of the program's structure
VERIFIER = {"base": 700, "flow": 300, "registers": 60, "features": 8, "depth": 20,
            "scores": 30, "direct": 10, "search_steps": 8, "lookup_adds": 4, "mac_slots": 3,
            "layers": 60}


def structure(program: CpuProgram, cap: Capacity) -> dict[str, int]:
    """What the verifier walks: the code of the program's interface and capacity (bpf_loop
    callbacks are verified once, whatever the runtime counts)."""
    flow = program.flow
    out = {"base": 1, "flow": int(flow is not None),
           "registers": len(flow.registers) if flow else 0,
           "features": cap.n_features, "scores": cap.n_scores}
    kind = cap.kind.split("-")[0]
    if kind == "trees":
        out["depth"] = cap.depth * (1 if cap.kind.endswith(WINNER) else 2)
    elif kind == "lookup":
        out["direct"] = sum(a >= 0 for a in cap.direct)
        out["search_steps"] = sum(a < 0 for a in cap.direct) * max(cap.bins - 1, 0).bit_length()
        out["lookup_adds"] = cap.n_features * cap.n_scores
    else:
        shapes = cap.mlp_shapes()
        out["mac_slots"] = sum(i for _, i in shapes)
        out["layers"] = len(shapes)
    return out


def verifier_insns(program: CpuProgram, cap: Capacity) -> int:
    """Estimated instructions the verifier processes for the packet program ``hmn_xdp``."""
    return int(sum(VERIFIER[k] * n for k, n in structure(program, cap).items()))


def map_bytes(program: CpuProgram, cap: Capacity) -> int:
    """Model maps (both slots), scratch, counters and flow state (per-CPU maps counted once)."""
    per_slot = cap.trees if cap.kind.startswith("trees") else 1
    n = 2 * per_slot * cap.value_bytes() + 2 * (8 + 4 * sum(cap.meta_words()))
    n += 8 * (cap.x_slots + even(cap.n_scores) + 6) + 8 * (len(program.class_labels) + 1) + 40
    if cap.kind == "mlp":
        n += 8 * (cap.n_features + sum(cap.widths))
    if program.flow is not None:
        n += 4 * program.flow.config.slots * len(program.flow.registers)
    return n + 16 + 4


def estimate(program: CpuProgram, cap: Capacity) -> Usage:
    """Usage: map memory in sram_kbit, no TCAM, no stages; throughput of one core."""
    ns = latency_ns(program)
    model = program.model
    tables = len(model.trees) if isinstance(model, TreeModel) else (
        len(model.encoders) if isinstance(model, LookupModel) else len(model.layers))
    from homunculus.targets.c.resources import entries_of

    return Usage(stages=0, tables=tables, sram_kbit=map_bytes(program, cap) * 8 / 1024,
                 tcam_kbit=0.0, entries=entries_of(program), phv_bits=0,
                 throughput_gpps=1.0 / ns, latency_ns=ns,
                 instructions=verifier_insns(program, cap))
