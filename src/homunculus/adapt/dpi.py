"""A DPI labelling agent: nDPI's ``ndpiReader`` (Debian package libndpi-bin) over the packets of
the sampled flows.

Telemetry records carry headers and features, not payloads, so the agent reads the flows' first
packets from a :class:`PacketStore`: in replay, the capture itself (raw records, payloads
included); live, frames a :class:`PacketTap` copies off the interface. For each window it writes
the packets of the window's sampled flows to a capture, runs ``ndpiReader -v 2 -w``, and reads
the flow lines back (the format of nDPI's own regression results, data/ndpi.py). A flow nDPI
identifies by DPI gets its class (``classes`` mode: the coarse class of its category, as the
traffic-classification dataset labels them) or ``benign`` (``benign`` mode: a recognised
application, not in a malicious category), with confidence 0.9, when nDPI's confidence is
"DPI"; a flow only guessed from its port, or unknown, is an abstention. nDPI names the
application, not the intent: DNS-amplification answers are DNS to it (labelled benign here),
which is why heuristics come first in the default priority order.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from homunculus.adapt.agents import BENIGN, Votes, Window
from homunculus.data.labels import flow_key
from homunculus.errors import DataError, HomunculusError

MALICIOUS = frozenset({"Malware"})
"""nDPI categories the DPI agent (``benign`` mode) calls an attack. Not ``Cybersecurity`` (nDPI
files security vendors' own services there) nor ``Mining`` (crypto-mining pools: an operator's
policy, not an attack on the network; the drifting scenario's nDPI captures of mining traffic
are benign background, and calling them attacks taught retrained models to drop them).
``DpiAgent(malicious=...)`` sets another list."""
_CONF = re.compile(r"\[Confidence: (?P<conf>[^\]]+)\]")
LT_ETHERNET = 1


class DpiError(HomunculusError):
    """ndpiReader is missing or failed."""


def find_ndpi_reader() -> str:
    path = shutil.which("ndpiReader")
    if path is None:
        raise DpiError("ndpiReader not found: install Debian's libndpi-bin (scripts/install.sh "
                       "does)")
    return path


@dataclass
class PacketStore:
    """The first ``per_flow`` raw packets of every flow, by canonical (bidirectional) flow key:
    (timestamp in microseconds, frame) pairs, with the capture's link type."""

    linktype: int = LT_ETHERNET
    per_flow: int = 10
    flows: dict[bytes, list[tuple[int, bytes]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: bytes, ts_us: int, frame: bytes) -> None:
        with self._lock:
            got = self.flows.setdefault(key, [])
            if len(got) < self.per_flow:
                got.append((ts_us, frame))

    def frames(self, keys: Iterable[bytes], until_us: int | None = None) -> list[tuple[int, bytes]]:
        with self._lock:
            out = [p for k in set(keys) for p in self.flows.get(k, ())
                   if until_us is None or p[0] <= until_us]
        return sorted(out, key=lambda p: p[0])

    @classmethod
    def from_capture(cls, path: Path, table: pd.DataFrame, per_flow: int = 10) -> PacketStore:
        """The capture's raw records for the packets of ``table`` (rows of that one capture, in
        record order: their ``record`` numbers pick the records)."""
        from homunculus.data.raw import read_raw_records

        rows = table[table["has_ipv4"].to_numpy(bool)]
        keys = _keys(rows)
        wanted: dict[int, tuple[bytes, int]] = {}
        counts: dict[bytes, int] = {}
        records = rows["record"].to_numpy(np.int64).tolist()
        stamps = rows["ts_us"].to_numpy(np.int64).tolist()
        for rec, ts, key in zip(records, stamps, keys, strict=True):
            if counts.get(key, 0) < per_flow:
                counts[key] = counts.get(key, 0) + 1
                wanted[rec] = (key, ts)
        store = cls(per_flow=per_flow)
        for n, (linktype, frame) in read_raw_records(path, wanted).items():
            key, ts = wanted[n]
            store.linktype = linktype
            store.add(key, ts, frame)
        return store


def _keys(samples: pd.DataFrame) -> list[bytes]:
    cols = [samples[c].to_numpy(np.int64).tolist() for c in
            ("ip_src", "ip_dst", "src_port", "dst_port", "ip_proto")]
    return [flow_key(*k) for k in zip(*cols, strict=True)]


def write_frames(path: Path, frames: list[tuple[int, bytes]], linktype: int) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for ts, frame in frames:
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)))
            f.write(frame)


@dataclass(frozen=True)
class DpiFlow:
    key: bytes
    app: str
    category: str
    confidence: str


def parse_flows(text: str) -> list[DpiFlow]:
    """The IPv4 flow lines of an ``ndpiReader -v 2 -w`` result."""
    from homunculus.data.ndpi import _APP, _CAT, _FLOW, IP_PROTOS, UNKNOWN, _endpoint

    flows = []
    for line in text.splitlines():
        m = _FLOW.match(line)
        if not m:
            continue
        src, dst = _endpoint(m["src"]), _endpoint(m["dst"])
        name = m["proto"]
        proto = int(name) if name.isdigit() and int(name) < 256 else IP_PROTOS.get(name)
        if src is None or dst is None or proto is None:
            continue
        cat, app, conf = _CAT.search(m["rest"]), _APP.search(m["rest"]), _CONF.search(m["rest"])
        flows.append(DpiFlow(flow_key(src[0], dst[0], src[1], dst[1], proto),
                             app["app"] if app else UNKNOWN, cat["cat"] if cat else UNKNOWN,
                             conf["conf"] if conf else UNKNOWN))
    return flows


def run_ndpi(frames: list[tuple[int, bytes]], linktype: int, timeout_s: float = 30.0
             ) -> list[DpiFlow]:
    """ndpiReader over ``frames``: the flows it reports."""
    reader = find_ndpi_reader()
    with tempfile.TemporaryDirectory(prefix="hmn-dpi-") as tmp:
        pcap, out = Path(tmp) / "flows.pcap", Path(tmp) / "result.txt"
        write_frames(pcap, frames, linktype)
        try:
            proc = subprocess.run([reader, "-q", "-i", str(pcap), "-v", "2", "-w", str(out)],
                                  capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise DpiError(f"ndpiReader took more than {timeout_s:g} s") from None
        if proc.returncode != 0 or not out.is_file():
            raise DpiError(f"ndpiReader failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-300:]}")
        return parse_flows(out.read_text(errors="replace"))


@dataclass
class DpiAgent:
    """Labels the window's sampled flows with what nDPI recognises in their first packets."""

    store: PacketStore
    mode: str = "benign"  # or "classes": the coarse nDPI class of the category
    name: str = "dpi"
    timeout_s: float = 30.0
    malicious: frozenset[str] = MALICIOUS  # nDPI categories labelled as an attack

    def __post_init__(self) -> None:
        if self.mode not in ("benign", "classes"):
            raise DataError(f"DPI agent mode must be benign or classes, not {self.mode!r}")
        find_ndpi_reader()

    def label(self, window: Window) -> Votes:
        from homunculus.data.ndpi import UNKNOWN, category_class

        n = len(window.samples)
        if n == 0:
            return Votes.abstain(0)
        keys = _keys(window.samples)
        frames = self.store.frames(keys, until_us=None)
        if not frames:
            return Votes.abstain(n)
        found = {f.key: f for f in run_ndpi(frames, self.store.linktype, self.timeout_s)}
        labels = np.full(n, None, dtype=object)
        conf = np.zeros(n)
        for i, key in enumerate(keys):
            flow = found.get(key)
            if (flow is None or flow.category == UNKNOWN or flow.app == UNKNOWN
                    or not flow.confidence.startswith("DPI")):
                continue  # unknown, or only guessed from the port: no payload evidence
            if self.mode == "classes":
                labels[i] = category_class(flow.category)
            else:
                labels[i] = "malware" if flow.category in self.malicious else BENIGN
            conf[i] = 0.9
        return Votes(labels, conf)


class PacketTap:
    """Copies frames off a live interface (an AF_PACKET socket, in a network namespace if
    given) into a :class:`PacketStore` on a background thread, for the DPI agent."""

    def __init__(self, store: PacketStore, iface: str, netns: str | None = None) -> None:
        from homunculus.targets.xdp.loader import in_netns

        self.store = store
        self._stop = threading.Event()

        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            sock.bind((iface, 0))
            sock.settimeout(0.2)
            return sock

        self._sock = in_netns(netns, open_socket)
        self._thread = threading.Thread(target=self._run, daemon=True, name="hmn-tap")
        self._thread.start()

    def _run(self) -> None:
        import time

        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65535)
            except (TimeoutError, OSError):
                continue
            key = _frame_key(frame)
            if key is not None:
                self.store.add(key, int(time.time() * 1e6), frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self._sock.close()


def _frame_key(frame: bytes) -> bytes | None:
    """The canonical flow key of an Ethernet/IPv4 frame (None for anything else)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 15) * 4
    proto = frame[23]
    src, dst = struct.unpack("!II", frame[26:34])
    sport = dport = 0
    if proto in (6, 17) and len(frame) >= 14 + ihl + 4:
        sport, dport = struct.unpack("!HH", frame[14 + ihl:18 + ihl])
    return flow_key(src, dst, sport, dport, proto)
