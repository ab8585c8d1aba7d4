"""Telemetry out of the data plane: which packets are sampled, and the record each sample makes.

A compiled program with telemetry (the spec's ``adapt`` section) reports a sample of the packets
it classifies: the flow key, a few header fields every labelling agent may use (IPv4 total
length, TTL, TCP flags), the feature vector the model saw, the class it gave and the version of
the model that gave it. The XDP program writes records into a BPF ring buffer
(``hmn_samples``), the switches send a digest (v1model ``digest``, TNA ``Digest``), and the twins
produce the same records, so one adaptation loop serves every target.

Sampling (deterministic, so the twins reproduce it):

- ``rate``: every ``one_in``-th classified packet (a counter per CPU on XDP, one register on a
  switch; the twin counts the classified packets of a capture in order);
- ``first_k``: the first ``first_k`` classified packets of each directional 5-tuple (XDP: an LRU
  hash of 5-tuples; the twin: a dictionary, exact while fewer flows than the LRU's size are live);
- ``first_k_rate``: the first ``first_k`` packets of each flow, as ``first_k``, then every
  ``one_in``-th of the flow's later packets (its packets number ``first_k + one_in``,
  ``first_k + 2 one_in``, ...), so long flows keep being seen. Per flow, not per CPU: the count
  lives in the same LRU entry (XDP keeps it modulo ``one_in`` past ``first_k``, so it never
  wraps); switches keep no per-flow state and offer ``rate`` only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

SAMPLINGS = ("rate", "first_k", "first_k_rate")
MODE_CODES = {"off": 0, "rate": 1, "first_k": 2, "first_k_rate": 3}
FLOW_TABLE = 65536
"""Entries of the XDP program's LRU table of sampled flows (first_k sampling)."""

RING_BYTES = 1 << 20
"""Size of the XDP ring buffer (a power of two, a multiple of the page size)."""

HEAD_FIELDS = ("ts_ns", "ip_src", "ip_dst", "src_port", "dst_port", "ip_total_len", "ip_proto",
               "ip_ttl", "tcp_flags", "cls", "version")
"""Record fields before the features, in the order of :func:`record_dtype`."""


@dataclass(frozen=True)
class TelemetryConfig:
    """How the data plane samples the packets it classifies."""

    sampling: str = "first_k"
    one_in: int = 16  # rate: every one_in-th classified packet; first_k_rate: of later packets
    first_k: int = 4  # first_k, first_k_rate: the first packets of each flow

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"adapt.sampling must be one of {list(SAMPLINGS)}, not "
                             f"{self.sampling!r}")
        if isinstance(self.one_in, bool) or not isinstance(self.one_in, int) \
                or not 1 <= self.one_in <= 1 << 20:
            raise ValueError(f"adapt.one_in must be an integer in 1..{1 << 20}, not "
                             f"{self.one_in!r}")
        if isinstance(self.first_k, bool) or not isinstance(self.first_k, int) \
                or not 1 <= self.first_k <= 1 << 16:
            raise ValueError(f"adapt.first_k must be an integer in 1..{1 << 16}, not "
                             f"{self.first_k!r}")

    @property
    def mode(self) -> int:
        return MODE_CODES[self.sampling]

    @property
    def param(self) -> int:
        """The first knob of ``hmn_tel_cfg``: one_in (rate) or first_k (per-flow modes)."""
        return self.one_in if self.sampling == "rate" else self.first_k

    @property
    def every(self) -> int:
        """The second knob of ``hmn_tel_cfg``: one_in for ``first_k_rate``, else 0."""
        return self.one_in if self.sampling == "first_k_rate" else 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TelemetryConfig | None:
        return None if data is None else cls(**data)


def record_dtype(n_features: int) -> np.dtype:
    """The XDP ring-buffer record (little endian, 40 bytes of head, then u64 features)."""
    return np.dtype({
        "names": [*HEAD_FIELDS, "x"],
        "formats": ["<u8", "<u4", "<u4", "<u2", "<u2", "<u2", "u1", "u1", "u1", "<u4", "<u4",
                    ("<u8", (max(n_features, 1),))],
        "offsets": [0, 8, 12, 16, 18, 20, 22, 23, 24, 28, 32, 40],
        "itemsize": 40 + 8 * max(n_features, 1),
    })


def record_size(n_features: int) -> int:
    return record_dtype(n_features).itemsize


def records_from_bytes(raw: list[bytes], n_features: int) -> pd.DataFrame:
    """Ring-buffer records as a samples table (see :func:`samples_frame`)."""
    dtype = record_dtype(n_features)
    size = dtype.itemsize
    good = [r[:size] for r in raw if len(r) >= size]
    arr = np.frombuffer(b"".join(good), dtype=dtype) if good else np.zeros(0, dtype=dtype)
    head = {name: arr[name].astype(np.int64) for name in HEAD_FIELDS}
    head["ts_us"] = head.pop("ts_ns") // 1000
    x = arr["x"].reshape(len(arr), -1)[:, :n_features].astype(np.int64)
    return samples_frame(head, x)


SAMPLE_COLUMNS = ("ts_us", "ip_src", "ip_dst", "src_port", "dst_port", "ip_proto",
                  "ip_total_len", "ip_ttl", "tcp_flags", "cls", "version")


def samples_frame(columns: dict[str, np.ndarray], x: np.ndarray) -> pd.DataFrame:
    """A samples table: one row per sample, the head columns (SAMPLE_COLUMNS) then the
    features ``x0 .. x{n-1}``."""
    data = {c: np.asarray(columns[c], dtype=np.int64) for c in SAMPLE_COLUMNS}
    frame = pd.DataFrame(data)
    feats = pd.DataFrame(np.asarray(x, dtype=np.int64).reshape(len(frame), -1),
                         columns=[f"x{j}" for j in range(np.asarray(x).reshape(len(frame), -1)
                                                         .shape[1])])
    return pd.concat([frame, feats], axis=1)


def feature_matrix(samples: pd.DataFrame) -> np.ndarray:
    cols = [c for c in samples.columns if c.startswith("x") and c[1:].isdigit()]
    cols.sort(key=lambda c: int(c[1:]))
    return samples[cols].to_numpy(np.int64)


def sample_mask(table: pd.DataFrame, classified: np.ndarray, config: TelemetryConfig,
                counter: dict[str, Any] | None = None) -> np.ndarray:
    """Which packets of ``table`` (in order) the data plane samples, among the ``classified``.

    ``counter`` carries the sampling state across calls (the rate counter, per-flow counts), so
    a capture replayed in windows samples exactly as in one run."""
    state = counter if counter is not None else {}
    idx = np.flatnonzero(classified)
    mask = np.zeros(len(table), dtype=bool)
    if config.sampling == "rate":
        start = int(state.get("n", 0))
        n = start + np.arange(1, len(idx) + 1)
        mask[idx[n % config.one_in == 0]] = True
        state["n"] = start + len(idx)
        return mask
    flows: dict[tuple[int, ...], int] = state.setdefault("flows", {})
    ports = table["has_tcp"].to_numpy(bool) | table["has_udp"].to_numpy(bool)
    keys = np.stack([table["ip_src"].to_numpy(np.int64), table["ip_dst"].to_numpy(np.int64),
                     np.where(ports, table["src_port"].to_numpy(np.int64), 0),
                     np.where(ports, table["dst_port"].to_numpy(np.int64), 0),
                     table["ip_proto"].to_numpy(np.int64)], axis=1)
    later = config.sampling == "first_k_rate"
    k, every = config.first_k, config.one_in
    for i in idx:
        key = tuple(keys[i].tolist())
        seen = flows.get(key, 0)
        if seen < k:
            flows[key] = seen + 1
            mask[i] = True
        elif later:  # the flow's packet seen + 1: sampled when (seen + 1 - k) % every == 0
            flows[key] = seen + 1
            mask[i] = (seen + 1 - k) % every == 0
    return mask


def twin_samples(table: pd.DataFrame, sampled: np.ndarray, x: np.ndarray, cls: np.ndarray,
                 version: np.ndarray | int) -> pd.DataFrame:
    """The records the data plane makes for the ``sampled`` packets of ``table``: ``x`` and
    ``cls`` are the sampled packets' features and classes (in order)."""
    rows = table[sampled]
    ports = rows["has_tcp"].to_numpy(bool) | rows["has_udp"].to_numpy(bool)
    tcp = rows["has_tcp"].to_numpy(bool)
    n = int(sampled.sum())
    columns = {
        "ts_us": rows["ts_us"].to_numpy(np.int64),
        "ip_src": rows["ip_src"].to_numpy(np.int64), "ip_dst": rows["ip_dst"].to_numpy(np.int64),
        "src_port": np.where(ports, rows["src_port"].to_numpy(np.int64), 0),
        "dst_port": np.where(ports, rows["dst_port"].to_numpy(np.int64), 0),
        "ip_proto": rows["ip_proto"].to_numpy(np.int64),
        "ip_total_len": rows["ip_total_len"].to_numpy(np.int64),
        "ip_ttl": rows["ip_ttl"].to_numpy(np.int64),
        "tcp_flags": np.where(tcp, rows["tcp_flags"].to_numpy(np.int64), 0),
        "cls": np.asarray(cls, dtype=np.int64),
        "version": np.broadcast_to(np.asarray(version, dtype=np.int64), (n,)),
    }
    return samples_frame(columns, np.asarray(x, dtype=np.int64).reshape(n, -1))
