"""Emit a portable C11 library (header + source) computing a CPU program's verdict.

Python only prepares a plain context of numbers and checked literals; all C text lives in the
Jinja2 templates next to this module. Every C identifier is built from indices, so user strings
(class labels, feature names, the program name) can only appear through :func:`safe_comment`
inside ``/* */`` comments, and two programs that differ only in names emit the same code outside
comments.

Trees come in two forms (``tree_code``): ``arrays``, flat node arrays walked ``depth`` steps for a
block of rows at once (the rows' walks interleave, so their loads overlap), and ``branches``,
one nested if/else function per tree (what tl2cgen and m2cgen generate), and ``bitvector``,
QuickScorer's layout for the batch call (every split tested on a block of rows at once, the
exit leaf the lowest bit left in the tree's lane; one row walks the flat arrays). Encoders of
features of at most 16 bits index a table of every value; wider ones binary-search their sorted
edges.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2

from homunculus.ir.cpu import (
    SCALAR,
    VECTOR,
    WINNER,
    CpuProgram,
    Encoder,
    FlatTree,
    LookupModel,
    TreeModel,
)
from homunculus.ir.dense import QMLP
from homunculus.ir.names import safe_comment
from homunculus.targets.templating import code_env

ABI_VERSION = 1
"""Version of the generated library's ABI (bump when any exported signature changes)."""

TREE_CODES = ("auto", "arrays", "branches", "bitvector")
BITVECTOR_MAX_LEAVES = 64  # a tree's leaves are the bits of one lane (uint16/32/64)
BITVECTOR_MIN_TREES = 40  # "auto": fewer boosted trees run faster as if/else (measured)
BITVECTOR_BLOCK = 64  # rows a batch call evaluates together with the bitvector code
BLOCK_ROWS = 16  # rows a batch call evaluates together
TREE_GROUP = 4  # trees of a forest walked side by side
MAX_FEATURE_BITS = 32  # the ABI passes features as uint32_t
MAX_TREE_NODES = 1 << 16  # node indices are uint16_t within a tree

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_NAME_BAD = re.compile(r"[^a-z0-9_]+")
C_KEYWORDS = frozenset({
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_alignas", "_alignof", "_atomic", "_bool",
    "_complex", "_generic", "_imaginary", "_noreturn", "_static_assert", "_thread_local",
})
VERDICT_ROLES = ("port", "drop", "mark", "dscp")


def template_env() -> jinja2.Environment:
    """The Jinja2 environment over this package's ``templates`` directory."""
    return code_env("homunculus.targets.c")


def render(template: str, context: dict[str, Any]) -> str:
    return template_env().get_template(template).render(**context)


def c_name(name: str) -> str:
    """A safe file/identifier stem for a (possibly hostile) program name."""
    stem = _NAME_BAD.sub("_", name.lower()).strip("_")[:32] or "model"
    return check_identifier(stem if stem[0].isalpha() else f"m_{stem}")


def check_identifier(ident: str) -> str:
    """``ident`` if it is a safe lower-case C identifier and no keyword, else ValueError."""
    if not _IDENT.match(ident) or ident in C_KEYWORDS:
        raise ValueError(f"'{safe_comment(ident)}' is not a safe C identifier")
    return ident


def u32(value: int) -> str:
    if not 0 <= value < 1 << 32:
        raise ValueError(f"constant {value} does not fit in 32 unsigned bits")
    return f"{value}u"


def i32(value: int) -> str:
    """A signed 32-bit C literal (INT32_MIN written so that no intermediate overflows)."""
    if not -2**31 <= value < 2**31:
        raise ValueError(f"constant {value} does not fit in int32")
    return "(-2147483647 - 1)" if value == -2**31 else str(value)


def pad_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# ----------------------------------------------------------------------------- trees


def _branch(tree: FlatTree, node: int, leaf: list[str]) -> dict[str, Any]:
    """The nested if/else of ``tree`` from ``node`` (``leaf[row]``: what a leaf returns)."""
    f = tree.feature[node]
    if f < 0:
        return {"leaf": leaf[tree.threshold[node]]}
    return {"feature": f, "threshold": u32(tree.threshold[node]),
            "left": _branch(tree, tree.left[node], leaf),
            "right": _branch(tree, tree.left[node] + 1, leaf)}


def tree_context(i: int, tree: FlatTree, model: TreeModel, n_features: int) -> dict[str, Any]:
    if tree.n_nodes > MAX_TREE_NODES:
        raise ValueError(f"tree {i} has {tree.n_nodes} nodes; the C target walks at most "
                         f"{MAX_TREE_NODES} per tree")
    if model.mode == WINNER:  # a leaf holds the winner itself
        leaf_code = [u32(v[0]) for v in tree.values]
    else:  # a leaf holds its row
        leaf_code = [u32(r) for r in range(len(tree.values))]
    nodes = []
    for f, t, left in zip(tree.feature, tree.threshold, tree.left, strict=True):
        leaf = f < 0
        nodes.append({"thr": leaf_code[t] if leaf else u32(t), "feat": n_features if leaf else f,
                      "left": left})
    return {"index": i, "depth": tree.depth, "nodes": nodes, "column": tree.column,
            "rows": [[i32(v) for v in row] for row in tree.values],
            "code": _branch(tree, 0, leaf_code)}


def trees_context(model: TreeModel, n_features: int) -> dict[str, Any]:
    trees = [tree_context(i, t, model, n_features) for i, t in enumerate(model.trees)]
    groups = [[t | {"slot": k} for k, t in enumerate(trees[i:i + TREE_GROUP])]
              for i in range(0, len(trees), TREE_GROUP)]
    return {"mode": model.mode, "scalar": model.mode == SCALAR, "list": trees,
            "groups": [{"trees": g, "depth": max(t["depth"] for t in g)} for g in groups]}


def tree_leaves(tree: FlatTree) -> list[int]:
    """The tree's leaf nodes from left to right."""
    out: list[int] = []

    def visit(node: int) -> None:
        if tree.feature[node] < 0:
            out.append(node)
        else:
            visit(tree.left[node])
            visit(tree.left[node] + 1)

    visit(0)
    return out


def leaf_spans(tree: FlatTree, order: list[int]) -> dict[int, tuple[int, int]]:
    """Per node, the range of its subtree's leaves in the left-to-right ``order``."""
    position = {node: i for i, node in enumerate(order)}
    spans: dict[int, tuple[int, int]] = {}

    def visit(node: int) -> tuple[int, int]:
        if tree.feature[node] < 0:
            spans[node] = (position[node], position[node] + 1)
        else:
            spans[node] = (visit(tree.left[node])[0], visit(tree.left[node] + 1)[1])
        return spans[node]

    visit(0)
    return spans


def bitvector_lane(model: TreeModel, widths: list[int]) -> tuple[str, int]:
    """The lane type (and bits) holding both a feature value and a tree's leaf bits."""
    leaves = max(len(tree_leaves(t)) for t in model.trees)
    if leaves > BITVECTOR_MAX_LEAVES:
        raise ValueError(f"a tree has {leaves} leaves; the bitvector code holds at most "
                         f"{BITVECTOR_MAX_LEAVES}: use the 'arrays' tree code")
    need = max(leaves, *widths)
    bits = 16 if need <= 16 else 32 if need <= 32 else 64
    return f"uint{bits}_t", bits


def bitvector_context(model: TreeModel, widths: list[int]) -> dict[str, Any]:
    """QuickScorer's layout (Lucchese et al., SIGIR 2015) for the batch call: a tree's leaves,
    left to right, are the bits of a lane; every split whose comparison goes right
    (``x[feat] > thr``) clears the bits of its left subtree's leaves, and the exit leaf is the
    lowest bit left. Every split of a tree is tested on a block of rows with the same
    operations (the compiler vectorises them over the rows); splits that can never go right
    (threshold at or above the lane's maximum) are left out."""
    lane, bits = bitvector_lane(model, widths)
    full = (1 << bits) - 1
    node_f: list[int] = []
    node_t: list[str] = []
    node_m: list[str] = []
    starts, leaf_starts, leaf_code, rows = [0], [0], [], []
    for tree in model.trees:
        order = tree_leaves(tree)
        spans = leaf_spans(tree, order)
        for node in range(tree.n_nodes):
            if tree.feature[node] < 0 or tree.threshold[node] >= full:
                continue
            lo, hi = spans[tree.left[node]]
            node_f.append(tree.feature[node])
            node_t.append(f"{tree.threshold[node]}u")
            node_m.append(f"0x{full & ~(((1 << (hi - lo)) - 1) << lo):x}u")
        starts.append(len(node_f))
        if model.mode == VECTOR:
            leaf_code += [str(len(rows) + tree.threshold[n]) for n in order]
            rows.extend([i32(v) for v in row] for row in tree.values)
        else:
            leaf_code += [i32(tree.values[tree.threshold[n]][0]) for n in order]
        leaf_starts.append(len(leaf_code))
    return {"lane": lane, "bits": bits, "block": BITVECTOR_BLOCK, "n_nodes": len(node_f),
            "n_trees": len(model.trees), "columns": [t.column for t in model.trees],
            "node_f": node_f, "node_t": node_t, "node_m": node_m, "starts": starts,
            "leaf_starts": leaf_starts, "leaf_code": leaf_code, "rows": rows,
            "index_type": "uint16_t" if len(node_f) < 1 << 16 and len(leaf_code) < 1 << 16
            else "uint32_t",
            "leaf_type": "int32_t" if model.mode != VECTOR else (
                "uint16_t" if len(rows) <= 1 << 16 else "uint32_t")}


# ----------------------------------------------------------------------------- lookups


def encoder_context(e: Encoder) -> dict[str, Any]:
    ctx: dict[str, Any] = {"feature": e.feature, "direct": e.direct,
                           "scores": [[i32(v) for v in row] for row in e.scores],
                           "n_bins": e.n_bins}
    if e.direct:
        ctx["bin_type"] = "uint8_t" if e.n_bins <= 256 else "uint16_t"
        ctx["table"] = e.direct_table()
    else:
        size = 1 << max(e.n_bins - 1, 0).bit_length()
        ctx["edges"] = [u32(v) for v in e.edges] + [u32(2**32 - 1)] * (size - e.n_bins)
        ctx["steps"] = [size >> k for k in range(1, size.bit_length())]
    return ctx


# ----------------------------------------------------------------------------- category table


def shortcut_context(program: CpuProgram) -> dict[str, Any] | None:
    """The hybrid's category table: its distinct verdict rows follow the winners' rows in
    ``hmn_verdict`` (a hit's winner is ``n_winners + row``); a feature of at most 16 bits
    indexes an array of every value (row + 1, 0: miss), a wider one binary-searches its sorted
    values."""
    sc = program.shortcut
    if sc is None:
        return None
    width = program.features[sc.feature].field.width
    rows, index = sc.distinct_rows()
    ctx: dict[str, Any] = {"feature": sc.feature, "direct": width <= 16, "n": len(sc.values),
                           "rows": [[i32(v) for v in r] for r in rows]}
    if width <= 16:
        table = [0] * (1 << width)
        for v, i in zip(sc.values, index, strict=True):
            table[v] = i + 1
        ctx |= {"type": "uint8_t" if len(rows) < 256 else "uint16_t", "table": table}
    else:
        size = 1 << max(len(sc.values) - 1, 0).bit_length()
        ctx |= {"keys": [u32(v) for v in sc.values] + [u32(2**32 - 1)] * (size - len(sc.values)),
                "index": [i + 1 for i in index] + [0] * (size - len(sc.values)),
                "steps": [size >> k for k in range(1, size.bit_length())]}
    return ctx


# ----------------------------------------------------------------------------- MLP


def mlp_context(mlp: QMLP) -> dict[str, Any]:
    """Weights as int16 [out][in], ``in`` padded to a multiple of 8 with zeros (the compiler
    vectorises the dot products as 16-bit multiply-adds). A part of a split MLP (ir/dense.py)
    reads carried activation bytes (``carried_in``, sign-extended) and, when it
    ``carries_out``, ends on a hidden layer whose activations (``emit``) are its output."""
    last = len(mlp.layers) - 1
    layers = []
    for i, layer in enumerate(mlp.layers):
        n_out, n_in = layer.shape
        width = pad_to(n_in, 8)
        scores = i == last and not mlp.carries_out  # raw int32 scores: no requantisation
        layers.append({
            "index": i, "n_in": n_in, "n_in_pad": width, "n_out": n_out,
            "n_out_pad": pad_to(n_out, 8), "last": scores,
            "emit": i == last and mlp.carries_out,
            "weights": [[str(w) for w in row] + ["0"] * (width - n_in) for row in layer.weights],
            "bias": [i32(b) for b in layer.bias],
            "multiplier": layer.multiplier, "shift": layer.shift,
            "activation": layer.activation,
            "lut": [str(v) for v in layer.lut] if not scores and layer.activation == "lut"
            else None,
        })
    return {"shifts": list(mlp.input_shift), "n_in_pad": pad_to(len(mlp.input_shift), 8),
            "layers": layers, "n_scores": mlp.n_classes, "carried_in": mlp.carried_in,
            "carries_out": mlp.carries_out}


# ----------------------------------------------------------------------------- the library


def n_scores(model: TreeModel | LookupModel | QMLP) -> int:
    """Scores the library sums and arg-maxes (0: a single tree's leaves hold the winner)."""
    if isinstance(model, QMLP):
        return model.n_classes
    return 0 if isinstance(model, TreeModel) and model.mode == WINNER else model.n_scores


def check_program(program: CpuProgram) -> None:
    for f in program.features:
        if not 1 <= f.field.width <= MAX_FEATURE_BITS:
            raise ValueError(f"a feature has width {f.field.width}; the C target supports "
                             f"1..{MAX_FEATURE_BITS} bits")
    if not program.verdict:
        raise ValueError("the program has no verdict rows")


def bitvector_fits(model: TreeModel, widths: list[int]) -> bool:
    """Whether the bitvector code runs in 16-bit lanes (8 rows per SSE2 vector): at most 16
    leaves per tree and features of at most 16 bits."""
    if not model.trees:
        return False
    return max(len(tree_leaves(t)) for t in model.trees) <= 16 and max(widths) <= 16


def resolve_tree_code(model: TreeModel | LookupModel | QMLP, tree_code: str,
                      widths: list[int] | None = None) -> str:
    """``auto``, as bench/kernel.py measured it (docs/benchmarks.md): if/else code for a single
    tree (the branch predictor runs ahead along the path), flat arrays for forests voting
    score vectors (deeper trees whose walks overlap, 3-4x faster), and for boosted trees the
    bitvector code when there are at least ``BITVECTOR_MIN_TREES`` and it fits 16-bit lanes
    (xgb-r16's batches 1.5x faster than flat arrays, 2x than if/else; one row walks flat
    arrays), else if/else (xgb-r4: as fast in a batch, 2x faster for one row)."""
    if tree_code not in TREE_CODES:
        raise ValueError(f"tree_code must be one of {TREE_CODES} (got {tree_code!r})")
    if tree_code != "auto":
        return tree_code
    if not isinstance(model, TreeModel):
        return "branches"
    if model.mode == VECTOR:
        return "arrays"
    if (model.mode == SCALAR and len(model.trees) >= BITVECTOR_MIN_TREES and widths is not None
            and bitvector_fits(model, widths)):
        return "bitvector"
    return "branches"


def carry_context(program: CpuProgram) -> dict[str, Any] | None:
    """A chain's host: the class columns carried in and the mask of their fields."""
    if not program.carry_in:
        return None
    if not n_scores(program.model):
        raise ValueError("a program starting from carried scores must sum scores")
    return {"columns": list(program.carry_in), "bits": program.carry_bits,
            "mask": u32((1 << program.carry_bits) - 1)}


def build_context(program: CpuProgram, name: str, tree_code: str = "auto") -> dict[str, Any]:
    check_program(program)
    stem = c_name(name)
    model = program.model
    n = len(program.features)
    shortcut = shortcut_context(program)
    widths = [f.field.width for f in program.features]
    code = resolve_tree_code(model, tree_code, widths)
    return {
        "stem": f"hmn_{stem}",
        "guard": f"HMN_{stem.upper()}_H",
        "title": safe_comment(name),
        "abi_version": ABI_VERSION,
        "n_features": n,
        "n_classes": len(program.class_labels),
        "n_winners": program.n_winners,
        "block": BITVECTOR_BLOCK if code == "bitvector" else BLOCK_ROWS,
        "features": [{"mask": u32((1 << f.field.width) - 1), "width": f.field.width,
                      "comment": safe_comment(f.name)} for f in program.features],
        "classes": [safe_comment(label) for label in program.class_labels],
        "verdict": [[i32(v) for v in row] for row in program.verdict]
                   + (shortcut["rows"] if shortcut else []),
        "shortcut": shortcut,
        "carry": carry_context(program),
        "n_scores": n_scores(model),
        "bias": [] if isinstance(model, QMLP) or not n_scores(model) else [
            i32(b) for b in model.bias],
        "trees": trees_context(model, n) if isinstance(model, TreeModel) else None,
        "tree_code": "arrays" if code == "bitvector" else code,  # bitvector: arrays for 1 row
        "bv": (bitvector_context(model, widths)
               if code == "bitvector" and isinstance(model, TreeModel) else None),
        "encoders": ([encoder_context(e) for e in model.encoders]
                     if isinstance(model, LookupModel) else None),
        "mlp": mlp_context(model) if isinstance(model, QMLP) else None,
    }


def emit_c(program: CpuProgram, *, name: str, tree_code: str = "auto") -> dict[str, str]:
    """File name -> text of the generated header, source, example program and Makefile."""
    ctx = build_context(program, name, tree_code)
    stem = ctx["stem"]
    return {
        f"{stem}.h": render("hmn_model.h.j2", ctx),
        f"{stem}.c": render("hmn_model.c.j2", ctx),
        "example.c": render("example.c.j2", ctx),
        "Makefile": render("Makefile.j2", ctx),
    }
