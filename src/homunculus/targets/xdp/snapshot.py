"""Model parameters as map contents: encode a CPU program for a program's capacity, write it into
a slot, and push a new one atomically (write the standby slot, then flip ``hmn_active``).

A snapshot (JSON, ``OUT/xdp/snapshot.json``) holds the CPU program itself (ir/serialize.py) with
the interface and capacity the compiled program was built for; the bytes of a slot are encoded
when written, for the capacity of the program they go into (layout.py), so a newer compile whose
model fits is pushed into a program built with a different capacity.

A packet reads ``hmn_active`` once, so it sees one slot throughout; ``push`` only ever writes
the standby slot. That slot may still be in use by packets that read ``hmn_active`` just before
the previous flip, so ``push`` first waits ``grace_s`` (default 10 ms; an XDP program finishes in
microseconds) and only then overwrites it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from homunculus.ir.cpu import SCALAR, WINNER, CpuProgram, FlatTree, LookupModel, TreeModel
from homunculus.ir.dense import QMLP
from homunculus.ir.serialize import program_from_json, program_to_json
from homunculus.targets.xdp.layout import (
    ACTIVATION_CODES,
    Capacity,
    CapacityError,
    check_fits,
    even,
    interface_of,
)
from homunculus.targets.xdp.loader import BpfError, BpfMap

FORMAT = "homunculus-xdp-snapshot/2"
GRACE_S = 0.010
MODEL_MAPS = {"trees": "hmn_trees", "lookup": "hmn_enc", "mlp": "hmn_mlp"}


class MapSource(Protocol):
    """Anything that finds maps by name: a loaded BpfObject or a Pinned deployment."""

    def map(self, name: str) -> BpfMap: ...


class SnapshotError(ValueError):
    """A snapshot does not fit the program it is written into."""


def snapshot_of(program: CpuProgram, capacity: Capacity) -> dict[str, Any]:
    """The JSON snapshot of ``program`` for a program built with ``capacity`` (``model``: the
    CPU program as ir/serialize.py writes it)."""
    try:
        check_fits(program, capacity)
    except CapacityError as exc:
        raise SnapshotError(str(exc)) from None
    return {"format": FORMAT, "interface": interface_of(program),
            "capacity": capacity.as_json(), "model": program_to_json(program)}


def read_snapshot(data: dict[str, Any]) -> tuple[CpuProgram, Capacity]:
    """The program and the capacity of a snapshot (SnapshotError if it is not one)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SnapshotError(f"not an XDP snapshot of this version (format {found!r}, expected "
                            f"{FORMAT!r}): recompile")
    try:
        return program_from_json(data["model"]), Capacity.from_json(data["capacity"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"a corrupt snapshot ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- encoding


def meta_bytes(program: CpuProgram, cap: Capacity) -> bytes:
    kp, vw = cap.meta_words()
    model = program.model
    n_trees = len(model.trees) if isinstance(model, TreeModel) else 0
    depth = model.depth if isinstance(model, TreeModel) else 0
    bias = np.zeros(kp, dtype="<i4")
    if not isinstance(model, QMLP):
        bias[:len(model.bias)] = model.bias
    verdict = np.zeros(vw, dtype="<u4")
    verdict[:5 * program.n_winners] = np.asarray(program.verdict, dtype=np.int64).reshape(-1)
    keys = np.full(cap.categories, 2**32 - 1, dtype="<u4")
    rows = np.zeros(cap.categories, dtype="<u4")
    if cap.n_classes:  # each class's verdict row follows the winners'
        start = 5 * program.n_winners
        verdict[start:start + 5 * cap.n_classes] = np.asarray(
            program.class_rows, dtype=np.int64).reshape(-1)
    sc = program.shortcut
    if sc is not None:  # a key's row: its class + 1
        keys[:len(sc.values)] = sc.values
        rows[:len(sc.values)] = [r[0] + 1 for r in sc.rows]
    return (np.asarray([n_trees, depth], dtype="<u4").tobytes() + bias.tobytes()
            + verdict.tobytes() + keys.tobytes() + rows.tobytes())


NODE = np.dtype([("thr", "<u4"), ("feat", "<u2"), ("left", "<u2")])
EXPLICIT, IMPLICIT = 0, 1  # a tree's layout word: children at left, left + 1 / at 2i + 1, 2i + 2


def layout_of(model: TreeModel, cap: Capacity) -> int:
    """The node layout of every tree of ``model``: implicit (complete, heap-ordered) when the
    model's depth fits the capacity's nodes, so the walk computes a child's index without a
    load; explicit (ir/cpu.py's left indices) otherwise."""
    return IMPLICIT if model.depth <= cap.implicit_depth else EXPLICIT


def check_fits_field(values: np.ndarray, dtype: np.dtype, name: str) -> None:
    """Raise OverflowError unless every value fits the node field ``name`` (numpy would wrap
    them silently when assigning an array)."""
    info = np.iinfo(dtype)
    if values.size and (values.min() < info.min or values.max() > info.max):
        raise OverflowError(f"a tree node's {name} is out of range for {dtype}")


def node_rows(tree: FlatTree, leaf_value: Callable[[int], int], n_features: int, n: int,
              depth: int | None) -> np.ndarray:
    """``tree``'s nodes as ``n`` NODE records; ``feat`` is the feature's byte offset in the
    program's feature array (8 per feature). A leaf reads the zero pad feature ``n_features``
    and holds ``leaf_value(its row)``. Explicit (``depth`` None): ir/cpu.py's order and left
    indices. Implicit, ``depth`` levels: node j's children are 2j + 1 and 2j + 2, and a leaf
    above level ``depth`` fills its subtree down to that level (its copies go left, to copies),
    so any number of steps from the root, from the tree's depth to ``depth``, lands on a copy
    of the leaf the explicit walk lands on."""
    nodes = np.zeros(n, dtype=NODE)
    feature = np.asarray(tree.feature, dtype=np.int64)
    leaf = feature < 0
    thr = np.asarray([leaf_value(r) if is_leaf else r
                      for r, is_leaf in zip(tree.threshold, leaf, strict=True)], dtype=np.int64)
    feat = 8 * np.where(leaf, n_features, feature)
    left = np.asarray(tree.left, dtype=np.int64)
    for name, values in (("thr", thr), ("feat", feat), ("left", left)):
        check_fits_field(values, NODE[name], name)
    if depth is None:
        nodes["thr"][:len(thr)], nodes["feat"][:len(thr)] = thr, feat
        nodes["left"][:len(thr)] = left
        return nodes
    src = np.zeros(1, dtype=np.int64)  # the explicit node at each position of a level
    for level in range(depth + 1):
        at = (1 << level) - 1
        nodes["thr"][at:at + len(src)], nodes["feat"][at:at + len(src)] = thr[src], feat[src]
        lo = np.where(leaf[src], src, left[src])  # a leaf's children: copies of it
        src = np.stack([lo, np.where(leaf[src], src, lo + 1)], axis=1).reshape(-1)
    return nodes


def tree_bytes(model: TreeModel, t: int, cap: Capacity) -> bytes:
    tree = model.trees[t]
    layout = layout_of(model, cap)
    nodes = node_rows(tree, (lambda r: tree.values[r][0]) if model.mode == WINNER else int,
                      cap.n_features, cap.nodes,
                      cap.implicit_depth if layout == IMPLICIT else None)
    out = nodes.tobytes()
    if model.mode != WINNER:
        rows = np.zeros((cap.leaves, cap.leaf_width), dtype=np.int64)
        values = np.asarray(tree.values, dtype=np.int64)
        if model.mode == SCALAR:  # the tree's one score, in its column
            rows[:len(values), tree.column] = values[:, 0]
        else:
            rows[:len(values), :values.shape[1]] = values
        out += _packed(rows[:, 0::2], rows[:, 1::2]).tobytes()
    return out + np.asarray([max(tree.column, 0), layout], dtype="<u4").tobytes()


def enc_bytes(model: LookupModel, cap: Capacity) -> bytes:
    direct = np.zeros(cap.direct_total, dtype="<u2")
    edges = np.full((cap.n_wide, cap.bins), 2**32 - 1, dtype="<u4")
    scores = np.zeros((cap.n_features, cap.bins, even(cap.n_scores)), dtype=np.int64)
    for e, at, row in zip(model.encoders, cap.direct, cap.wide, strict=True):
        if at >= 0:
            direct[at:at + (1 << e.width)] = e.direct_table()
        else:
            edges[row, :e.n_bins] = e.edges
        scores[e.feature, :e.n_bins, :cap.n_scores] = e.scores
    out = (_packed(scores[..., 0::2], scores[..., 1::2]).tobytes() + edges.tobytes()
           + direct.tobytes())
    return out + bytes(cap.enc_bytes() - len(out))


def _packed(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``lo + hi * 2^32`` modulo 2^64, as little-endian u64."""
    value = (lo.astype(object) + hi.astype(object) * (1 << 32)) % (1 << 64)
    return np.asarray(value.astype(np.uint64), dtype="<u8")


def mlp_bytes(mlp: QMLP, cap: Capacity) -> bytes:
    parts: list[bytes] = []
    for layer, (outs, ins) in zip(mlp.layers, cap.mlp_shapes(), strict=True):
        n_out, n_in = layer.shape
        w = np.zeros((outs, ins), dtype=np.int64)
        w[:n_out, :n_in] = layer.weights
        b = np.zeros(outs, dtype=np.int64)
        b[:n_out] = layer.bias
        parts += [_packed(w[0::2], w[1::2]).tobytes(), _packed(b[0::2], b[1::2]).tobytes()]
    shift = np.zeros(even(cap.n_features), dtype="<i4")
    shift[:cap.n_features] = mlp.input_shift
    parts.append(shift.tobytes())
    for layer in mlp.layers if mlp.carries_out else mlp.layers[:-1]:
        lut = layer.lut if layer.activation == "lut" and layer.lut else (0,) * 256
        parts.append(np.asarray([layer.multiplier, layer.shift,
                                 ACTIVATION_CODES[layer.activation], layer.shape[0], *lut],
                                dtype="<i4").tobytes())
    widths = np.zeros(even(len(mlp.layers)), dtype="<i4")
    widths[:len(mlp.layers)] = [layer.shape[0] for layer in mlp.layers]
    parts.append(widths.tobytes())
    out = b"".join(parts)
    assert len(out) == cap.mlp_bytes()
    return out


def slot_values(program: CpuProgram, cap: Capacity) -> dict[str, list[tuple[int, bytes]]]:
    """Per map, (key within the slot, value) pairs of one slot."""
    model = program.model
    values = {"hmn_meta": [(0, meta_bytes(program, cap))]}
    if isinstance(model, TreeModel):
        values["hmn_trees"] = [(t, tree_bytes(model, t, cap)) for t in range(len(model.trees))]
    elif isinstance(model, LookupModel):
        values["hmn_enc"] = [(0, enc_bytes(model, cap))]
    else:
        values["hmn_mlp"] = [(0, mlp_bytes(model, cap))]
    return values


# ----------------------------------------------------------------------------- slots


def check_program_maps(maps: MapSource, cap: Capacity) -> None:
    """Raise SnapshotError unless the loaded program's maps have ``cap``'s geometry."""
    name = MODEL_MAPS[cap.kind.split("-")[0]]
    try:
        model_map, meta = maps.map(name), maps.map("hmn_meta")
    except BpfError:
        raise SnapshotError(f"the program has no map {name}: it runs another kind of model "
                            "(a different family)") from None
    per_slot = cap.trees if name == "hmn_trees" else 1
    if model_map.value_size != cap.value_bytes() or model_map.max_entries != 2 * per_slot:
        raise SnapshotError("the program's parameter maps differ from its recorded capacity")
    if meta.value_size != cap.meta_bytes():
        raise SnapshotError("the program's score and verdict map differs from its recorded "
                            "capacity")


def write_slot(maps: MapSource, program: CpuProgram, cap: Capacity, slot: int) -> None:
    """Write ``program``'s parameters into ``slot`` (0 or 1) of a program built with ``cap``."""
    if slot not in (0, 1):
        raise ValueError("slot must be 0 or 1")
    try:
        check_fits(program, cap)
    except CapacityError as exc:
        raise SnapshotError(str(exc)) from None
    check_program_maps(maps, cap)
    for name, items in slot_values(program, cap).items():
        per_slot = cap.trees if name == "hmn_trees" else 1
        target = maps.map(name)
        for key, value in items:
            target.update(slot * per_slot + key, value)


def active_slot(maps: MapSource) -> int:
    return int.from_bytes(maps.map("hmn_active").lookup(0)[:4], "little") & 1  # type: ignore[index]


def install(maps: MapSource, snapshot: dict[str, Any]) -> None:
    """First load, before any packet runs: write slot 0 and make it active."""
    program, cap = read_snapshot(snapshot)
    write_slot(maps, program, cap, 0)
    maps.map("hmn_active").update_u32(0, 0)


def has_map(maps: MapSource, name: str) -> bool:
    try:
        maps.map(name)
    except BpfError:
        return False
    return True


def set_telemetry(maps: MapSource, mode: int, param: int, every: int = 0) -> None:
    """Turn sampling on (mode 1: every param-th packet, 2: first param per flow, 3: first param
    per flow then every every-th later packet of the flow) or off (0). Programs compiled before
    mode 3 have an 8-byte configuration (mode, param): they take modes 0-2 only."""
    cfg = maps.map("hmn_tel_cfg")
    value = mode.to_bytes(4, "little") + param.to_bytes(4, "little")
    if cfg.value_size >= 12:
        value += every.to_bytes(4, "little") + bytes(cfg.value_size - 12)
    elif mode == 3:
        raise SnapshotError("this program was compiled before first_k_rate sampling (adapt."
                          "sampling): recompile it, or use first_k or rate")
    cfg.update(0, value)


def slot_versions(maps: MapSource) -> tuple[int, int]:
    """The model version each slot holds (telemetry builds; (0, 0) otherwise)."""
    if not has_map(maps, "hmn_version"):
        return 0, 0
    version = maps.map("hmn_version")
    return tuple(int.from_bytes(version.lookup(s)[:4], "little")  # type: ignore[index,return-value]
                 for s in (0, 1))


def push(maps: MapSource, program: CpuProgram, cap: Capacity, *,
         grace_s: float = GRACE_S, version: int | None = None) -> int:
    """Install ``program`` into a program built with ``cap`` without mixing: check that it
    fits, wait ``grace_s``, write the standby slot completely (and, in telemetry builds, its
    model ``version``), then flip ``hmn_active``. Returns the new active slot; on any error the
    active slot is untouched."""
    return push_all(maps, [(maps, program, cap)], grace_s=grace_s, version=version)


def push_all(maps: MapSource, parts: list[tuple[MapSource, CpuProgram, Capacity]], *,
             grace_s: float = GRACE_S, version: int | None = None) -> int:
    """:func:`push` of several models at once (a schedule's: each part is one model's maps,
    its program and its capacity): every part is checked, then every standby slot written,
    then ``hmn_active`` (one for all of them) flipped once."""
    for view, program, cap in parts:
        try:
            check_fits(program, cap)
        except CapacityError as exc:
            raise SnapshotError(str(exc)) from None
        check_program_maps(view, cap)
    standby = 1 - active_slot(maps)
    if grace_s > 0:
        time.sleep(grace_s)  # packets that read the old active slot before the last flip
    for view, program, cap in parts:
        write_slot(view, program, cap, standby)
    if version is not None and has_map(maps, "hmn_version"):
        maps.map("hmn_version").update_u32(standby, version)
    maps.map("hmn_active").update_u32(0, standby)
    return standby
