"""A host (C or XDP) ending a chain of switches: the CPU program of the tables they left.

The switches before the host sum their score tables as the table pipeline defines them (each
table's scores shifted by its per-column minimum, the minima folded into the pipeline's bias;
passes/lower.py) and carry the partial sums on. The host runs the quantised model's trees (or
per-feature bins) behind the tables it was given, each shifted by the same minima, starts every
row from the pipeline's bias plus the carried partial scores, and takes the arg-max and the
verdict: per class, exactly the pipeline's total, hence the quantised model's winner.

Carried partial scores are non-negative and narrower than the model's score width; the host
masks each to that width and sums in int32, so the model's score width must leave room
(``MAX_SCORE_BITS``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from homunculus.data.dataset import FeatureDecl
from homunculus.errors import NotSupportedError
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.pipeline import Pipeline, VerdictPlan
from homunculus.ir.quantised import QLookupSum, QTree, QTreeEnsemble, QuantisedModel
from homunculus.passes.lower import lower_lookup_sum, lower_trees
from homunculus.passes.lower_cpu import lower_cpu
from homunculus.passes.switch import score_width
from homunculus.schedule.split import CARRY_PREFIX, Split
from homunculus.targets.base import Usage, assess

MAX_SCORE_BITS = 30
"""Widest score a host sums in int32: masked carried scores plus its own stay below 2^31."""


def table_minima(model: QuantisedModel, pipeline: Pipeline) -> dict[str, np.ndarray]:
    """Per score table of the pipeline (by name), the per-column minimum its scores were shifted
    by (the same lowering as passes/lower.py)."""
    if isinstance(model, QTreeEnsemble):
        _, tables, _ = lower_trees(model, pipeline.features)
    else:
        tables, _ = lower_lookup_sum(model, pipeline.features)
    return {t.name: t.scores.min(axis=0) for t in tables}


def _shift(rows: tuple[tuple[int, ...], ...], minima: np.ndarray) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in np.asarray(r, dtype=np.int64) - minima) if len(r) else r
                 for r in rows)


def host_model(model: QuantisedModel, pipeline: Pipeline, tables: tuple[str, ...]
               ) -> QuantisedModel:
    """The part of ``model`` behind ``tables`` (shifted as the pipeline shifts them) with the
    pipeline's bias: what the host adds to the carried partial scores."""
    assert pipeline.score_sum is not None
    minima = table_minima(model, pipeline)
    bias = tuple(int(b) for b in pipeline.score_sum.bias)
    if isinstance(model, QTreeEnsemble):
        named = {f"tree{i}": t for i, t in enumerate(model.trees)}
        trees: list[QTree] = [replace(named[n], leaf_scores=_shift(named[n].leaf_scores,
                                                                     minima[n]))
                              for n in tables]
        return QTreeEnsemble(tuple(trees), bias)
    if isinstance(model, QLookupSum):
        named_bins = {"lut" + pipeline.features[b.feature].field.name[1:]: b for b in model.bins}
        bins = tuple(replace(named_bins[n], scores=_shift(named_bins[n].scores, minima[n]))
                     for n in tables)
        return QLookupSum(bins, bias)
    raise NotSupportedError("only a model whose classes sum scores over tables splits to a host")


def host_program(split: Split, pipeline: Pipeline, model: QuantisedModel,
                 features: tuple[FeatureDecl, ...], verdict: VerdictPlan,
                 winner_to_class: tuple[int, ...] | None) -> CpuProgram:
    """The CPU program of the host ending ``split``: its tables, the carried columns it starts
    from, the arg-max and the verdict (over the model's features, in order)."""
    return host_program_of(split.host_tables, split.host_carry_in, pipeline,
                           HostSource(model, features, verdict, winner_to_class))


@dataclass(frozen=True)
class HostSource:
    """What the partitioner needs, besides the lowered pipeline, to build (and cost) the program
    of a host ending a chain: the quantised model and how it was lowered."""

    model: QuantisedModel
    features: tuple[FeatureDecl, ...]
    verdict: VerdictPlan
    winner_to_class: tuple[int, ...] | None


def host_program_of(tables: tuple[str, ...], carry_in: tuple[int, ...], pipeline: Pipeline,
                    source: HostSource) -> CpuProgram:
    """The host's CPU program for ``tables``, starting from the partial scores of the class
    columns ``carry_in`` (see :func:`host_program`)."""
    width = score_width(pipeline)
    if width > MAX_SCORE_BITS:
        raise NotSupportedError(f"the model's scores are {width} bits wide; a host ending a "
                                f"chain sums at most {MAX_SCORE_BITS}-bit scores in int32")
    part = host_model(source.model, pipeline, tables)
    keep = host_features(source.features)
    if len(keep) < len(source.features):  # flow features: the host's tables read none
        part = reindexed(part, keep)
    program = lower_cpu(part, tuple(source.features[j] for j in keep), pipeline.class_labels,
                        source.verdict, source.winner_to_class, summed=True)
    return replace(program, carry_in=carry_in, carry_bits=width)


def host_features(features: tuple[FeatureDecl, ...]) -> list[int]:
    """The features a host ending the chain reads (indices, in order): all but the flow
    features, which only the switches compute."""
    return [j for j, f in enumerate(features) if f.kind is None]


def reindexed(model: QuantisedModel, keep: list[int]) -> QuantisedModel:
    """``model`` over the features ``keep`` only (their new index: their position in it); it
    must read no other (the partition gives a host no table reading a flow feature)."""
    position = {old: new for new, old in enumerate(keep)}
    if isinstance(model, QTreeEnsemble):
        return replace(model, trees=tuple(
            replace(t, feature=tuple(position[f] if f >= 0 else f for f in t.feature))
            for t in model.trees))
    assert isinstance(model, QLookupSum)
    return replace(model, bins=tuple(replace(b, feature=position[b.feature])
                                     for b in model.bins))


def flow_reads(pipeline: Pipeline, tables: tuple[str, ...]) -> list[str]:
    """The flow features (by name) the score tables ``tables`` read, directly or through their
    encoders: what a host ending the chain cannot compute (the switches keep the flow
    registers; the carry header holds partial scores only)."""
    encoder_of = {o.name: e for e in pipeline.encoders for o in e.outputs}
    flow = {f.field.name: f.name for f in pipeline.features if f.flow}
    named = {t.name: t for t in pipeline.lookups}
    out: list[str] = []
    for name in tables:
        for k in named[name].keys:
            fields = [k.name] if k.name not in encoder_of else [
                e.name for e in encoder_of[k.name].keys]
            out += [flow[f] for f in fields if f in flow and flow[f] not in out]
    return out


def host_runnable(pipeline: Pipeline, source: HostSource | None) -> set[str] | None:
    """The score tables of ``pipeline`` a host could run: the model's own trees or per-feature
    bins (not a table merged from several, passes/merge.py) reading no flow feature; None
    without ``source`` (only the flow features are known)."""
    tables = tuple(t.name for t in pipeline.lookups)
    flow_free = {t for t in tables if not flow_reads(pipeline, (t,))}
    if source is None:
        return flow_free
    return flow_free & set(table_minima(source.model, pipeline))


def judge_host(device: Any, tables: tuple[str, ...], carry_in: tuple[int, ...],
               pipeline: Pipeline, source: HostSource | None
               ) -> tuple[CpuProgram | None, Usage | None, str | None]:
    """The host's program for ``tables`` costed with the host's own cost model (XDP: latency,
    verifier instructions, map memory and its capacity; C: its profile's estimate) against
    its limits: (program, usage, None) when it fits, else why not. Without ``source`` (a
    partition of a bare pipeline) nothing is costed: (None, None, None)."""
    flows = flow_reads(pipeline, tables)
    if flows:
        return None, None, (f"its tables read flow feature(s) {flows}, which a host ending a "
                            "chain cannot read (the switches keep the flow registers; the "
                            "carry header holds partial scores only)")
    if source is None:
        return None, None, None
    try:
        program = host_program_of(tables, carry_in, pipeline, source)
    except KeyError:  # a table merged from several (passes/merge.py): no model part behind it
        return None, None, ("merged score tables do not split to a host (its program runs the "
                            "model's own trees or bins)")
    except (ValueError, NotSupportedError) as exc:  # score widths
        return None, None, str(exc)
    try:
        usage = device.target.estimate(program)
    except (ValueError, NotSupportedError) as exc:  # the target's capacity
        return None, None, str(exc)
    verdict = assess(usage, device.limits)
    if not verdict.feasible:
        return None, usage, "; ".join(verdict.violations)
    return program, usage, None


def carry_header(partial: np.ndarray, program: CpuProgram, ether_type: int) -> bytes:
    """The carry header a switch puts after Ethernet for one row's ``partial`` scores (by score
    column): the carried columns' fields big endian, padded to bytes, then the displaced
    ``ether_type`` (targets/p4 carry_layout)."""
    w = program.carry_bits
    value = 0
    for c in program.carry_in:
        value = value << w | (int(partial[c]) & ((1 << w) - 1))
    bits = w * len(program.carry_in)
    size = -(-bits // 8)
    return (value << (8 * size - bits)).to_bytes(size, "big") + ether_type.to_bytes(2, "big")


def partial_scores(carried: dict[str, np.ndarray] | None, program: CpuProgram,
                   n: int) -> np.ndarray:
    """The (n, K) partial scores a host starts from: the carried fields by class column,
    zeros for the classes nobody carried."""
    k = len(program.model.bias)  # type: ignore[union-attr]
    partial = np.zeros((n, k), dtype=np.int64)
    for c in program.carry_in:
        partial[:, c] = np.asarray((carried or {})[f"{CARRY_PREFIX}{c}"], dtype=np.int64)
    return partial
