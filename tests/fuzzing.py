"""Input mutators and property checks shared by the fuzz tests (tests/test_fuzz.py, driven by
hypothesis) and the long run (bench/fuzz.py, driven by a seeded random.Random).

The property, for every variant: the command (or the code path it runs) ends normally or with a
HomunculusError (exit 2 with one ``error:`` message); never another exception, never past a time
bound, and nothing outside OUT changes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import random
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from homunculus.data.packets import PACKET_COLUMNS, as_packet_table
from homunculus.data.pcap import MAX_TS_US, ingest, write_pcap
from homunculus.errors import HomunculusError

Rng = random.Random

# ----------------------------------------------------------------------------- hostile values

HOSTILE_STRINGS = [
    "", " ", "x" * 5000, "[/]x", "[bold red]boom", "\x1b[2J\x1b[31mred", "a\nb", "\x00", "??/",
    "??=", "*/ evil /*", "\\", "ünïcødé", "\u202egnp.exe", "%s%n", "{0}", "../../etc/passwd",
    "null", "~", "nan", "-1", "1e309", "camera", "dt",
]
HOSTILE_NUMBERS: list[Any] = [
    0, -1, 1, 2, 7, 8, 16, 32, 33, 64, 255, 256, 65535, 2**31, 2**32 - 1, 2**32, 2**63,
    2**64, 10**30, -(10**30), 0.5, 1e-9, 0.999999, 1.5, float("nan"), float("inf"),
    float("-inf"), True, False, None,
]


def hostile_value(rng: Rng, depth: int = 0) -> Any:
    kind = rng.randrange(6 if depth < 2 else 3)
    if kind == 0:
        return rng.choice(HOSTILE_NUMBERS)
    if kind == 1:
        return rng.choice(HOSTILE_STRINGS)
    if kind == 2:
        return rng.randint(-(2**40), 2**40)
    if kind == 3:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 4:
        return {rng.choice(HOSTILE_STRINGS + ["name", "width", "kind"]): hostile_value(
            rng, depth + 1) for _ in range(rng.randrange(3))}
    return rng.choice(["tofino", "bmv2", "xdp", "c", "ipv4.ttl", "tcp.dst_port",
                       "udp.src_port", "header", "pkt_count", "len_hist", "attacks", "file"])


# ----------------------------------------------------------------------------- specs

BASE_SPEC: dict[str, Any] = {
    "name": "fuzz",
    "data": {"path": "data.csv", "label": "device", "features": [
        {"name": "ip_len", "width": 16, "field": "ipv4.total_len"},
        {"name": "ttl", "width": 8, "field": "ipv4.ttl"},
        {"name": "proto", "width": 8},
        {"name": "dst_port", "width": 16}]},
    "model": {"name": "m", "metric": "f1_macro", "algorithms": ["dt", "gnb"],
              "verdict": {"kind": "dscp", "dscp": {"camera": 34}}},
    "platform": {"target": "tofino", "constraints": {"resources": {"stages": 12}}},
    "search": {"trials": 1, "seed": 0},
}
TRAFFIC_SPEC: dict[str, Any] = {
    "name": "fuzz-traffic",
    "traffic": {"pcaps": ["capture.pcap"], "labels": {"kind": "file", "path": "labels.csv"},
                "features": [
                    {"name": "ttl", "kind": "header", "field": "ipv4.ttl", "width": 8},
                    {"name": "pkts", "kind": "pkt_count", "width": 8},
                    {"name": "lh", "kind": "len_hist", "bins": 2, "bin_shift": 9, "width": 8}],
                "flow": {"slots": 64}},
    "model": {"name": "m", "algorithms": ["dt"]},
    "platform": {"target": "bmv2"},
    "search": {"trials": 1, "seed": 0},
}
LABELS_CSV = "label,src,dport,proto\nweb,,443,tcp\ndns,,53,udp\n"


def base_table(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.array(["camera", "plug", "hub"])[rng.integers(0, 3, rows)]
    return pd.DataFrame({"ip_len": rng.integers(40, 1500, rows), "ttl": rng.integers(1, 255, rows),
                         "proto": rng.choice([6, 17], rows),
                         "dst_port": rng.integers(0, 65535, rows), "device": labels})


def base_packets(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """A small consistent packet table: TCP to 443 and UDP to 53 between a few hosts."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        udp = bool(i % 3 == 0)
        row = dict.fromkeys(PACKET_COLUMNS, 0)
        total = int(rng.integers(40, 600))
        row.update(ts_us=1_700_000_000_000_000 + 1000 * i, eth_type=0x0800, has_ipv4=1,
                   ip_src=0x0A000001 + i % 4, ip_dst=0x08080808, ip_proto=17 if udp else 6,
                   ip_ttl=int(rng.integers(30, 128)), ip_ihl=5, ip_total_len=total, ip_id=i,
                   has_tcp=0 if udp else 1, has_udp=1 if udp else 0, src_port=40000 + i % 5,
                   dst_port=53 if udp else 443, tcp_flags=0 if udp else 0x18,
                   tcp_window=0 if udp else 512, tcp_data_offset=0 if udp else 5,
                   udp_len=total - 20 if udp else 0, wire_len=14 + total)
        rows.append(row)
    cols = {c: np.array([r[c] for r in rows], dtype=np.int64) for c in PACKET_COLUMNS}
    return as_packet_table(cols)


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def mutate_tree(spec: dict[str, Any], rng: Rng) -> dict[str, Any]:
    """A type, key or value mutation of the spec as data."""
    spec = copy.deepcopy(spec)
    paths = [p for p in _paths(spec) if p]
    path = rng.choice(paths)
    parent, key = _get(spec, path[:-1]), path[-1]
    op = rng.randrange(7)
    if op == 0:
        parent[key] = hostile_value(rng)
    elif op == 1 and isinstance(parent, dict):
        del parent[key]
    elif op == 1:
        parent.pop(key)
    elif op == 2 and isinstance(parent, dict):
        parent[rng.choice(HOSTILE_STRINGS + ["extra", "profile", "trials"])] = hostile_value(rng)
    elif op == 3 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))  # duplicates (features declared twice...)
    elif op == 4:
        parent[key] = rng.choice(HOSTILE_NUMBERS)
    elif op == 5:
        parent[key] = rng.choice(HOSTILE_STRINGS)
    else:
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"x": parent[key]}
    return spec


SPEC_FIELDS: list[tuple[tuple, list[Any]]] = [
    (("search", "seed"), [-1, 2**32 - 1, 2**32, 2**64, 0.5, "0"]),
    (("search", "trials"), [0, 1, -3, 10**9, None]),
    (("search", "seconds"), [float("nan"), float("inf"), -1, 1e-9, None]),
    (("search", "validation_fraction"), [1e-12, 0.999999, 0.0, 1.0, float("nan")]),
    (("search", "sampler"), ["random", "grid", ""]),
    (("data", "test_fraction"), [1e-12, 0.999999, 0.0, 1.0, float("nan")]),
    (("data", "label"), ["ip_len", "nope", "", "device "]),
    (("data", "path"), ["missing.csv", "/dev/zero", "/dev/null", ".", "data.csv/x", "/proc/1/mem",
                        "fifo.csv", "x" * 300]),
    (("data", "test_path"), ["data.csv", "missing.csv", "/dev/zero"]),
    (("model", "algorithms"), [[], ["mlp"], ["dt", "dt"], ["nope"], ["svm", "kmeans", "cnb"],
                               "dt", None]),
    (("model", "metric"), ["recall", "f1_binary", "nope"]),
    (("model", "class_of_interest"), ["camera", "toaster", ""]),
    (("model", "objectives"), [["metric", "entries"], ["entries"], ["metric", "metric"]]),
    (("model", "verdict"), [{"kind": "drop", "drop": ["hub", "nope"]},
                            {"kind": "forward", "ports": {"plug": 512}},
                            {"kind": "dscp", "dscp": {"camera": 64}}, {"kind": "teleport"}]),
    (("platform", "target"), ["bmv2", "xdp", "c", "tofino2", ""]),
    (("platform", "profile"), [{"stages": 0}, {"stages": float("nan")}, {"stages": 2},
                               {"supports_range": 3}, {"nope": 1}, {"tables_per_stage": 10**12},
                               {"sram_block_entries": 1}, {"pipeline_gpps": 1e-300}]),
    (("platform", "constraints"), [{"resources": {"stages": 1}},
                                   {"resources": {"entries": 1, "tcam_kbit": 0}},
                                   {"performance": {"latency_ns": float("nan")}},
                                   {"resources": {"stages": 10**40}}]),
]


def mutate_features(spec: dict[str, Any], rng: Rng) -> dict[str, Any]:
    """Feature declarations: widths, names, header fields, transport mixes, many features."""
    spec = copy.deepcopy(spec)
    section = spec.get("data") if "data" in spec else spec.get("traffic")
    feats = section.get("features") if isinstance(section, dict) else None
    if not isinstance(feats, list) or not feats or not isinstance(feats[0], dict):
        return mutate_tree(spec, rng)
    f = rng.choice([x for x in feats if isinstance(x, dict)] or [feats[0]])
    op = rng.randrange(6)
    if op == 0:
        f["width"] = rng.choice([0, 1, 7, 13, 32, 33, -1, 2**40, 1.5, "8", None])
    elif op == 1:
        f["name"] = rng.choice(HOSTILE_STRINGS)
    elif op == 2:
        f["field"] = rng.choice(["tcp.dst_port", "udp.dst_port", "tcp.flags", "ipv4.frag_offset",
                                 "l4.src_port", "ipv4.nope", "", None])
        if f["field"] in ("tcp.dst_port", "udp.dst_port", "l4.src_port"):
            f["width"] = 16
    elif op == 3:
        feats.append(copy.deepcopy(f))
    elif op == 4 and "data" in spec:
        extra = [{"name": f"w{i}", "width": rng.choice([1, 2, 8])} for i in range(
            rng.choice([50, 300, 900]))]
        feats.extend(extra)  # many declared features (the CSV lacks them: a located error)
    else:
        f["kind"] = rng.choice(["header", "pkt_count", "iat_hist", "nope", "flow_age"])
        f["bins"] = rng.choice([0, 1, 64, 65])
    return spec


def mutate_fields(spec: dict[str, Any], rng: Rng) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    path, values = rng.choice(SPEC_FIELDS)
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        node[path[-1]] = rng.choice(values)
    return spec


def yaml_text(spec: Any) -> str:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)


TEXT_MUTATIONS = ["duplicate key", "alias bomb", "recursive alias", "deep nesting", "tag",
                  "two documents", "byte flip", "truncate", "insert garbage", "tabs", "merge key",
                  "anchors"]


def mutate_text(text: str, rng: Rng) -> bytes:
    """YAML structure: duplicate keys, aliases, nesting, tags, documents, raw bytes."""
    op = rng.choice(TEXT_MUTATIONS)
    lines = text.splitlines()
    out = text
    if op == "duplicate key":
        top = [i for i, ln in enumerate(lines) if ln and not ln[0].isspace()]
        i = rng.choice(top)
        j = next((k for k in top if k > i), len(lines))
        out = "\n".join(lines + lines[i:j]) + "\n"
    elif op == "alias bomb":
        n = rng.choice([3, 6, 9])
        bomb = ["lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        bomb += [f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, n)]
        out = "\n".join(bomb + lines) + "\n"
    elif op == "recursive alias":
        out = text + "extra: &r [1, *r]\n"
    elif op == "deep nesting":
        depth = rng.choice([10, 70, 1000, 50_000])
        out = text + "extra: " + "[" * depth + "]" * depth + "\n"
    elif op == "tag":
        tag = rng.choice(["!!python/object/apply:os.system ['true']", "!!binary AAAA",
                          "!!timestamp 2001-13-45", "!!set {a, b}", "!!float nan",
                          "!!int 0x7fffffffffffffffffff", "!custom x"])
        out = text.replace("name: fuzz", f"name: {tag}", 1)
    elif op == "two documents":
        out = text + "---\n" + text
    elif op == "merge key":
        out = text + "defaults: &d {trials: 1}\nsearch2:\n  <<: *d\n  <<: *d\n"
    elif op == "anchors":
        out = text + "a: &a x\nb: &a y\nc: *a\nd: *undefined\n"
    raw = bytearray(out.encode("utf-8", errors="surrogateescape"))
    if op == "byte flip" and raw:
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        raw = raw[:rng.randrange(len(raw) + 1)]
    elif op == "insert garbage":
        at = rng.randrange(len(raw) + 1)
        raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == "tabs":
        raw = raw.replace(b"  ", b"\t", rng.randint(1, 5))
    return bytes(raw)


CSV_CELLS = ["", "nan", "NaN", "inf", "-1", "1.5", "1e400", "99999999999999999999", "camera",
             "\x00", "x" * 10_000, "1,2", "\"", "None", "[/]x", "\x1b[31m", "0x10", " 7 "]


def mutate_csv(table: pd.DataFrame, rng: Rng) -> bytes:
    """CSV cells, columns and shape."""
    table = table.astype(object).copy()
    op = rng.randrange(7)
    if op == 0:
        for _ in range(rng.randint(1, 4)):
            table.iat[rng.randrange(len(table)), rng.randrange(table.shape[1])] = rng.choice(
                CSV_CELLS)
    elif op == 1:
        table = table.head(rng.choice([0, 1, 2, 3, 4, 5]))
    elif op == 2:
        table["device"] = rng.choice(["camera", "", "x" * 5000, "??/"])
    elif op == 3:
        table = table.drop(columns=rng.choice(list(table.columns)))
    elif op == 4:
        table.columns = [rng.choice(["ip_len", "ttl", str(c)]) for c in table.columns]
    elif op == 5:
        table["device"] = [f"class{i}" for i in range(len(table))]  # every row its own class
    else:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000)))
    return table.to_csv(index=False).encode("utf-8", errors="surrogateescape")


@dataclass(frozen=True)
class SpecCase:
    spec: Path
    kind: str


def write_spec_case(directory: Path, rng: Rng) -> SpecCase:
    """A mutated spec (YAML) with its data in ``directory`` (made fresh by the caller)."""
    traffic = rng.random() < 0.2
    spec: dict[str, Any] = copy.deepcopy(TRAFFIC_SPEC if traffic else BASE_SPEC)
    if traffic:
        write_pcap(base_packets(), directory / "capture.pcap")
        (directory / "labels.csv").write_text(LABELS_CSV)
    table = base_table(seed=rng.randrange(1000))
    (directory / "data.csv").write_bytes(table.to_csv(index=False).encode())
    with contextlib.suppress(OSError):
        os.mkfifo(directory / "fifo.csv")
    kinds = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        op = rng.choices(["tree", "features", "fields", "csv", "none"], [25, 25, 30, 15, 5])[0]
        if op == "tree":
            spec = mutate_tree(spec, rng)
        elif op == "features":
            spec = mutate_features(spec, rng)
        elif op == "fields":
            spec = mutate_fields(spec, rng)
        elif op == "csv" and not traffic:
            (directory / "data.csv").write_bytes(mutate_csv(table, rng))
        kinds.append(op)
    text = yaml_text(spec)
    raw = text.encode("utf-8", errors="surrogateescape")
    if rng.random() < 0.15:
        raw = mutate_text(text, rng)
        kinds.append("text")
    path = directory / "spec.yaml"
    path.write_bytes(raw)
    return SpecCase(path, "+".join(kinds))


# ----------------------------------------------------------------------------- captures


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * ((-len(body)) % 4)
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def base_pcapng(table: pd.DataFrame, rng: Rng) -> bytes:
    """A pcapng of the table's frames: one or two interfaces with options, EPBs and an SPB."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "c.pcap"
        write_pcap(table, pcap)
        data = pcap.read_bytes()
    frames, pos = [], 24
    while pos + 16 <= len(data):
        sec, usec, caplen, orig = struct.unpack_from("<IIII", data, pos)
        frames.append((sec * 10**6 + usec, data[pos + 16:pos + 16 + caplen], orig))
        pos += 16 + caplen
    out = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HHB3x", 9, 1, 6) + struct.pack("<HHq", 14, 8, 0) + struct.pack("<HH", 0,
                                                                                        0)
    out += _block(1, struct.pack("<HHI", 1, 0, 65535) + opts)
    for ts, frame, orig in frames:
        out += _block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(frame), orig)
                      + frame)
    if frames:
        out += _block(3, struct.pack("<I", len(frames[0][1])) + frames[0][1])
    return out


EXTREME_U32 = [0, 1, 3, 11, 12, 13, 16, 28, 32, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF,
               1 << 18, (1 << 24) + 4, 1 << 24]
CAPTURE_MUTATIONS = ["bit flips", "extreme word", "truncate", "insert", "delete", "duplicate",
                     "timestamp", "length", "option", "magic", "splice"]


def mutate_capture(data: bytes, rng: Rng, pcapng: bool) -> tuple[bytes, str]:
    raw = bytearray(data)
    op = rng.choice(CAPTURE_MUTATIONS)
    n = len(raw)
    if n == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64))), "random bytes"
    if op == "bit flips":
        for _ in range(rng.randint(1, 32)):
            raw[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op in ("extreme word", "length", "timestamp"):
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(0, max(n - 4, 1)) & ~3 if op != "extreme word" else rng.randrange(
                max(n - 4, 1))
            value = rng.choice(EXTREME_U32) if op != "timestamp" else rng.choice(
                [0xFFFFFFFF, 0, 0x80000000, rng.getrandbits(32)])
            raw[at:at + 4] = struct.pack("<I", value)
    elif op == "truncate":
        raw = raw[:rng.randrange(n + 1)]
    elif op == "insert":
        at = rng.randrange(n + 1)
        raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 4, 16, 200])))
    elif op == "delete":
        at = rng.randrange(n)
        del raw[at:at + rng.choice([1, 4, 16, 100])]
    elif op == "duplicate":
        at = rng.randrange(n)
        raw += raw[at:at + rng.randint(1, 400)] * rng.randint(1, 20)
    elif op == "option" and pcapng:
        resol = rng.choice([0, 6, 9, 18, 19, 63, 127, 0x80, 0x80 | 63, 0x80 | 64, 0xFF])
        offset = rng.choice([0, 1, -1, 2**40, -(2**40), 2**62, -(2**63)])
        code = rng.choice([9, 14, 2, 0xFFFF, 1])
        opt = struct.pack("<HHB3x", 9, 1, resol) + struct.pack("<HHq", 14, 8, offset)
        opt += struct.pack("<HH", code, rng.choice([0, 1, 8, 0xFFFF]))
        idb = _block(1, struct.pack("<HHI", 1, 0, rng.choice([0, 65535, 0xFFFFFFFF])) + opt)
        at = 28  # after the section header
        raw[at:at] = idb
    elif op == "magic":
        raw[:4] = rng.choice([b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x34\xcd\xb2\xa1",
                              b"\x0a\x0d\x0d\x0a", b"\x00\x00\x00\x00"])
        if pcapng and rng.random() < 0.5:
            raw[8:12] = b"\x1a\x2b\x3c\x4d"  # big-endian byte order mark on little-endian data
    else:
        cut = rng.randrange(n)
        raw = raw[:cut] + raw[rng.randrange(n):]
    return bytes(raw), op


def write_capture_case(directory: Path, rng: Rng) -> tuple[Path, str]:
    table = base_packets(rng.choice([1, 5, 40]), seed=rng.randrange(100))
    pcapng = rng.random() < 0.5
    if pcapng:
        data = base_pcapng(table, rng)
    else:
        path = directory / "base.pcap"
        write_pcap(table, path)
        data = path.read_bytes()
        path.unlink()
    ops = []
    for _ in range(rng.choice([1, 1, 2, 4])):
        data, op = mutate_capture(data, rng, pcapng)
        ops.append(op)
    path = directory / ("c.pcapng" if pcapng else "c.pcap")
    path.write_bytes(data)
    return path, ("pcapng:" if pcapng else "pcap:") + "+".join(ops)


def check_capture(path: Path) -> str:
    """Read a capture: rows or a DataError; every timestamp in range. The outcome."""
    try:
        table, stats = ingest([path], on_warning=lambda _m: None)
    except HomunculusError as exc:
        return f"error {type(exc).__name__}"
    ts = table["ts_us"].to_numpy()
    assert ((ts >= 0) & (ts <= MAX_TS_US)).all(), "timestamp out of range"
    assert len(table) == stats.packets
    return "ok"


# ----------------------------------------------------------------------------- CLI


def cli_arguments(rng: Rng, directory: Path) -> list[str]:
    """A command line from the CLI's grammar with hostile values (no root commands that could
    touch a real interface: deploy is only given interfaces that do not exist)."""
    paths = [str(directory / "spec.yaml"), str(directory / "out"), str(directory / "data.csv"),
             str(directory / "fifo.csv"), str(directory), ".", "", "/dev/null", "/proc/nope",
             str(directory / "missing"), str(directory / ("x" * 300)), "[/]x", "\x1b[2J"]
    numbers = ["0", "-1", "1", "nan", "inf", "-inf", "1e309", "2", str(2**64), "abc", "", "1.5"]
    storages = [f"postgresql://u@/db?host={directory / 'nosock'}", "postgresql://:@:x/",
                "nope://x", "", "journal:" + str(directory / "missing" / "j.log"),
                "sqlite:////proc/nope/x.db", "\x1b[2J", "[/]x"]
    command = rng.choice(["compile", "simulate", "scenario", "example-data", "families",
                          "targets", "stats", "undeploy", "push", "deploy", "--help", "nope",
                          "worker", "evaluate"])
    args = [command]
    if command == "compile":
        args += [rng.choice(paths), "-o", rng.choice(paths), "--no-progress"]
        args += rng.choice([[], ["--trials", rng.choice(numbers)], ["--seconds", rng.choice(
            numbers)], ["--seed", rng.choice(numbers)], ["--resume"]])
        args += ["--trials", "1"] if "--trials" not in args else []
    elif command == "simulate":
        args += [rng.choice(paths), "--pcap", rng.choice(paths)]
        args += rng.choice([[], ["--labels", rng.choice(paths)], ["--json", rng.choice(paths)]])
    elif command == "scenario":
        args += [rng.choice(["anomaly", "botnet", "nope", ""]), "--pcap", rng.choice(paths),
                 "--labels", rng.choice(paths), "--flows", rng.choice(["3", *numbers]),
                 "--seconds", rng.choice(["2", *numbers]), "--seed", rng.choice(numbers)]
    elif command == "example-data":
        args += [rng.choice(paths), "--rows", rng.choice(["10", *numbers]),
                 "--seed", rng.choice(numbers)]
    elif command in ("stats", "undeploy"):
        args += [rng.choice(["hmn_fuzz_none", "../x", "", "[/]x", "a" * 100])]
    elif command == "push":
        args += [rng.choice(paths), "--name", rng.choice(["hmn_fuzz_none", "../x", ""])]
    elif command == "worker":
        args += [rng.choice(paths), "--storage", rng.choice(storages), "--study",
                 rng.choice(["s", "", "[/]x", "x" * 600]), "--wait", rng.choice(["0", *numbers]),
                 "--no-progress"]
    elif command == "evaluate":
        args += [rng.choice(paths), "--splits", rng.choice(["1", *numbers]), "--trials", "1"]
        args += rng.choice([[], ["--seed", rng.choice(numbers)], ["--seconds", rng.choice(
            numbers)], ["--json", rng.choice(paths)]])
    elif command == "deploy":
        args += [rng.choice(paths), "--iface", rng.choice(["hmn-fuzz-none0", "", "x" * 40]),
                 "--mode", rng.choice(["skb", "native", "hw"])]
    if rng.random() < 0.1:
        args.insert(rng.randrange(len(args) + 1), rng.choice(["--bogus", "-o", "--", "-x"]))
    return args


# ----------------------------------------------------------------------------- the property


class Hang(Exception):
    """A variant ran past its time bound."""


@contextlib.contextmanager
def time_bound(seconds: float) -> Iterator[None]:
    """Raise Hang if the block runs longer than ``seconds`` (SIGALRM: main thread only)."""
    def alarm(_signum: int, _frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(root: Path, skip: Callable[[str], bool] = lambda _r: False) -> dict[str, str]:
    """Every entry under ``root`` with its size, mtime and a digest (to detect any change)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if skip(rel):
            continue
        st = path.lstat()
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        else:
            digest = oct(st.st_mode)
        out[rel] = f"{st.st_size}:{st.st_mtime_ns}:{digest}"
    return out


def outside_out(rel: str) -> bool:
    """True for entries that belong to OUT (or its lock/workspace siblings)."""
    return rel == "out" or rel.startswith(("out/", ".out."))


def validate_spec(spec: Path) -> str:
    """Run a spec through every check a compile makes before its search; the outcome."""
    from homunculus.compile import build_problem, check_seed, choose_candidates, search_settings
    from homunculus.frontend.yaml_spec import plan_from_yaml

    try:
        plan = plan_from_yaml(spec)
        seed = check_seed(plan, plan.search.seed, False)
        problem, requested = build_problem(plan, seed)
        _, allowed = choose_candidates(problem, requested)
        search_settings(problem, allowed)
    except HomunculusError as exc:
        return f"error {type(exc).__name__}"
    return "ok"


class Touched(AssertionError):
    """A file outside OUT changed (or a workspace or lock was left beside OUT)."""


def spec_variant(rng: Rng, root: Path) -> str:
    """Write a spec variant into ``root`` and validate it; nothing in ``root`` may change."""
    case = write_spec_case(root, rng)
    before = snapshot(root)
    outcome = validate_spec(case.spec)
    if snapshot(root) != before:
        raise Touched(f"validation changed files ({case.kind})")
    return outcome


def compile_variant(rng: Rng, root: Path, attempts: int = 50) -> str:
    """Compile (through the CLI, one trial) a spec variant that passes validation, preferably:
    exit 0 or 2, nothing changed outside OUT, nothing left beside it."""
    from typer.testing import CliRunner

    from homunculus.cli import app

    for attempt in range(attempts):
        work = root / str(attempt)
        work.mkdir()
        case = write_spec_case(work, rng)
        if validate_spec(case.spec) == "ok":
            break
    work = case.spec.parent
    before = {k: v for k, v in snapshot(work).items() if not outside_out(k)}
    result = CliRunner().invoke(app, ["compile", str(case.spec), "-o", str(work / "out"),
                                      "--no-progress", "--trials", "1"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.output[-500:]}"
    if snapshot(work, outside_out) != before:
        raise Touched(f"compile changed files outside OUT ({case.kind})")
    if any(p.name.startswith(".out.") for p in work.iterdir()):
        raise Touched("a workspace or lock was left beside OUT")
    return f"exit {result.exit_code}"


def capture_variant(rng: Rng, root: Path) -> str:
    path, _ops = write_capture_case(root, rng)
    return check_capture(path)


def written_inside(root: Path, arg: str) -> bool:
    """Whether a command-line argument names a path inside ``root`` (relative ones count)."""
    try:
        return (root / arg).resolve().is_relative_to(root.resolve()) and \
            (root / arg).resolve() != root.resolve()
    except (OSError, ValueError):
        return False


def cli_variant(rng: Rng, root: Path) -> str:
    """Run a hostile command line in ``root`` (which gets a spec, data and a FIFO): exit 0 or 2
    with a message, no traceback, no change but to the paths the command was told to write."""
    from typer.testing import CliRunner

    from homunculus.cli import app

    (root / "spec.yaml").write_text(yaml_text(BASE_SPEC))
    base_table().to_csv(root / "data.csv", index=False)
    os.mkfifo(root / "fifo.csv")
    args = cli_arguments(rng, root)
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 2), f"{args}: exit {result.exit_code}: {result.output[-500:]}"
    assert "Traceback" not in result.output, args
    if result.exit_code == 2 and args[0] not in ("nope", "--bogus"):
        assert "error" in result.output.lower() or "Usage" in result.output, args
    after = snapshot(root)
    allowed = {(root / a).resolve().relative_to(root.resolve()).as_posix() for a in args
               if a and written_inside(root, a)}  # files the command was asked to write
    changed = {k for k, v in after.items() if before.get(k) != v} | (set(before) - set(after))
    if not all(outside_out(c) or any(c == a or c.startswith(a + "/") or a.startswith(c + "/")
                                     for a in allowed)  # the path, inside it, or its parents
               for c in changed):
        raise Touched(f"{args} changed {sorted(changed)[:5]}")
    return f"exit {result.exit_code}"
