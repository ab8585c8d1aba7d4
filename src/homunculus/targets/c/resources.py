"""Resource and cost model of the generated C: parameter memory and a per-operation latency.

Latency is a pessimistic estimate of one classification on one core: every table scans all its
entries (a miss falls through to the default), compares every key, and mispredicts its exit once.
The operation counts are multiplied by the per-operation costs of a :class:`CProfile`; throughput
is ``cores / latency``.
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.ir.pipeline import MatchKind, Pipeline
from homunculus.targets.base import Usage
from homunculus.targets.c.layout import CTable, Layout, build_layout
from homunculus.targets.c.profiles import CProfile


@dataclass(frozen=True)
class OpCounts:
    """Operations of one worst-case classification."""

    tables: int
    compares: int
    score_ops: int
    macs: int
    neurons: int

    def latency_ns(self, profile: CProfile) -> float:
        return (profile.call_ns + self.tables * (profile.table_ns + profile.mispredict_ns)
                + self.compares * profile.compare_ns + self.score_ops * profile.score_op_ns
                + self.macs * profile.mac_ns + self.neurons * profile.neuron_ns)


def table_compares(table: CTable) -> int:
    """Comparisons of a full scan: a range key costs two, exact and ternary keys one."""
    return len(table.rows) * sum(2 if k.kind is MatchKind.RANGE else 1 for k in table.keys)


def op_counts(pipeline: Pipeline, layout: Layout) -> OpCounts:
    score_ops = macs = neurons = 0
    if pipeline.score_sum is not None and pipeline.argmax is not None:
        score_ops = (sum(len(t) for t in pipeline.score_sum.terms)
                     + len(pipeline.argmax.scores))
    if pipeline.mlp is not None:
        macs = sum(n_out * n_in for n_out, n_in in (lay.shape for lay in pipeline.mlp.layers))
        neurons = sum(lay.shape[0] for lay in pipeline.mlp.layers)
    return OpCounts(len(layout.tables), sum(table_compares(t) for t in layout.tables), score_ops,
                    macs, neurons)


def parameter_bits(pipeline: Pipeline, layout: Layout) -> int:
    """Bits of the static const data: table entries and dense weights, biases, LUTs, shifts."""
    bits = sum(len(t.rows) * t.entry_bytes * 8 for t in layout.tables)
    if pipeline.mlp is not None:
        last = len(pipeline.mlp.layers) - 1
        for i, layer in enumerate(pipeline.mlp.layers):
            n_out, n_in = layer.shape
            bits += n_out * n_in * 8 + n_out * 32
            bits += 256 * 8 if i != last and layer.activation == "lut" else 0
    return bits


def estimate(pipeline: Pipeline, profile: CProfile) -> Usage:
    layout = build_layout(pipeline)
    latency = op_counts(pipeline, layout).latency_ns(profile)
    return Usage(
        stages=0,
        tables=len(layout.tables),
        sram_kbit=parameter_bits(pipeline, layout) / 1024,
        tcam_kbit=0.0,
        entries=sum(len(t.entries) for t in pipeline.tables()),
        phv_bits=0,
        throughput_gpps=profile.cores / latency,
        latency_ns=latency,
    )
