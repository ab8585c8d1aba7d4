"""The Python reference of the feature semantics (see features/library.py), written per feature.

Deliberately plain: a dict of slot records and one function per feature kind, independent of the
register program that the twin and the generated P4 execute.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from homunculus.data.packets import header_values
from homunculus.features.library import DECISION_COUNT_BITS, FeatureDef, FlowConfig

MASK32 = 0xFFFFFFFF


def tuple_bytes(src: int, dst: int, sport: int, dport: int, proto: int) -> bytes:
    return (int(src).to_bytes(4, "big") + int(dst).to_bytes(4, "big")
            + int(sport).to_bytes(2, "big") + int(dport).to_bytes(2, "big")
            + int(proto).to_bytes(1, "big"))


def slot_and_signature(key: bytes, slots: int) -> tuple[int, int]:
    return zlib.crc32(key) & (slots - 1), (zlib.crc32(key[::-1]) & 0xFFFF) | 1


def now_of(ts_us: int, cfg: FlowConfig) -> int:
    return ((int(ts_us) * 1000 // cfg.unit_ns) >> cfg.time_shift) & MASK32


def _sat(value: int, width: int) -> int:
    return min(value, (1 << width) - 1)


def _bin(value: int, f: FeatureDef) -> int:
    return min(value >> f.bin_shift, f.bins - 1)


def _fresh(now: int) -> dict:
    return {"count": 0, "bytes": {}, "min": None, "max": 0, "ewma": {}, "first": now,
            "last": now, "iat": 0, "hist": {}}


def _update(rec: dict, new: bool, length: int, now: int, features: list[FeatureDef]) -> None:
    rec["iat"] = 0 if new else (now - rec["last"]) & MASK32
    rec["last"] = now
    rec["min"] = length if rec["min"] is None else min(rec["min"], length)
    rec["max"] = max(rec["max"], length)
    for f in features:
        if f.kind == "pkt_count":
            rec.setdefault(("count", f.width), 0)
            rec[("count", f.width)] = _sat(rec[("count", f.width)] + 1, f.width)
        elif f.kind == "byte_count":
            rec["bytes"][f.width] = _sat(rec["bytes"].get(f.width, 0) + length, f.width)
        elif f.kind == "ewma_len":
            e = rec["ewma"].get(f.param)
            rec["ewma"][f.param] = length if new or e is None else (
                e - (e >> f.param) + (length >> f.param))
        elif f.kind == "len_bin" and _bin(length, f) == f.param:
            key = ("len", f.bins, f.bin_shift, f.param, f.width)
            rec["hist"][key] = _sat(rec["hist"].get(key, 0) + 1, f.width)
        elif f.kind == "iat_bin" and not new and _bin(rec["iat"], f) == f.param:
            key = ("iat", f.bins, f.bin_shift, f.param, f.width)
            rec["hist"][key] = _sat(rec["hist"].get(key, 0) + 1, f.width)


def _read(rec: dict, now: int, f: FeatureDef) -> int:
    if f.kind == "pkt_count":
        return rec[("count", f.width)]
    if f.kind == "byte_count":
        return rec["bytes"][f.width]
    if f.kind == "min_len":
        return rec["min"]
    if f.kind == "max_len":
        return rec["max"]
    if f.kind == "ewma_len":
        return rec["ewma"][f.param]
    if f.kind == "iat":
        return _sat(rec["iat"], f.width)
    if f.kind == "flow_age":
        return _sat((now - rec["first"]) & MASK32, f.width)
    kind = "len" if f.kind == "len_bin" else "iat"
    return rec["hist"].get((kind, f.bins, f.bin_shift, f.param, f.width), 0)


def flow_positions(table: pd.DataFrame, cfg: FlowConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per packet: its flow's packet count n (the per-flow decision's counter: packets since the
    flow took its slot, itself included, saturating at 255; 0 for packets that update no flow
    state) and an id of that flow's stay in its slot (-1 for those packets)."""
    top = (1 << DECISION_COUNT_BITS) - 1
    positions = np.zeros(len(table), dtype=np.int64)
    episodes = np.full(len(table), -1, dtype=np.int64)
    classified = table["has_ipv4"].to_numpy(bool) & (table["ip_ihl"].to_numpy() == 5)
    slots: dict[int, tuple[int, int, int]] = {}  # slot -> (signature, count, stay id)
    stays = 0
    for i, row in enumerate(table.itertuples(index=False)):
        if not classified[i]:
            continue
        r = row._asdict()
        l4 = r["has_tcp"] or r["has_udp"]
        key = tuple_bytes(r["ip_src"], r["ip_dst"], r["src_port"] if l4 else 0,
                          r["dst_port"] if l4 else 0, r["ip_proto"])
        slot, sig = slot_and_signature(key, cfg.slots)
        held = slots.get(slot)
        if held is None or held[0] != sig:
            held = (sig, 0, stays)
            stays += 1
        held = (sig, min(held[1] + 1, top), held[2])
        slots[slot] = held
        positions[i], episodes[i] = held[1], held[2]
    return positions, episodes


def flow_decisions(classes: np.ndarray, positions: np.ndarray, episodes: np.ndarray,
                   decide_at: int) -> np.ndarray:
    """The classes the per-flow decision applies (library docstring): a row at n > N takes the
    class of its flow's row at n == N when that row is among the given ones, else keeps its
    own (``decide_at`` 0: every row keeps its own)."""
    classes = np.asarray(classes, dtype=np.int64)
    if not decide_at:
        return classes.copy()
    deciding = np.nonzero(positions == decide_at)[0]
    decided = dict(zip(episodes[deciding].tolist(), classes[deciding].tolist(), strict=True))
    out = classes.copy()
    for i in np.nonzero(positions > decide_at)[0]:
        out[i] = decided.get(int(episodes[i]), out[i])
    return out


def reference_features(table: pd.DataFrame, features: list[FeatureDef],
                       cfg: FlowConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per packet: the feature vector and whether the packet updates flow state (IPv4 without
    options, the packets whose transport header the data plane parses)."""
    out = np.zeros((len(table), len(features)), dtype=np.int64)
    classified = table["has_ipv4"].to_numpy(bool) & (table["ip_ihl"].to_numpy() == 5)
    flow = [f for f in features if f.is_flow]
    for j, f in enumerate(features):
        if not f.is_flow:
            out[:, j] = np.where(classified, header_values(table, f.field), 0)
    slots: dict[int, tuple[int, dict]] = {}
    for i, row in enumerate(table.itertuples(index=False)):
        r = row._asdict()
        if not classified[i]:
            continue
        l4 = r["has_tcp"] or r["has_udp"]
        key = tuple_bytes(r["ip_src"], r["ip_dst"], r["src_port"] if l4 else 0,
                          r["dst_port"] if l4 else 0, r["ip_proto"])
        slot, sig = slot_and_signature(key, cfg.slots)
        now = now_of(r["ts_us"], cfg)
        held = slots.get(slot)
        new = held is None or held[0] != sig
        rec = _fresh(now) if new else held[1]
        _update(rec, new, int(r["ip_total_len"]), now, flow)
        slots[slot] = (sig, rec)
        for j, f in enumerate(features):
            if f.is_flow:
                out[i, j] = _read(rec, now, f)
    return out, classified
