"""Resource and cost model of the generated C: parameter memory and the latency of one call.

Latency is one ``hmn_classify`` call on one core: the call and feature masking, then per tree
its walk (if/else levels, or flat-array steps, a forest's trees walked in groups side by side;
the bitvector code, a batch's, walks one row on flat arrays)
and leaf row, per encoder its index or search steps and score row, per dense layer its
multiply-accumulates and outputs, and the arg-max. The per-operation costs are a
:class:`CProfile`'s; throughput is ``cores / latency``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from homunculus.ir.cpu import SCALAR, WINNER, CpuProgram, LookupModel, TreeModel
from homunculus.ir.dense import QMLP
from homunculus.targets.base import Usage
from homunculus.targets.c.codegen import TREE_GROUP, pad_to, resolve_tree_code
from homunculus.targets.c.profiles import CProfile


@dataclass(frozen=True)
class OpCounts:
    """Operations of one classification."""

    features: int = 0
    branch_steps: int = 0  # if/else tree levels
    array_steps: int = 0  # a single tree's flat-array walk steps
    group_steps: int = 0  # walk steps of a group of trees walked side by side
    trees: int = 0
    adds: int = 0  # score additions (leaf rows, encoder rows)
    direct: int = 0  # direct-indexed encoders
    searches: int = 0  # binary search steps
    macs: int = 0
    neurons: int = 0
    scores: int = 0  # arg-max contenders

    def latency_ns(self, p: CProfile) -> float:
        return (p.call_ns + self.features * p.feature_ns + self.branch_steps * p.branch_ns
                + self.array_steps * p.step_ns + self.group_steps * p.group_step_ns
                + self.trees * p.tree_ns + self.adds * p.add_ns + self.direct * p.direct_ns
                + self.searches * p.search_ns + self.macs * p.mac_ns
                + self.neurons * p.neuron_ns + self.scores * p.argmax_ns)


def op_counts(program: CpuProgram, tree_code: str = "auto") -> OpCounts:
    """The model's operations plus the category table's lookup (an index or a search)."""
    counts = model_op_counts(program, tree_code)
    sc = program.shortcut
    if sc is None:
        return counts
    if program.features[sc.feature].field.width <= 16:
        return replace(counts, direct=counts.direct + 1)
    return replace(counts, searches=counts.searches + max(len(sc.values) - 1, 0).bit_length() + 1)


def model_op_counts(program: CpuProgram, tree_code: str = "auto") -> OpCounts:
    model, nf = program.model, len(program.features)
    if isinstance(model, TreeModel):
        code = resolve_tree_code(model, tree_code, [f.field.width for f in program.features])
        code = "arrays" if code == "bitvector" else code  # its single row walks flat arrays
        n = len(model.trees)
        if model.mode == WINNER:
            steps = {"branch_steps" if code == "branches" else "array_steps": model.depth}
            return OpCounts(nf, trees=1, **steps)
        width = 1 if model.mode == SCALAR else model.n_scores
        depth = sum(t.depth for t in model.trees)
        groups = sum(max(t.depth for t in model.trees[i:i + TREE_GROUP])
                     for i in range(0, n, TREE_GROUP))
        steps = {"branch_steps": depth} if code == "branches" else {"group_steps": groups}
        return OpCounts(nf, trees=n, adds=width * n, scores=model.n_scores, **steps)
    if isinstance(model, LookupModel):
        direct = sum(e.direct for e in model.encoders)
        steps = sum(max(e.n_bins - 1, 0).bit_length() for e in model.encoders if not e.direct)
        return OpCounts(nf, adds=model.n_scores * len(model.encoders), direct=direct,
                        searches=steps, scores=model.n_scores)
    assert isinstance(model, QMLP)
    macs = sum(n_out * pad_to(n_in, 8) for n_out, n_in in (la.shape for la in model.layers))
    neurons = sum(la.shape[0] for la in model.layers)
    return OpCounts(nf, macs=macs, neurons=neurons, scores=model.n_classes)


def parameter_bytes(program: CpuProgram) -> int:
    """Bytes of the static const data: nodes, leaf rows, encoder tables, weights, verdicts."""
    model = program.model
    total = 4 * 5 * program.n_winners + 4 * len(program.features) + shortcut_bytes(program)
    if isinstance(model, TreeModel):
        total += 4 * model.n_scores
        for t in model.trees:
            total += 8 * t.n_nodes
            total += 0 if model.mode == WINNER else 4 * len(t.values) * len(t.values[0])
    elif isinstance(model, LookupModel):
        total += 4 * model.n_scores
        for e in model.encoders:
            total += 4 * e.n_bins * model.n_scores
            total += (1 << e.width) * (1 if e.n_bins <= 256 else 2) if e.direct else 4 * e.n_bins
    else:
        for i, layer in enumerate(model.layers):
            n_out, n_in = layer.shape
            total += 2 * n_out * pad_to(n_in, 8) + 4 * n_out
            hidden = i < len(model.layers) - 1 or model.carries_out
            total += 256 if hidden and layer.activation == "lut" else 0
    return total


def shortcut_bytes(program: CpuProgram) -> int:
    """The category table: a direct array (features up to 16 bits) or sorted keys and rows,
    and its verdict rows."""
    sc = program.shortcut
    if sc is None:
        return 0
    rows = len(set(sc.rows))
    width = program.features[sc.feature].field.width
    if width <= 16:
        return (1 << width) * (1 if rows < 256 else 2) + 20 * rows
    size = 1 << max(len(sc.values) - 1, 0).bit_length()
    return 6 * size + 20 * rows


def entries_of(program: CpuProgram) -> int:
    """What the report counts as entries on a CPU: tree nodes, encoder bins, dense weights, the
    category table's values."""
    return model_entries(program) + (len(program.shortcut.values) if program.shortcut else 0)


def model_entries(program: CpuProgram) -> int:
    model = program.model
    if isinstance(model, TreeModel):
        return sum(t.n_nodes for t in model.trees)
    if isinstance(model, LookupModel):
        return sum(e.n_bins for e in model.encoders)
    return sum(la.shape[0] * la.shape[1] for la in model.layers)


def estimate(program: CpuProgram, profile: CProfile) -> Usage:
    latency = op_counts(program, profile.tree_code).latency_ns(profile)
    model = program.model
    tables = len(model.trees) if isinstance(model, TreeModel) else (
        len(model.encoders) if isinstance(model, LookupModel) else len(model.layers))
    return Usage(stages=0, tables=tables, sram_kbit=parameter_bytes(program) * 8 / 1024,
                 tcam_kbit=0.0, entries=entries_of(program), phv_bits=0,
                 throughput_gpps=profile.cores / latency, latency_ns=latency)
