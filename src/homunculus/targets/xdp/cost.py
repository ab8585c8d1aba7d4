"""Cost model of the XDP program: instructions executed, map memory and per-packet latency.

Per packet: the parse, slot read, counters and verdict (``base``), the flow state (per
register), then the model as it runs. Trees stored in the implicit layout (snapshot.py: the
model's depth fits the capacity's complete tree) walk through predicted branches: a single tree
all the levels the layout holds (``levels``), a forest each tree (padded to four) its depth
(``tree_steps``); in the explicit layout a single tree walks its depth (``steps``) and a forest
its trees four at a time (``group_steps``). A forest adds per tree a map lookup and a packed
leaf row; a lookup
model per feature a direct index or binary-search steps and a packed score row; the MLP per
output pair a requantisation and per input a packed multiply-accumulate (two outputs at once);
the arg-max per score. Latency counts the model as it runs (runtime trees, depths and widths);
the verifier's instructions count the program as compiled for its capacity (``structure``).

The nanosecond and instruction constants were fitted (least squares) to what ``bench/kernel.py``
measured with BPF_PROG_TEST_RUN and the verifier on the development machine (kernel 6.18, x86-64,
JIT on); the bench prints each configuration's estimate next to its measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from homunculus.ir.cpu import WINNER, CpuProgram, LookupModel, TreeModel
from homunculus.ir.dense import QMLP
from homunculus.targets.base import Usage
from homunculus.targets.xdp.layout import Capacity, capacity_for, even


@dataclass(frozen=True)
class Work:
    """Operations of one packet."""

    registers: int = 0  # flow registers (0 and flow False without flow state)
    flow: bool = False
    steps: int = 0  # a single tree's walk steps (explicit layout)
    levels: int = 0  # a single tree's walk steps (implicit layout: every level it holds)
    group_steps: int = 0  # walk steps of four trees side by side (explicit layout)
    tree_steps: int = 0  # walk steps of the trees, padded to four, one by one (implicit layout)
    trees: int = 0  # trees of a forest (a map lookup and a leaf row each)
    adds: int = 0  # packed score-pair additions
    direct: int = 0  # direct-indexed encoders
    searches: int = 0  # binary-search steps
    macs: int = 0  # packed multiply-accumulates (two outputs each)
    pairs: int = 0  # output pairs of the dense layers
    scores: int = 0  # arg-max contenders


# ns per operation (one core), fitted by ``bench/kernel.py --fit`` (flow state, forests in the
# explicit layout and wide-feature searches: the previous calibration's costs, which no
# benchmark configuration exercises)
COSTS = {"base": 15.7, "flow": 25.0, "registers": 8.0, "steps": 3.7, "levels": 1.33,
         "group_steps": 9.7, "tree_steps": 1.0, "trees": 2.9, "adds": 0.0, "direct": 0.98,
         "searches": 3.9, "macs": 0.36, "pairs": 3.3, "scores": 1.5}


def work(program: CpuProgram, cap: Capacity | None = None) -> Work:
    """The model's operations in a program of capacity ``cap`` (default: the default
    headroom's), plus the category table's binary search (charged as encoder search steps: not
    calibrated on its own)."""
    w = model_work(program, capacity_for(program) if cap is None else cap)
    sc = program.shortcut
    if sc is None:
        return w
    return replace(w, searches=w.searches + max(len(sc.values) - 1, 0).bit_length() + 1)


def model_work(program: CpuProgram, cap: Capacity) -> Work:
    model = program.model
    flow = program.flow
    common = {"registers": len(flow.registers) + int(flow.decision is not None) if flow else 0,
              "flow": flow is not None}
    if isinstance(model, TreeModel):
        implicit = model.depth <= cap.implicit_depth  # snapshot.py's layout_of
        if model.mode == WINNER:
            return Work(**common, **({"levels": cap.implicit_depth} if implicit
                                     else {"steps": model.depth}))
        n = len(model.trees)
        pairs = even(model.n_scores) // 2
        walk = ({"tree_steps": model.depth * -(-n // 4) * 4} if implicit
                else {"group_steps": model.depth * -(-n // 4)})
        return Work(**common, **walk, trees=n, adds=pairs * (n + 1), scores=model.n_scores)
    pairs = even(model.n_scores if not isinstance(model, QMLP) else model.n_classes) // 2
    if isinstance(model, LookupModel):
        searches = sum(max(e.n_bins - 1, 0).bit_length() for e in model.encoders if not e.direct)
        return Work(**common, direct=sum(e.direct for e in model.encoders), searches=searches,
                    adds=pairs * (len(model.encoders) + 1), scores=model.n_scores)
    assert isinstance(model, QMLP)
    shapes = [layer.shape for layer in model.layers]
    out_pairs = [even(o) // 2 for o, _ in shapes]
    return Work(**common, macs=sum(p * -(-i // 8) * 8
                                   for p, (_, i) in zip(out_pairs, shapes, strict=True)),
                pairs=sum(out_pairs), scores=model.n_classes)


def counts(w: Work) -> dict[str, int]:
    return {"base": 1, "flow": int(w.flow), "registers": w.registers, "steps": w.steps,
            "levels": w.levels, "group_steps": w.group_steps, "tree_steps": w.tree_steps,
            "trees": w.trees, "adds": w.adds,
            "direct": w.direct, "searches": w.searches, "macs": w.macs, "pairs": w.pairs,
            "scores": w.scores}


def latency_ns(program: CpuProgram, cap: Capacity | None = None) -> float:
    """Estimated ns per packet of the whole program (parse, flow state, model, verdict) of
    capacity ``cap`` (default: the default headroom's)."""
    return sum(COSTS[k] * n for k, n in counts(work(program, cap)).items())


# verifier instructions processed (hmn_xdp) per element of the program's structure
VERIFIER = {"base": 0, "flow": 600, "registers": 60, "features": 0, "depth": 44.3,
            "levels": 240.7, "lane_depth": 892.3, "tree_levels": 0, "tree_groups": 0,
            "group_adds": 18.4, "scores": 119.2, "direct": 0, "search_steps": 0,
            "lookup_adds": 90.5, "mac_slots": 0, "pair_slots": 301.7, "layers": 0,
            "category_steps": 12}
"""(``category_steps``, the category table's unrolled search, is a guess: not fitted. A
forest's ``tree_levels`` and ``lane_depth`` grow together in the benchmark's configurations:
the fit charges both walks to ``lane_depth``.)"""


def structure(program: CpuProgram, cap: Capacity) -> dict[str, int]:
    """What the verifier walks: the code of the program's interface and capacity. Global
    functions (a four-tree walk, a dense layer's dot product) are verified once; the loops
    over trees and output pairs once per iteration of their capacity."""
    flow = program.flow
    out = {"base": 1, "flow": int(flow is not None),
           "registers": len(flow.registers) if flow else 0,
           "features": cap.n_features, "scores": cap.n_scores,
           "category_steps": cap.categories.bit_length()}
    kind = cap.kind.split("-")[0]
    if cap.kind.endswith(WINNER):
        out["depth"] = cap.depth
        out["levels"] = cap.implicit_depth
    elif kind == "trees":
        out["lane_depth"] = cap.depth
        out["tree_levels"] = cap.implicit_depth
        out["tree_groups"] = cap.trees // 4
        out["group_adds"] = cap.trees * even(cap.n_scores) // 2
    elif kind == "lookup":
        out["direct"] = sum(a >= 0 for a in cap.direct)
        out["search_steps"] = sum(a < 0 for a in cap.direct) * max(cap.bins - 1, 0).bit_length()
        out["lookup_adds"] = cap.n_features * even(cap.n_scores) // 2
    else:
        shapes = cap.mlp_shapes()
        out["mac_slots"] = sum(i for _, i in shapes)
        out["pair_slots"] = sum(o // 2 for o, _ in shapes)
        out["layers"] = len(shapes)
    return out


def verifier_insns(program: CpuProgram, cap: Capacity) -> int:
    """Estimated instructions the verifier processes for the packet program ``hmn_xdp``."""
    return int(sum(VERIFIER[k] * n for k, n in structure(program, cap).items()))


def map_bytes(program: CpuProgram, cap: Capacity) -> int:
    """Model maps (both slots), scratch, counters and flow state (per-CPU maps counted once)."""
    per_slot = cap.trees if cap.kind.startswith("trees") else 1
    n = 2 * per_slot * cap.value_bytes() + 2 * cap.meta_bytes()
    n += 8 * (cap.x_slots + even(cap.n_scores) + 6) + 8 * (len(program.class_labels) + 1) + 40
    if cap.kind.startswith("mlp"):
        n += 8 * (cap.n_features + sum(cap.widths))
    if program.flow is not None:
        n += 4 * program.flow.config.slots * len(program.flow.registers)
    return n + 16 + 4


def estimate(program: CpuProgram, cap: Capacity) -> Usage:
    """Usage: map memory in sram_kbit, no TCAM, no stages; throughput of one core."""
    ns = latency_ns(program, cap)
    model = program.model
    tables = len(model.trees) if isinstance(model, TreeModel) else (
        len(model.encoders) if isinstance(model, LookupModel) else len(model.layers))
    from homunculus.targets.c.resources import entries_of

    return Usage(stages=0, tables=tables, sram_kbit=map_bytes(program, cap) * 8 / 1024,
                 tcam_kbit=0.0, entries=entries_of(program), phv_bits=0,
                 throughput_gpps=1.0 / ns, latency_ns=ns,
                 instructions=verifier_insns(program, cap))
