"""The XDP program's capacity and the byte layout of its parameter maps (active/standby slots).

A program is compiled for one *interface* (its features, header bindings and flow state, the
model kind, the number of scores and winners) and one *capacity*: how many trees, nodes and leaf
rows per tree, walk depth, bins per feature or hidden-layer widths its maps hold. Capacity is the
compiled model's needs times a headroom (the ``headroom`` profile knob, default 2) or set
explicitly (``max_trees``, ``max_nodes``, ``max_depth``, ``max_bins``, ``max_width``); any model
of the same interface that fits is pushed into the standby slot without reloading the program.

Maps (ARRAY, two slots each; slot s of a per-tree map is keys ``s * trees + t``):

- ``hmn_meta``: ``u32 n_trees, u32 depth, s32 bias[KP], u32 verdict[VW]`` -- the runtime tree
  count and walk depth, the score bias, and per winner (class, port, drop, mark, dscp);
- trees, ``hmn_trees``: ``node n[nodes]`` (``u32 thr, u16 feat, u16 left``; see ir/cpu.py;
  ``feat`` is 8 times the feature, its byte offset in the scratch features; a leaf's is the zero
  pad feature's), leaf rows ``u64 leaf[leaves][KP / 2]``, packed
  score pairs (a boosted tree's one score in its column, zeros elsewhere; no rows in winner
  mode, whose leaves hold the winner), ``u32 column, u32 layout``: 1 when the model's depth
  fits ``Capacity.implicit_depth`` and the nodes are a complete tree in heap order (node j's
  children at 2j + 1 and 2j + 2, ``left`` unused, a leaf copied over its subtree), 0 for
  ir/cpu.py's order and left indices;
- lookups, ``hmn_enc``: ``u64 scores[features][bins][KP / 2]`` (score pairs packed as
  ``lo + hi * 2^32``: one 64-bit add sums two scores exactly, their totals fitting int32),
  ``u32 edges[wide][bins]`` (sorted edges padded with 2^32-1), ``u16 direct[..]`` (the bin of
  every value of each feature of at most 16 bits, back to back), padding to 8 bytes;
- MLP, ``hmn_mlp``: per layer ``u64 w[pairs][inputs]`` and ``u64 b[pairs]`` -- two outputs'
  int8 weights and int32 biases packed in one 64-bit word (``lo + hi * 2^32``), so one multiply
  accumulates both (exact: every accumulator fits int32, ir/dense.py) -- then
  ``s32 shift[NP]``, per hidden layer ``s32 q[4]`` (multiplier, shift, activation, outputs) and
  ``s32 lut[256]``, and ``s32 n_out[LP]``. A part of a split MLP that carries its activations on
  (kind ``mlp-out`` / ``mlp-in-out``, ir/dense.py) requantises its last layer too: its ``q`` and
  ``lut`` follow the hidden layers'.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from homunculus.errors import NotSupportedError
from homunculus.ir.cpu import WINNER, CpuProgram, LookupModel, TreeModel
from homunculus.ir.dense import QMLP, check_ranges
from homunculus.targets.base import CapacityExceeded

DEFAULT_HEADROOM = 2.0
MAX_TREES = 128
MAX_NODES = 1 << 14  # per tree (u16 child indices)
MAX_DEPTH = 32
MAX_TREE_FEATURES = (1 << 13) - 1  # a node's u16 feat holds 8 * the feature (the zero pad too)
MAX_BINS = 1024
MAX_CATEGORIES = 1 << 16  # category table entries (sorted keys, binary search)
MAX_VALUE_BYTES = 4 << 20  # an array map's largest value (KMALLOC_MAX_SIZE)
MAX_MODEL_BYTES = 64 << 20  # both slots of the model's maps
MLP_MAX_HIDDEN = 3
MLP_MAX_WIDTH = 64
MLP_MAX_INPUTS = 256
ACTIVATION_CODES = {"none": 0, "relu": 1, "lut": 2}
CAPACITY_KNOBS = ("max_trees", "max_nodes", "max_depth", "max_bins", "max_width",
                  "max_categories")


class CapacityError(ValueError):
    """A model does not fit a program's compiled capacity or interface."""


def pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def even(n: int) -> int:
    return n + (n & 1)


@dataclass(frozen=True)
class Capacity:
    kind: str  # ir/cpu.py model_kind
    feature_widths: tuple[int, ...]
    n_scores: int
    n_winners: int
    trees: int = 0
    nodes: int = 0
    leaves: int = 0
    depth: int = 0
    bins: int = 0
    widths: tuple[int, ...] = ()  # MLP hidden layers
    categories: int = 0  # category table entries (a power of two; 0: no table)
    cat_feature: int = -1  # the feature the category table matches
    n_classes: int = 0  # per-class verdict rows (a category table's hits, a flow's decision)

    @property
    def n_features(self) -> int:
        return len(self.feature_widths)

    @property
    def x_slots(self) -> int:
        """Feature slots in the scratch map: the features and the zero pad, a power of two."""
        return pow2(self.n_features + 1)

    @property
    def score_slots(self) -> int:
        """Scores in the scratch map: a power of two (indices are masked)."""
        return pow2(even(self.n_scores))

    @property
    def implicit_depth(self) -> int:
        """Levels of the deepest complete tree (2^(d + 1) - 1 nodes) a tree's nodes hold, at
        most the depth capacity: a model no deeper is stored in the implicit layout (node j's
        children at 2j + 1 and 2j + 2, snapshot.py), which the walk follows without loads."""
        return min(self.depth, max((self.nodes + 1).bit_length() - 2, 0))

    @property
    def leaf_width(self) -> int:
        """int32 values per leaf row: every score (a boosted tree's others are 0), in pairs."""
        return even(self.n_scores)

    @property
    def direct(self) -> list[int]:
        """Offsets of each direct-indexed feature's table in ``direct`` (-1: binary search)."""
        out, at = [], 0
        for w in self.feature_widths:
            if w <= 16:
                out.append(at)
                at += 1 << w
            else:
                out.append(-1)
        return out

    @property
    def direct_total(self) -> int:
        return max(2, sum(1 << w for w in self.feature_widths if w <= 16))

    @property
    def wide(self) -> list[int]:
        """Index of each binary-searched feature's edge row (-1: direct)."""
        out, at = [], 0
        for w in self.feature_widths:
            out.append(at if w > 16 else -1)
            at += w > 16
        return out

    @property
    def n_wide(self) -> int:
        return max(1, sum(w > 16 for w in self.feature_widths))

    @property
    def verdict_rows(self) -> int:
        """Verdict rows in ``hmn_meta``: the winners', then (with a category table or a
        per-flow decision) one per class."""
        return self.n_winners + self.n_classes

    def meta_words(self) -> tuple[int, int]:
        """(bias words, verdict words): both padded to even counts."""
        return even(self.n_scores), even(5 * self.verdict_rows)

    def meta_bytes(self) -> int:
        """One ``hmn_meta`` value: counts, bias, verdicts, the category table's keys and rows."""
        return 8 + 4 * sum(self.meta_words()) + 8 * self.categories

    def tree_bytes(self) -> int:
        rows = 0 if self.kind == f"trees-{WINNER}" else self.leaves * self.leaf_width
        return 8 * self.nodes + 4 * rows + 8

    def enc_bytes(self) -> int:
        size = 4 * self.n_features * self.bins * even(self.n_scores)
        size += 4 * self.n_wide * self.bins + 2 * self.direct_total
        return size + (-size % 8)

    def mlp_shapes(self) -> list[tuple[int, int]]:
        """(outputs capacity (even), inputs capacity) per layer."""
        outs = [*self.widths, even(self.n_scores)]
        ins = [self.n_features, *self.widths]
        return list(zip(outs, ins, strict=True))

    @property
    def requantised(self) -> int:
        """Layers requantised and activated: the hidden ones, and the last one of a part of a
        split MLP carrying its activations on."""
        return len(self.widths) + self.kind.endswith("-out")

    def mlp_bytes(self) -> int:
        size = sum(8 * (o // 2) * i + 8 * (o // 2) for o, i in self.mlp_shapes())
        size += 4 * even(self.n_features) + self.requantised * 4 * (4 + 256)
        return size + 4 * even(len(self.widths) + 1)

    def value_bytes(self) -> int:
        kind = self.kind.split("-")[0]
        return {"trees": self.tree_bytes, "lookup": self.enc_bytes,
                "mlp": self.mlp_bytes}[kind]()

    def model_bytes(self) -> int:
        """Both slots of the model's parameter map."""
        return 2 * (self.trees if self.kind.startswith("trees") else 1) * self.value_bytes()

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> Capacity:
        return Capacity(**{**data, "feature_widths": tuple(data["feature_widths"]),
                           "widths": tuple(data["widths"])})

    def with_categories(self, program: CpuProgram, headroom: float,
                        override: int | None) -> Capacity:
        """This capacity with room for ``program``'s category table (none without one)."""
        sc = program.shortcut
        decision = program.flow is not None and program.flow.decision is not None
        if sc is None:
            return Capacity(**{**asdict(self), "n_classes": len(program.class_labels)}
                            ) if decision else self
        size = pow2(_scaled(max(len(sc.values), 1), headroom, MAX_CATEGORIES, "category values",
                            "max_categories", override))
        return Capacity(**{**asdict(self), "categories": size, "cat_feature": sc.feature,
                           "n_classes": len(program.class_labels)})


def interface_of(program: CpuProgram) -> dict[str, Any]:
    """What the program's code depends on besides capacity: pushes must match it exactly."""
    from homunculus.ir.serialize import program_to_json

    flow = program_to_json(program)["flow"]
    carry = {"carry": [list(program.carry_in), program.carry_bits]} if program.carry_in else {}
    return {"kind": program.kind,
            "features": [[f.field.width, f.header_field, f.flow] for f in program.features],
            "flow": flow, "n_scores": n_scores(program), "n_winners": program.n_winners,
            **carry}


def n_scores(program: CpuProgram) -> int:
    model = program.model
    return model.n_classes if isinstance(model, QMLP) else model.n_scores


# ----------------------------------------------------------------------------- capacity


def _scaled(need: int, headroom: float, top: int, what: str, knob: str,
            override: int | None) -> int:
    if need > top:
        raise CapacityExceeded(f"the model needs {need} {what}; the XDP target holds at most "
                               f"{top}")
    if override is not None:
        if not need <= override <= top:
            raise CapacityExceeded(f"profile {knob} = {override}: the model needs {need} "
                                   f"{what} and the XDP target holds at most {top}")
        return override
    return min(top, max(need, math.ceil(need * headroom)))


def capacity_for(program: CpuProgram, headroom: float = DEFAULT_HEADROOM,
                 overrides: dict[str, int] | None = None) -> Capacity:
    """The compiled model's needs times ``headroom`` (or the explicit ``max_*`` overrides)."""
    if headroom < 1:
        raise ValueError(f"headroom must be at least 1 (got {headroom})")
    o = overrides or {}
    widths = tuple(f.field.width for f in program.features)
    if any(not 1 <= w <= 32 for w in widths):
        raise ValueError("the XDP target reads features of 1..32 bits")
    base = Capacity(program.kind, widths, n_scores(program), program.n_winners)
    model = program.model
    if isinstance(model, TreeModel):
        if len(widths) > MAX_TREE_FEATURES:
            raise CapacityExceeded(f"the trees read {len(widths)} features; the XDP target "
                                   f"holds at most {MAX_TREE_FEATURES}")
        winner = model.mode == WINNER
        nodes = max((t.n_nodes for t in model.trees), default=1)
        rows = max((len(t.values) for t in model.trees), default=1)
        cap = Capacity(**{**asdict(base), "widths": (),
                          "trees": 1 if winner else -(-_scaled(
                              max(len(model.trees), 1), headroom, MAX_TREES, "trees",
                              "max_trees", o.get("max_trees")) // 4) * 4,  # walked four at once
                          "nodes": pow2(_scaled(nodes, headroom, MAX_NODES, "nodes per tree",
                                                "max_nodes", o.get("max_nodes"))),
                          "leaves": 0 if winner else pow2(_scaled(rows, headroom, MAX_NODES,
                                                                  "leaves per tree", "max_nodes",
                                                                  None)),
                          "depth": _scaled(max(model.depth, 1), headroom, MAX_DEPTH, "levels",
                                           "max_depth", o.get("max_depth"))})
    elif isinstance(model, LookupModel):
        bins = max(e.n_bins for e in model.encoders)
        cap = Capacity(**{**asdict(base), "widths": (),
                          "bins": pow2(_scaled(bins, headroom, MAX_BINS, "bins per feature",
                                               "max_bins", o.get("max_bins")))})
    else:
        check_mlp(model, len(widths))
        hidden = [layer.shape[0] for layer in model.layers[:-1]]
        cap = Capacity(**{**asdict(base), "widths": tuple(
            -(-_scaled(w, headroom, MLP_MAX_WIDTH, "outputs in a hidden layer", "max_width",
                       o.get("max_width")) // 8) * 8 for w in hidden)})
        cap = Capacity(**{**asdict(cap), "widths": tuple(min(w, MLP_MAX_WIDTH)
                                                         for w in cap.widths)})
    cap = cap.with_categories(program, headroom, o.get("max_categories"))
    if cap.value_bytes() > MAX_VALUE_BYTES:
        raise CapacityExceeded(f"the parameters of one slot need {cap.value_bytes()} bytes; "
                                f"an XDP map value holds at most {MAX_VALUE_BYTES} (lower the "
                                "headroom or the max_* capacity)")
    if cap.model_bytes() > MAX_MODEL_BYTES:
        raise CapacityExceeded(f"the model's maps would take {cap.model_bytes()} bytes (two "
                                f"slots); the XDP target allows {MAX_MODEL_BYTES} (lower the "
                                "headroom or the max_* capacity)")
    check_fits(program, cap)
    return cap


def check_mlp(mlp: QMLP, n_features: int) -> None:
    """Raise unless the network fits the XDP program (sizes) and ir/dense.py's ranges."""
    hidden = len(mlp.layers) - 1
    if not 0 <= hidden <= MLP_MAX_HIDDEN:
        raise NotSupportedError(f"the XDP target runs MLPs of at most {MLP_MAX_HIDDEN} hidden "
                                f"layers (this one has {hidden})")
    if not 1 <= n_features <= MLP_MAX_INPUTS or len(mlp.input_shift) != n_features:
        raise ValueError(f"the MLP needs one input shift per feature (1..{MLP_MAX_INPUTS})")
    if any(not 0 <= s < 64 for s in mlp.input_shift):
        raise ValueError("MLP input shifts must be in 0..63")
    check_ranges(mlp)
    n_in = n_features
    for i, layer in enumerate(mlp.layers):
        n_out, width = layer.shape
        if width != n_in or any(len(row) != width for row in layer.weights):
            raise ValueError(f"MLP layer {i} has an inconsistent shape")
        if not 1 <= n_out <= MLP_MAX_WIDTH:
            raise NotSupportedError(f"MLP layer {i} has {n_out} outputs; the XDP target runs "
                                    f"at most {MLP_MAX_WIDTH}")
        if i < hidden or mlp.carries_out:
            if not 0 <= layer.multiplier < 2**31 or not 1 <= layer.shift <= 62:
                raise ValueError(f"MLP layer {i}: multiplier must be in 0..2^31-1 and shift "
                                 "in 1..62")
            if layer.activation not in ACTIVATION_CODES:
                raise ValueError(f"MLP layer {i}: unknown activation {layer.activation!r}")
        n_in = n_out


def check_fits(program: CpuProgram, cap: Capacity) -> None:
    """Raise CapacityError naming the first thing of ``program`` the capacity cannot hold."""
    kind = program.kind
    if kind != cap.kind:
        raise CapacityError(f"the program runs a {describe(cap.kind)}; this model is a "
                            f"{describe(kind)} (a different family)")
    widths = tuple(f.field.width for f in program.features)
    if widths != cap.feature_widths:
        raise CapacityError(f"the program reads features of widths {list(cap.feature_widths)}; "
                            f"this model's are {list(widths)}")
    if n_scores(program) != cap.n_scores or program.n_winners != cap.n_winners:
        raise CapacityError(f"the program computes {cap.n_scores} scores for {cap.n_winners} "
                            f"outcomes; this model {n_scores(program)} for {program.n_winners}")
    sc = program.shortcut
    if sc is not None:
        if not cap.categories:
            raise CapacityError("the program has no category table; this model has one "
                                f"({len(sc.values)} values)")
        if sc.feature != cap.cat_feature:
            raise CapacityError(f"the program's category table matches feature "
                                f"{cap.cat_feature}; this model's matches feature {sc.feature}")
        if len(sc.values) > cap.categories:
            raise CapacityError(f"the category table has {len(sc.values)} values; the compiled "
                                f"capacity is {cap.categories}")
        if len(program.class_rows) != cap.n_classes:
            raise CapacityError("the category table needs one verdict row per class")
    model = program.model
    if isinstance(model, TreeModel):
        if len(model.trees) > cap.trees:
            raise CapacityError(f"{len(model.trees)} trees exceed the compiled capacity of "
                                f"{cap.trees}")
        for i, t in enumerate(model.trees):
            if t.n_nodes > cap.nodes:
                raise CapacityError(f"tree {i} has {t.n_nodes} nodes; the compiled capacity is "
                                    f"{cap.nodes} per tree")
            if model.mode != WINNER and len(t.values) > cap.leaves:
                raise CapacityError(f"tree {i} has {len(t.values)} leaf rows; the compiled "
                                    f"capacity is {cap.leaves} per tree")
        if model.depth > cap.depth:
            raise CapacityError(f"depth {model.depth} exceeds the compiled capacity of "
                                f"{cap.depth}")
    elif isinstance(model, LookupModel):
        for e in model.encoders:
            if e.n_bins > cap.bins:
                raise CapacityError(f"feature {e.feature} has {e.n_bins} bins; the compiled "
                                    f"capacity is {cap.bins} per feature")
    else:
        assert isinstance(model, QMLP)
        hidden = [layer.shape[0] for layer in model.layers[:-1]]
        if len(hidden) != len(cap.widths):
            raise CapacityError(f"the program runs {len(cap.widths)} hidden layers; this MLP "
                                f"has {len(hidden)}")
        for i, (w, c) in enumerate(zip(hidden, cap.widths, strict=True)):
            if w > c:
                raise CapacityError(f"hidden layer {i} has {w} outputs; the compiled capacity "
                                    f"is {c}")


def describe(kind: str) -> str:
    return {"trees-winner": "single decision tree", "trees-scalar": "boosted tree ensemble",
            "trees-vector": "tree ensemble voting score vectors",
            "lookup": "per-feature lookup-and-sum model (naive Bayes, SVM, k-means)",
            "mlp": "MLP"}.get(kind, kind)
