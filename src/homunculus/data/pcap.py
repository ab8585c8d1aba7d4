"""Capture files <-> packet tables: streaming pcap/pcapng reader and a pcap writer.

Formats are detected by magic number, never by extension. File and block headers are parsed
with dpkt (``dpkt.pcap.FileHdr``, ``dpkt.pcapng`` section and interface blocks); packet records
are read with ``struct`` from a bounded read window, because dpkt's own readers drop the record's
original length, use only the first pcapng interface's timestamp resolution and stop (or return
short buffers) at the first corrupt record. Reading a record ourselves gives ``wire_len`` from the
pcap header's ``orig_len`` (pcapng: the EPB's packet length) and lets a bad record be skipped.

Damage handling: a record whose header is implausible (length beyond the file or over the
maximum, sub-second field out of range) is skipped, the reader resynchronises on the next
plausible record, and a warning names the file and record number; a capture cut short ends that
file's stream with a warning. A file that is not a capture raises :class:`DataError`, and so does
a path that is not a regular file (a FIFO or a device is never read) or one over
MAX_CAPTURE_BYTES.

Every field is range-checked: timestamps (after resolution and offset) must lie in
0..MAX_TS_US, pcapng resolutions in 10^0..10^18 or 2^0..2^63, lengths within their block and the
file. Resynchronisation is linear in the file size: candidate positions are filtered with numpy
over the read window, and the few that pass are checked with small reads that never move it.

Link types: Ethernet (with any number of 802.1Q/802.1ad tags, whose inner EtherType is kept as
``eth_type``), Linux cooked (SLL, SLL2), raw IP, BSD null/loopback, PPP and Cisco HDLC. Packets
of other link types, and packets without a parseable IPv4 header, are rows with ``has_ipv4``
False.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import dpkt
import numpy as np
import pandas as pd

from homunculus.data.packets import PACKET_COLUMNS, as_packet_table, empty_packet_table
from homunculus.errors import DataError
from homunculus.inputs import MAX_CAPTURE_BYTES, open_regular

log = logging.getLogger(__name__)

Warn = Callable[[str], None]

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
# first four bytes -> (struct endianness, sub-second units per second, record header length)
PCAP_MAGICS: dict[bytes, tuple[str, int, int]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1_000_000, 24),  # Kuznetzov's modified pcap
    b"\xa1\xb2\xcd\x34": (">", 1_000_000, 24),
}
MAX_RECORD = 1 << 18  # libpcap's largest snapshot length
MAX_BLOCK = 1 << 24  # largest pcapng block accepted
MAX_RESYNC = 1 << 24  # bytes scanned for the next plausible record after a bad one
MAX_TS_JUMP_S = 30 * 86400  # a resync candidate's timestamp must be this close to the last one
WINDOW = 1 << 20
MAX_KEPT_WARNINGS = 1000
MAX_TS_US = 2**53 - 1  # ~285 years after 1970: exact in float64, and in ns within int64
MAX_TSRESOL = {10: 18, 2: 63}  # largest if_tsresol exponent per base

# link types (LINKTYPE_* values of the pcap/pcapng specifications)
LT_NULL, LT_ETHERNET, LT_PPP, LT_RAW_BSD, LT_RAW_OPENBSD, LT_PPP_HDLC = 0, 1, 9, 12, 14, 50
LT_RAW, LT_C_HDLC, LT_LOOP, LT_SLL, LT_IPV4, LT_IPV6, LT_SLL2 = 101, 104, 108, 113, 228, 229, 276
SUPPORTED_LINKTYPES = frozenset({LT_NULL, LT_ETHERNET, LT_PPP, LT_RAW_BSD, LT_RAW_OPENBSD,
                                 LT_PPP_HDLC, LT_RAW, LT_C_HDLC, LT_LOOP, LT_SLL, LT_IPV4,
                                 LT_IPV6, LT_SLL2})
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_IPV4 = struct.Struct("!BHHHBBHII")  # after the version/IHL byte
_TCP = struct.Struct("!HHIIBBH")
_UDP = struct.Struct("!HHH")
_N_COLS = len(PACKET_COLUMNS)
_NO_IP = (False, 0, 0, 0, 0, 0, 0, 0, 0, 0, False, False, 0, 0, 0, 0, 0, 0)


@dataclass
class FileStats:
    """What reading one capture gave: rows, skipped records, damage."""

    path: str
    format: str = ""
    linktypes: set[int] = field(default_factory=set)
    packets: int = 0
    skipped: int = 0
    truncated: bool = False
    malformed: int = 0  # rows kept whose IPv4 header did not parse (has_ipv4 False)
    bad_wire_len: int = 0  # pcap records whose orig_len < caplen or absurd: wire_len = caplen


@dataclass
class IngestStats:
    """Counters of a read: totals, per-file stats (indexed by file_id) and kept warnings."""

    files: list[FileStats] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def packets(self) -> int:
        return sum(f.packets for f in self.files)

    @property
    def skipped(self) -> int:
        return sum(f.skipped for f in self.files)

    @property
    def truncated_files(self) -> int:
        return sum(f.truncated for f in self.files)

    @property
    def malformed(self) -> int:
        return sum(f.malformed for f in self.files)


class _Window:
    """Random access to a file through one bounded buffer (the file is never read whole).

    ``view`` serves sequential reading and moves the buffer; ``peek`` serves the far probes of
    plausibility checks with a small read that leaves the buffer where it is, so scanning for a
    plausible record costs one pass over the file, not a buffer refill per candidate.
    """

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.size = f, size
        self.buf, self.start = b"", 0

    def view(self, pos: int, n: int) -> tuple[bytes, int]:
        """(buffer, offset) such that buffer[offset:offset+n] is the file's bytes [pos, pos+n)."""
        off = pos - self.start
        if off < 0 or off + n > len(self.buf):
            self.f.seek(pos)
            self.buf, self.start, off = self.f.read(max(n, WINDOW)), pos, 0
        return self.buf, off

    def peek(self, pos: int, n: int) -> tuple[bytes, int]:
        """Like ``view`` but without moving the buffer (for small reads)."""
        off = pos - self.start
        if off >= 0 and off + n <= len(self.buf):
            return self.buf, off
        return os.pread(self.f.fileno(), n, pos), 0


def _u32_everywhere(chunk: bytes, endian: str) -> np.ndarray:
    """The unsigned 32-bit value at every byte offset of ``chunk`` (int64 array)."""
    n = len(chunk) - 3
    out = np.zeros(max(n, 0), np.int64)
    dtype = np.dtype(endian + "u4")
    for r in range(min(4, max(n, 0))):
        vals = np.frombuffer(chunk, dtype=dtype, count=(len(chunk) - r) // 4, offset=r)
        out[r::4] = vals[:len(out[r::4])]
    return out


def _scan(win: _Window, start: int, stop: int, step: int, head: int,
          prefilter: Callable[[bytes, int], np.ndarray], check: Callable[[int], bool]
          ) -> int | None:
    """The first position p = start + k*step < stop that passes ``check``.

    The file is read once, window by window; ``prefilter(chunk, chunk position)`` returns the
    offsets in the chunk that may pass (numpy over the whole chunk; it reads ``head`` bytes at
    each), and only those are checked one by one.
    """
    pos = start
    while pos < stop:
        n = min(WINDOW, stop - pos)
        want = min(n + head, win.size - pos)
        buf, off = win.view(pos, want)
        rel = prefilter(buf[off:off + want], pos)
        rel = rel[(rel < n) & ((rel + (pos - start)) % step == 0)]
        for r in rel.tolist():
            if check(pos + r):
                return pos + r
        pos += n
    return None


class _Ctx:
    """Per-file reporting: warnings name the file and the record."""

    def __init__(self, path: Path, stats: FileStats, sink: IngestStats, warn: Warn) -> None:
        self.path, self.stats, self.sink, self._warn = path, stats, sink, warn

    def warn(self, msg: str) -> None:
        text = f"{self.path}: {msg}"
        if len(self.sink.warnings) < MAX_KEPT_WARNINGS:
            self.sink.warnings.append(text)
        self._warn(text)

    def skip(self, record: int, why: str) -> None:
        self.stats.skipped += 1
        self.warn(f"record {record}: {why}; record skipped")

    def truncate(self, record: int, why: str, *, lost: bool = True) -> None:
        self.stats.truncated = True
        self.stats.skipped += lost
        self.warn(f"record {record}: {why}; capture truncated, rest of file ignored")


# (record number, ts_us, wire_len, link type, buffer, offset, caplen)
Record = tuple[int, int, int, int, bytes, int, int]


def capture_format(path: Path) -> str:
    """'pcap' or 'pcapng' from the magic number; DataError naming the file otherwise."""
    with open_regular(path, "capture", MAX_CAPTURE_BYTES) as f:
        magic = f.read(4)
    if magic == PCAPNG_MAGIC:
        return "pcapng"
    if magic in PCAP_MAGICS:
        return "pcap"
    shown = magic.hex() if magic else "empty file"
    raise DataError(f"{path}: not a pcap or pcapng capture (magic {shown})")


# ---------------------------------------------------------------------------------------------
# pcap


def _iter_pcap(win: _Window, ctx: _Ctx) -> Iterator[Record]:
    if win.size < 24:
        ctx.truncate(0, f"file header cut short ({win.size} of 24 bytes)", lost=False)
        return
    buf, off = win.view(0, 24)
    endian, units, rec_len = PCAP_MAGICS[buf[off:off + 4]]
    hdr_cls = dpkt.pcap.LEFileHdr if endian == "<" else dpkt.pcap.FileHdr
    fh = hdr_cls(buf[off:off + 24])
    linktype = fh.linktype & 0xFFFF  # upper bits carry FCS information
    ctx.stats.linktypes.add(linktype)
    limit = max(MAX_RECORD, min(fh.snaplen, MAX_BLOCK))
    rec = struct.Struct(endian + "IIII")
    scale = units // 1_000_000

    def plausible(pos: int, last_sec: int | None, depth: int) -> bool:
        if pos + rec_len > win.size:
            return False
        b, o = win.peek(pos, rec_len)
        sec, frac, caplen, orig = rec.unpack_from(b, o)
        end = pos + rec_len + caplen
        if frac >= units or caplen > limit or caplen > orig or orig > MAX_BLOCK or end > win.size:
            return False
        if last_sec is not None and abs(sec - last_sec) > MAX_TS_JUMP_S:
            return False
        return end == win.size or depth == 0 or plausible(end, sec, depth - 1)

    pos, n, last_sec = 24, 0, None
    while pos < win.size:
        if win.size - pos < rec_len:
            ctx.truncate(n, f"record header cut short ({win.size - pos} of {rec_len} bytes)")
            return
        buf, off = win.view(pos, rec_len)
        sec, frac, caplen, orig = rec.unpack_from(buf, off)
        end = pos + rec_len + caplen
        fits = caplen <= limit and end <= win.size
        if fits and (frac < units or end == win.size or plausible(end, None, 0)):
            if not caplen <= orig <= MAX_BLOCK:
                ctx.stats.bad_wire_len += 1
                orig = caplen
            buf, off = win.view(pos + rec_len, caplen)
            yield n, sec * 1_000_000 + frac // scale, orig, linktype, buf, off, caplen
            pos, n, last_sec = end, n + 1, sec
            continue
        why = (f"caplen {caplen} beyond the end of the file ({win.size - pos - rec_len} bytes "
               "left)" if caplen <= limit and frac < units else
               f"bad record header (caplen {caplen}, sub-second field {frac})")
        nxt = _scan(win, pos + 1, min(win.size, pos + MAX_RESYNC), 1, 16,
                    _pcap_prefilter(endian, units, limit, win.size, last_sec),
                    lambda p, last=last_sec: plausible(p, last, 1))
        if nxt is None:
            ctx.truncate(n, why)
            return
        ctx.skip(n, f"{why}; resynchronised {nxt - pos} bytes further")
        pos, n = nxt, n + 1


def _pcap_prefilter(endian: str, units: int, limit: int, size: int, last_sec: int | None
                    ) -> Callable[[bytes, int], np.ndarray]:
    """Offsets of a chunk where a pcap record header could start (plausible's first test)."""

    def candidates(chunk: bytes, at: int) -> np.ndarray:
        u = _u32_everywhere(chunk, endian)
        m = len(u) - 12
        if m <= 0:
            return np.zeros(0, np.int64)
        sec, frac, caplen, orig = u[:m], u[4:4 + m], u[8:8 + m], u[12:12 + m]
        ok = ((frac < units) & (caplen <= limit) & (caplen <= orig) & (orig <= MAX_BLOCK)
              & (at + np.arange(m) + 16 + caplen <= size))
        if last_sec is not None:
            ok &= np.abs(sec - last_sec) <= MAX_TS_JUMP_S
        return np.nonzero(ok)[0]

    return candidates


# ---------------------------------------------------------------------------------------------
# pcapng

_BLOCK_TYPES = frozenset({0x0A0D0D0A, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xBAD, 0x40000BAD})
_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}


@dataclass
class _Iface:
    linktype: int
    units: int  # timestamp ticks per second
    offset_us: int


def _parse_idb(block: bytes, endian: str) -> _Iface:
    """An interface description; ValueError for a resolution or offset out of range."""
    cls = (dpkt.pcapng.InterfaceDescriptionBlockLE if endian == "<"
           else dpkt.pcapng.InterfaceDescriptionBlock)
    idb = cls(block)
    units, offset_us = 1_000_000, 0
    for opt in idb.opts:
        if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and len(opt.data) >= 1:
            r = opt.data[0]
            base, exponent = (2 if r & 0x80 else 10), r & 0x7F
            if exponent > MAX_TSRESOL[base]:
                raise ValueError(f"timestamp resolution {base}^-{exponent} s is out of range")
            units = base ** exponent
        elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
            offset_us = struct.unpack(endian + "q", opt.data[:8])[0] * 1_000_000
            if abs(offset_us) > MAX_TS_US:
                raise ValueError(f"timestamp offset {offset_us // 1_000_000} s is out of range")
    return _Iface(idb.linktype, units, offset_us)


def _block_ok(win: _Window, pos: int, endian: str, *, known_type: bool = False) -> int:
    """Length of a well-formed block at pos (matching trailing length), else 0."""
    if pos + 12 > win.size:
        return 0
    buf, off = win.peek(pos, 8)
    btype, blen = struct.unpack_from(endian + "II", buf, off)
    if known_type and btype not in _BLOCK_TYPES and not btype & 0x80000000:
        return 0
    if blen < 12 or blen % 4 or blen > MAX_BLOCK:
        return 0
    if pos + blen > win.size:
        return 0
    buf, off = win.peek(pos + blen - 4, 4)
    return blen if struct.unpack_from(endian + "I", buf, off)[0] == blen else 0


def _pcapng_prefilter(endian: str, size: int) -> Callable[[bytes, int], np.ndarray]:
    """Offsets of a chunk where a well-formed block of a known type could start."""
    known = np.array(sorted(_BLOCK_TYPES), np.int64)

    def candidates(chunk: bytes, at: int) -> np.ndarray:
        u = _u32_everywhere(chunk, endian)
        m = len(u) - 4
        if m <= 0:
            return np.zeros(0, np.int64)
        btype, blen = u[:m], u[4:4 + m]
        ok = ((blen >= 12) & (blen % 4 == 0) & (blen <= MAX_BLOCK)
              & (at + np.arange(m) + blen <= size)
              & (np.isin(btype, known) | (btype >= 0x80000000)))
        return np.nonzero(ok)[0]

    return candidates


def _iter_pcapng(win: _Window, ctx: _Ctx) -> Iterator[Record]:
    pos, n, endian, last_ts = 0, 0, "<", 0
    ifaces: list[_Iface] = []
    while pos < win.size:
        if win.size - pos < 12:
            ctx.truncate(n, f"block header cut short ({win.size - pos} bytes left)")
            return
        buf, off = win.view(pos, 12)
        if buf[off:off + 4] == PCAPNG_MAGIC:
            endian = _BOM.get(buf[off + 8:off + 12], endian)
        blen = _block_ok(win, pos, endian)
        if not blen:
            claimed = struct.unpack_from(endian + "I", buf, off + 4)[0]
            why = (f"block length {claimed} beyond the end of the file"
                   if pos + claimed > win.size else f"bad block (length {claimed})")
            nxt = _scan(win, pos + 4, min(win.size, pos + MAX_RESYNC), 4, 8,
                        _pcapng_prefilter(endian, win.size),
                        lambda p, e=endian: bool(_block_ok(win, p, e, known_type=True)))
            if nxt is None:
                ctx.truncate(n, why)
                return
            ctx.skip(n, f"{why}; resynchronised {nxt - pos} bytes further")
            pos, n = nxt, n + 1
            continue
        buf, off = win.view(pos, blen)
        btype = struct.unpack_from(endian + "I", buf, off)[0]
        if btype == 0x0A0D0D0A:
            ifaces = []
        elif btype == 1:
            try:
                ifaces.append(_parse_idb(buf[off:off + blen], endian))
                ctx.stats.linktypes.add(ifaces[-1].linktype)
            except (dpkt.UnpackError, struct.error, ValueError, IndexError, TypeError) as e:
                ctx.warn(f"interface {len(ifaces)}: unreadable description ({e}); its packets "
                         "are kept as rows of unknown link type")
                ifaces.append(_Iface(-1, 1_000_000, 0))
        elif btype in (2, 3, 6):
            rec = _packet_block(btype, buf, off, blen, endian, ifaces, last_ts)
            if isinstance(rec, str):
                ctx.skip(n, rec)
            else:
                last_ts = rec[0]
                yield (n, *rec)
            n += 1
        pos += blen


def _packet_block(btype: int, buf: bytes, off: int, blen: int, endian: str,
                  ifaces: list[_Iface], last_ts: int
                  ) -> tuple[int, int, int, bytes, int, int] | str:
    """(ts_us, wire_len, linktype, buf, data offset, caplen) of a packet block, or why not."""
    if btype == 3:  # simple packet block: interface 0, no timestamp
        if not ifaces:
            return "simple packet block before any interface description"
        if blen < 16:
            return f"simple packet block too short ({blen} bytes)"
        orig = struct.unpack_from(endian + "I", buf, off + 8)[0]
        return last_ts, orig, ifaces[0].linktype, buf, off + 12, min(orig, blen - 16)
    if blen < 32:
        return f"packet block too short ({blen} bytes)"
    if btype == 6:
        iface, th, tl, caplen, orig = struct.unpack_from(endian + "IIIII", buf, off + 8)
    else:
        iface, _, th, tl, caplen, orig = struct.unpack_from(endian + "HHIIII", buf, off + 8)
    if iface >= len(ifaces):
        return f"interface {iface} not described ({len(ifaces)} known)"
    if caplen > blen - 32:
        return f"caplen {caplen} beyond its block ({blen - 32} bytes of data)"
    ifc = ifaces[iface]
    ts_us = ((th << 32) | tl) * 1_000_000 // ifc.units + ifc.offset_us
    if not 0 <= ts_us <= MAX_TS_US:
        return f"timestamp {ts_us} us out of range (0..{MAX_TS_US})"
    return ts_us, orig, ifc.linktype, buf, off + 28, caplen


# ---------------------------------------------------------------------------------------------
# packet headers


def _link(buf: bytes, p: int, end: int, linktype: int) -> tuple[int, int]:
    """(EtherType, offset of the network header) of a frame; (0, -1) when it has none."""
    if linktype == LT_ETHERNET:
        if end - p < 14:
            return 0, -1
        et, p = (buf[p + 12] << 8) | buf[p + 13], p + 14
    elif linktype == LT_SLL:
        if end - p < 16:
            return 0, -1
        et, p = (buf[p + 14] << 8) | buf[p + 15], p + 16
    elif linktype == LT_SLL2:
        if end - p < 20:
            return 0, -1
        et, p = (buf[p] << 8) | buf[p + 1], p + 20
    elif linktype in (LT_RAW, LT_RAW_BSD, LT_RAW_OPENBSD, LT_IPV4, LT_IPV6):
        if end - p < 1:
            return 0, -1
        version = buf[p] >> 4
        et = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0
    elif linktype in (LT_NULL, LT_LOOP):
        if end - p < 4:
            return 0, -1
        fam = {struct.unpack_from("<I", buf, p)[0], struct.unpack_from(">I", buf, p)[0]}
        et, p = (ETH_IPV4 if 2 in fam else ETH_IPV6 if fam & {10, 24, 28, 30} else 0), p + 4
    elif linktype in (LT_PPP, LT_PPP_HDLC):
        if end - p >= 2 and buf[p] == 0xFF and buf[p + 1] == 0x03:
            p += 2
        if end - p < 2:
            return 0, -1
        proto = (buf[p] << 8) | buf[p + 1]
        et, p = {0x0021: ETH_IPV4, 0x0057: ETH_IPV6}.get(proto, 0), p + 2
    elif linktype == LT_C_HDLC:
        if end - p < 4:
            return 0, -1
        et, p = (buf[p + 2] << 8) | buf[p + 3], p + 4
    else:
        return 0, -1
    while et in VLAN_TPIDS and end - p >= 4:
        et, p = (buf[p + 2] << 8) | buf[p + 3], p + 4
    return et, p


def _decode(buf: bytes, p: int, end: int, linktype: int) -> tuple[tuple, bool]:
    """The packet-table fields from eth_type on, and whether an IPv4 header failed to parse."""
    et, p = _link(buf, p, end, linktype)
    if et != ETH_IPV4 or p < 0:
        return (et, *_NO_IP), False
    if end - p < 20 or buf[p] >> 4 != 4 or buf[p] & 15 < 5:
        return (et, *_NO_IP), True
    ihl = buf[p] & 15
    tos, total, ident, frag, ttl, proto, _, src, dst = _IPV4.unpack_from(buf, p + 1)
    frag &= 0x1FFF
    l4 = p + ihl * 4
    tcp = udp = False
    sport = dport = flags = window = doff = ulen = 0
    if frag == 0 and proto == 6 and end - l4 >= 20:
        sport, dport, _, _, doff, flags, window = _TCP.unpack_from(buf, l4)
        tcp, doff = True, doff >> 4
    elif frag == 0 and proto == 17 and end - l4 >= 8:
        sport, dport, ulen = _UDP.unpack_from(buf, l4)
        udp = True
    return (et, True, src, dst, proto, ttl, tos, total, ident, frag, ihl,
            tcp, udp, sport, dport, flags, window, doff, ulen), False


# ---------------------------------------------------------------------------------------------
# reading


def _table(flat: list[int]) -> pd.DataFrame:
    arr = np.array(flat, dtype=np.int64).reshape(-1, _N_COLS)
    return as_packet_table({c: arr[:, i] for i, c in enumerate(PACKET_COLUMNS)})


def _file_rows(path: Path, file_id: int, ctx: _Ctx) -> Iterator[tuple]:
    """Rows (PACKET_COLUMNS order) of one capture."""
    fmt = capture_format(path)
    ctx.stats.format = fmt
    with open_regular(path, "capture", MAX_CAPTURE_BYTES) as f:
        win = _Window(f, os.fstat(f.fileno()).st_size)
        records = _iter_pcapng(win, ctx) if fmt == "pcapng" else _iter_pcap(win, ctx)
        seen_bad_link: set[int] = set()
        for n, ts, wire, lt, buf, off, caplen in records:
            if lt not in SUPPORTED_LINKTYPES and lt not in seen_bad_link:
                seen_bad_link.add(lt)
                ctx.warn(f"unsupported link type {lt}: its packets are rows without IPv4")
            fields, malformed = _decode(buf, off, off + caplen, lt)
            ctx.stats.malformed += malformed
            ctx.stats.packets += 1
            yield (file_id, n, ts, wire, *fields)
    if ctx.stats.bad_wire_len:
        ctx.warn(f"{ctx.stats.bad_wire_len} records with an original length below the captured "
                 "length or absurd: wire_len set to the captured length")
    if ctx.stats.malformed:
        ctx.warn(f"{ctx.stats.malformed} packets with an unparseable IPv4 header kept as rows "
                 "without IPv4")


def read_packets(paths: Iterable[Path], *, chunk_size: int = 65536,
                 on_warning: Warn | None = None, max_packets: int | None = None,
                 stats: IngestStats | None = None) -> Iterator[pd.DataFrame]:
    """Stream the captures as packet tables of at most ``chunk_size`` rows.

    ``file_id`` is the capture's index in ``paths``. Warnings (damaged records, truncated
    files, unsupported link types) go to ``on_warning`` (default: this module's logger) and are
    counted in ``stats`` if given. Stops after ``max_packets`` rows in all.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    paths = [Path(p) for p in paths]
    for p in paths:  # fail fast on a path that is not a capture
        capture_format(p)
    stats = stats if stats is not None else IngestStats()
    warn = on_warning or log.warning
    flat: list[int] = []
    budget = max_packets if max_packets is not None else -1
    for file_id, path in enumerate(paths):
        if budget == 0:
            break
        fstats = FileStats(str(path))
        stats.files.append(fstats)
        rows = _file_rows(path, file_id, _Ctx(path, fstats, stats, warn))
        for row in rows:
            flat.extend(row)
            if len(flat) == chunk_size * _N_COLS:
                yield _table(flat)
                flat = []
            budget -= 1
            if budget == 0:
                break
        rows.close()
    if flat:
        yield _table(flat)


def ingest(paths: Iterable[Path], **kwargs: object) -> tuple[pd.DataFrame, IngestStats]:
    """Read captures whole (for small inputs): one packet table and the read's stats."""
    stats = IngestStats()
    chunks = list(read_packets(paths, stats=stats, **kwargs))  # type: ignore[arg-type]
    table = pd.concat(chunks, ignore_index=True) if chunks else empty_packet_table()
    return table, stats


# ---------------------------------------------------------------------------------------------
# writing


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _check_writable(t: pd.DataFrame) -> None:
    missing = sorted(set(PACKET_COLUMNS) - {"file_id", "record"} - set(t.columns))
    if missing:
        raise DataError(f"packet table lacks columns {missing}")
    ip, tcp, udp = (t[c].to_numpy(bool) for c in ("has_ipv4", "has_tcp", "has_udp"))
    bad = {
        "ts_us outside 0..2^32 s": (t["ts_us"] < 0) | (t["ts_us"] >= (1 << 32) * 1_000_000),
        "has_tcp and has_udp both set": tcp & udp,
        "TCP/UDP without IPv4": (tcp | udp) & ~ip,
        "has_ipv4 with eth_type != 0x0800": ip & (t["eth_type"] != ETH_IPV4),
        "eth_type is a VLAN tag type": t["eth_type"].isin(list(VLAN_TPIDS)),
        "ip_ihl outside 5..15": ip & ((t["ip_ihl"] < 5) | (t["ip_ihl"] > 15)),
        "has_tcp with ip_proto != 6 or a fragment": tcp & ((t["ip_proto"] != 6)
                                                         | (t["ip_frag_offset"] != 0)),
        "has_udp with ip_proto != 17 or a fragment": udp & ((t["ip_proto"] != 17)
                                                          | (t["ip_frag_offset"] != 0)),
    }
    for what, mask in bad.items():
        rows = np.flatnonzero(np.asarray(mask))
        if rows.size:
            raise DataError(f"cannot write packet table: {what} (rows {rows[:5].tolist()})")


def _frame(r: dict) -> tuple[bytes, bool]:
    """An Ethernet frame carrying the row's headers and zero payload; whether it may be padded."""
    src, dst = int(r["ip_src"]), int(r["ip_dst"])
    eth = struct.pack("!HIHIH", 0x0200, dst, 0x0200, src, int(r["eth_type"]))
    if not r["has_ipv4"]:
        return eth, True
    ihl, proto, total = int(r["ip_ihl"]), int(r["ip_proto"]), int(r["ip_total_len"])
    l4 = b""
    if r["has_tcp"]:
        doff = int(r["tcp_data_offset"])
        l4 = struct.pack("!HHIIBBHHH", int(r["src_port"]), int(r["dst_port"]), 0, 0,
                         (doff & 15) << 4, int(r["tcp_flags"]), int(r["tcp_window"]), 0, 0)
        l4 += b"\x01" * (max(doff * 4, 20) - 20)
    elif r["has_udp"]:
        l4 = struct.pack("!HHHH", int(r["src_port"]), int(r["dst_port"]), int(r["udp_len"]), 0)
    if l4:
        seg_len = max(total - ihl * 4, len(l4))
        pseudo = struct.pack("!IIBBH", src, dst, 0, proto, seg_len & 0xFFFF)
        csum = _checksum(pseudo + l4) or (0xFFFF if r["has_udp"] else 0)
        at = 16 if r["has_tcp"] else 6
        l4 = l4[:at] + struct.pack("!H", csum) + l4[at + 2:]
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl, int(r["ip_diffserv"]), total,
                               int(r["ip_id"]), int(r["ip_frag_offset"]), int(r["ip_ttl"]),
                               proto, 0, src, dst))
    ip += b"\x01" * (ihl * 4 - 20)  # NOP options
    ip[10:12] = struct.pack("!H", _checksum(bytes(ip)))
    frame = eth + bytes(ip) + l4
    if not l4 and proto in (6, 17) and int(r["ip_frag_offset"]) == 0:
        return frame, False  # an unparsed transport header: the capture stops after IPv4
    return frame + b"\0" * max(0, 14 + total - len(frame)), True


def write_pcap(table: pd.DataFrame, path: Path) -> None:
    """Write a packet table as an Ethernet pcap (microsecond timestamps) that reads back as it.

    MACs are synthesised (02:00 + the IPv4 address), checksums are correct, payloads are zeros
    up to ``ip_total_len`` and frames are zero-padded up to ``wire_len``, which is the record's
    original length. Every column but file_id and record round-trips through
    :func:`read_packets`.
    """
    _check_writable(table)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, MAX_RECORD, LT_ETHERNET))
        for r in table.to_dict("records"):
            frame, pad = _frame(r)
            wire = int(r["wire_len"])
            if pad and len(frame) < wire:
                frame += b"\0" * (wire - len(frame))
            ts = int(r["ts_us"])
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), wire))
            f.write(frame)
