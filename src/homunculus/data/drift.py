"""A seeded drifting scenario for adaptation (``homunculus scenario drift``).

Phases of equal length, each a benign mix of real nDPI test captures (payloads kept, so a DPI
engine can recognise them; timestamps moved into the phase) with seeded attacks injected
(data/attacks.py). From phase to phase the benign mix shifts to other captures and the attacks
change kind and rate; kinds absent from the first phase (the training conditions) appear later.

======  ======================================  =============================================
phase   benign captures (dominant nDPI class)   attacks
======  ======================================  =============================================
0       Web                                     SYN flood, SYN port scan
1       VoIP, Chat, Streaming                   DNS amplification (new), SYN flood at 2x rate
2       Cloud, Network, other                   C&C beacons (new), UDP port scan, DNS ampl.
======  ======================================  =============================================

Captures holding a port scan of their own are left out (their packets are not benign).
Victims and bots are hosts of the phase's benign traffic; attackers are new addresses. Ground
truth is the attack kind (``benign`` otherwise), or ``attack_label`` for every attack (a binary
task). ``train=True`` draws phase 0 only, from another seed: the capture an offline model is
compiled from. See docs/adaptation.md.
"""

from __future__ import annotations

import csv
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from homunculus.data import attacks
from homunculus.data.attacks import BENIGN, inject, public_addresses
from homunculus.errors import DataError

LT_ETHERNET = 1
PHASE_CLASSES = (("Web",), ("VoIP", "Chat", "Streaming"), ("Cloud", "Network", "other"))


@dataclass(frozen=True)
class DriftScenario:
    table: pd.DataFrame  # packet table + label + phase, in time order
    frames: dict[int, bytes]  # row -> the real frame (benign rows from captures)
    captures: list[list[str]]  # per phase, the nDPI captures used


def capture_groups(root: Path) -> list[list[Path]]:
    """nDPI test captures (Ethernet link type) grouped by the phase whose classes dominate
    their labelled IPv4 flows (data/ndpi.py's ground truth)."""
    from homunculus.data.ndpi import category_class, ndpi_captures, parse_ndpi_result
    from homunculus.data.raw import linktype_of

    groups: list[list[Path]] = [[] for _ in PHASE_CLASSES]
    for pcap, result in ndpi_captures(root):
        flows, _ = parse_ndpi_result(result.read_text(errors="replace"))
        classes = [category_class(f.category) for f in flows if f.category != "Unknown"]
        if len(classes) < 2:
            continue
        top = max(set(classes), key=lambda c: (classes.count(c), c))
        phase = next((i for i, group in enumerate(PHASE_CLASSES) if top in group), None)
        if phase is None:
            continue
        try:
            if linktype_of(pcap) != LT_ETHERNET:
                continue
        except DataError:
            continue
        groups[phase].append(pcap)
    return groups


def _benign(paths: list[Path], rng: np.random.Generator, start_us: int, span_us: int,
            budget: int, per_capture: int) -> tuple[pd.DataFrame, dict[int, bytes], list[str]]:
    """Captures in a seeded order until ``budget`` packets, each moved to a random offset."""
    from homunculus.data.pcap import ingest
    from homunculus.data.raw import read_raw_records

    parts, frames, used, total = [], [], [], 0
    for i in rng.permutation(len(paths)):
        if total >= budget:
            break
        table, _ = ingest([paths[i]], max_packets=per_capture, on_warning=lambda _m: None)
        if table.empty or _has_scan(table):
            continue
        ts = table["ts_us"].to_numpy(np.int64)
        duration = int(ts.max() - ts.min())
        offset = int(rng.integers(0, max(span_us - min(duration, span_us), 1)))
        table = table.assign(ts_us=start_us + offset + (ts - ts.min()))
        table = table[table["ts_us"] < start_us + span_us]
        raw = read_raw_records(paths[i], table["record"].tolist())
        frames.append([raw.get(int(r), (LT_ETHERNET, b""))[1] for r in table["record"]])
        parts.append(table)
        used.append(paths[i].name)
        total += len(table)
    if not parts:
        raise DataError("no nDPI capture could be read for a phase of the drift scenario")
    table = pd.concat(parts, ignore_index=True)
    flat = [f for chunk in frames for f in chunk]
    order = np.argsort(table["ts_us"].to_numpy(), kind="stable")
    table = table.iloc[order].reset_index(drop=True)
    return table, {k: flat[i] for k, i in enumerate(order.tolist())}, used


def _has_scan(table: pd.DataFrame, ports: int = 50) -> bool:
    """Whether a capture holds a port scan (one source port probing many ports of one host):
    such captures are left out, since they are not benign traffic."""
    l4 = table[table["has_tcp"].to_numpy(bool) | table["has_udp"].to_numpy(bool)]
    if l4.empty:
        return False
    spread = l4.groupby(["ip_src", "ip_dst", "src_port"])["dst_port"].nunique()
    return bool((spread >= ports).any())


def _hosts(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(TCP servers, private clients) of a benign mix, for victims and bots."""
    syn = table["has_tcp"].to_numpy(bool) & ((table["tcp_flags"].to_numpy() & 0x12) == 0x02)
    servers = np.unique(table["ip_dst"].to_numpy()[syn])
    sources = table["ip_src"].to_numpy(np.uint32)
    private = np.unique(sources[attacks.is_reserved(sources)])
    everyone = np.unique(np.concatenate([table["ip_src"], table["ip_dst"]]))
    return (servers if len(servers) else everyone), (private if len(private) else everyone)


def _attacks(phase: int, rng: np.random.Generator, table: pd.DataFrame, t0: int,
             span: int, scale: float) -> list[pd.DataFrame]:
    servers, clients = _hosts(table)
    exclude = np.unique(np.concatenate([table["ip_src"], table["ip_dst"]]))
    new = public_addresses(rng, 12, exclude=exclude)

    def window(length: float) -> tuple[int, int]:
        start = t0 + int(rng.uniform(0.05, 0.95 - length) * span)
        return start, int(length * span)

    def pick(pool: np.ndarray) -> int:
        return int(rng.choice(pool))

    out = []
    if phase in (0, 1):
        start, dur = window(0.5)
        rate = (40.0 if phase == 0 else 80.0) * scale
        out.append(attacks.syn_flood(rng, start, dur, rate, pick(servers), dst_port=443))
    if phase == 0:
        start, dur = window(0.3)
        out.append(attacks.port_scan(rng, start, int(new[0]), pick(servers), range(1, 401),
                                     400 * 1e6 / dur, "syn"))
    if phase in (1, 2):
        start, dur = window(0.6 if phase == 1 else 0.4)
        rate = (60.0 if phase == 1 else 30.0) * scale
        out.append(attacks.dns_amplification(rng, start, dur, rate, pick(clients),
                                             [int(a) for a in new[1:7]]))
    if phase == 2:
        for k, (period, size) in enumerate(((2_000_000, 64), (3_000_000, 120))):
            out.append(attacks.c2_beacon(rng, t0, span, pick(clients), int(new[7 + k]), period,
                                         period // 10, size, label="beacon"))
        start, dur = window(0.3)
        out.append(attacks.port_scan(rng, start, int(new[9]), pick(servers), range(1, 301),
                                     300 * 1e6 / dur, "udp"))
    return out


def drift_scenario(seed: int = 0, *, phases: int = 3, phase_s: float = 60.0,
                   benign_packets: int = 12_000, per_capture: int = 1500,
                   attack_scale: float = 1.0, train: bool = False,
                   cache: Path | None = None) -> DriftScenario:
    """The scenario (see the module docstring); ``benign_packets`` per phase."""
    from homunculus.data.ndpi import fetch_ndpi

    if not 1 <= phases <= len(PHASE_CLASSES):
        raise DataError(f"phases must be 1..{len(PHASE_CLASSES)}")
    if phase_s <= 0 or benign_packets < 1 or attack_scale <= 0:
        raise DataError("phase_s, benign_packets and attack_scale must be positive")
    rng = np.random.default_rng(seed + (1_000_003 if train else 0))
    groups = capture_groups(fetch_ndpi(cache, log=lambda _m: None))
    span = int(phase_s * 1e6)
    t0 = attacks.DEFAULT_START_US
    tables, frames, used = [], [], []
    for phase in range(1 if train else phases):
        benign, raw, names = _benign(groups[phase], rng, t0 + phase * span, span,
                                     benign_packets, per_capture)
        benign = benign.assign(file_id=np.int32(0))
        mixed = inject(benign, _attacks(phase, rng, benign, t0 + phase * span, span,
                                        attack_scale), seed + phase)
        # inject keeps background rows' order and columns: map their frames through record
        is_bg = mixed["file_id"].to_numpy() == 0
        bg_rows = np.flatnonzero(is_bg)
        frames.append({int(r): raw[k] for k, r in enumerate(bg_rows.tolist())})
        tables.append(mixed.assign(phase=phase))
        used.append(names)
    offsets = np.cumsum([0] + [len(t) for t in tables[:-1]])
    table = pd.concat(tables, ignore_index=True)
    table["record"] = np.arange(len(table), dtype=np.int64)
    table["file_id"] = np.int32(0)
    merged = {int(o) + r: f for o, part in zip(offsets, frames, strict=True)
              for r, f in part.items()}
    return DriftScenario(table, merged, used)


def relabel(table: pd.DataFrame, attack_label: str | None) -> pd.DataFrame:
    if attack_label is None:
        return table
    labels = table["label"].astype(str)
    return table.assign(label=labels.where(labels == BENIGN, attack_label))


def write_drift(scenario: DriftScenario, pcap: Path, labels: Path,
                attack_label: str | None = None) -> pd.DataFrame:
    """Write the capture (real frames for benign packets, synthesised ones for attacks) and a
    label CSV reproducing the ground truth; the table written (labels as in the CSV)."""
    from homunculus.data.pcap import _frame, ingest
    from homunculus.data.scenarios import label_rules

    table = relabel(scenario.table, attack_label)
    with open(pcap, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LT_ETHERNET))
        for i, r in enumerate(table.to_dict("records")):
            frame = scenario.frames.get(i)
            wire = len(frame) if frame else int(r["wire_len"])
            if not frame:
                frame, pad = _frame(r)
                if pad and len(frame) < wire:
                    frame += b"\0" * (wire - len(frame))
                wire = max(wire, len(frame))
            ts = int(r["ts_us"])
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame),
                                max(wire, len(frame))))
            f.write(frame)
    rules = label_rules(table, BENIGN)
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["label", "src", "dst", "sport", "dport", "proto",
                                                "start_us", "end_us", "bidirectional"])
        writer.writeheader()
        writer.writerows(rules)
    from homunculus.data.labels import label_from_file

    back, _ = ingest([pcap], on_warning=lambda _m: None)
    again = label_from_file(back, labels, default=BENIGN)
    mismatch = int((again["label"].to_numpy() != table["label"].astype(str).to_numpy()).sum())
    if len(back) != len(table) or mismatch > 0.001 * len(table):
        raise DataError(f"{labels}: the written capture and labels reproduce the scenario only "
                        f"in part ({len(back)} of {len(table)} packets, {mismatch} labels off)")
    return table
