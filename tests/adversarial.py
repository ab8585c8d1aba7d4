"""Worst cases shared by the tests and bench/bounds.py: captures that make resynchronisation
work hardest, and the quadratic specification of the table-merging pass."""

from __future__ import annotations

import itertools
import struct

import numpy as np

from homunculus.ir.pipeline import Field, MatchKind, Range
from homunculus.passes.merge import merge_pair
from homunculus.passes.score_table import ScoreTable


def option(code: int, data: bytes) -> bytes:
    pad = (-len(data)) % 4
    return struct.pack("<HH", code, len(data)) + data + b"\0" * pad


def block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def shb() -> bytes:
    return block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(*options: bytes) -> bytes:
    opts = b"".join(options) + (option(0, b"") if options else b"")
    return block(1, struct.pack("<HHI", 1, 0, 65535) + opts)


def frame() -> bytes:
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20, 1, 0, 64, 1, 0, 0x0A000001, 0x0A000002)
    return b"\x00" * 12 + b"\x08\x00" + ip


def epb(ts: int, data: bytes, iface: int = 0) -> bytes:
    pad = (-len(data)) % 4
    return block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data),
                                len(data)) + data + b"\0" * pad)


FAR = (1 << 20) + 8  # beyond the read window


def adversarial_pcapng(size: int) -> bytes:
    """A bad block, then at every third word a block header that passes every check but its
    trailer, which lies a window away: the worst case for resynchronisation."""
    return shb() + idb() + struct.pack("<II", 6, 0xFFFFFFF0) + struct.pack(
        "<III", 6, FAR, 5) * (size // 12)


def adversarial_pcap(size: int) -> bytes:
    """A bad record, then at every fifth word a record header that is plausible but for the
    record a window further on."""
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 24, 1)
    return head + struct.pack("<IIII", 0, 0xFFFFFFFF, 0, 0) + struct.pack(
        "<IIIII", 0, 0, FAR - 4, FAR - 4, 0xFFFFFFFF) * (size // 20)


def naive_merge_tables(tables: list[ScoreTable], max_tables: int,
                       max_entries: int) -> list[ScoreTable]:
    """The specification: repeatedly fuse the pair with the smallest product (ties: the first
    pair in list order); the merged table goes to the end."""
    tables = list(tables)
    while len(tables) > max(max_tables, 1):
        product, i, j = min((len(a.matches) * len(b.matches), i, j)
                            for (i, a), (j, b) in itertools.combinations(enumerate(tables), 2))
        if product > max_entries:
            break
        merged = merge_pair(tables[i], tables[j], f"{tables[i].name}_{tables[j].name}"[:48])
        tables = [t for k, t in enumerate(tables) if k not in (i, j)] + [merged]
    return tables


def score_table(i: int, n: int) -> ScoreTable:
    """Table ``i``: ``n`` range entries over its own 8-bit key."""
    bounds = [0, *range(1, n), 256]
    return ScoreTable(f"t{i}", (Field(f"f{i}", 8),), (MatchKind.RANGE,),
                      [(Range(bounds[k], bounds[k + 1] - 1),) for k in range(n)],
                      np.arange(2 * n, dtype=np.int64).reshape(n, 2) + i)


