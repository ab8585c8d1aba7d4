"""The packet table: one row per packet, the columns every ingestion path produces.

A packet table is a pandas DataFrame with exactly the columns of PACKET_COLUMNS (in that order,
with those dtypes). Absent headers leave their fields 0 with the ``has_*`` flag False. Times are
integer microseconds. Labellers add a ``label`` column; provenance columns say which capture and
which record a row came from, so that splits can be made by capture file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# column -> numpy dtype
PACKET_COLUMNS: dict[str, str] = {
    "file_id": "int32",  # index of the capture in the ingestion's file list
    "record": "int64",  # record number inside the capture (0-based, counting skipped ones)
    "ts_us": "int64",  # capture timestamp, microseconds since the epoch
    "wire_len": "int32",  # frame length on the wire (pcap orig_len)
    "eth_type": "int32",
    "has_ipv4": "bool",
    "ip_src": "uint32",
    "ip_dst": "uint32",
    "ip_proto": "int32",
    "ip_ttl": "int32",
    "ip_diffserv": "int32",
    "ip_total_len": "int32",
    "ip_id": "int32",
    "ip_frag_offset": "int32",
    "ip_ihl": "int32",
    "has_tcp": "bool",
    "has_udp": "bool",
    "src_port": "int32",
    "dst_port": "int32",
    "tcp_flags": "int32",
    "tcp_window": "int32",
    "tcp_data_offset": "int32",
    "udp_len": "int32",
}

# header feature field (features/headers.py) -> packet-table column and the validity flag
HEADER_COLUMNS: dict[str, tuple[str, str | None]] = {
    "ipv4.diffserv": ("ip_diffserv", "has_ipv4"),
    "ipv4.total_len": ("ip_total_len", "has_ipv4"),
    "ipv4.identification": ("ip_id", "has_ipv4"),
    "ipv4.frag_offset": ("ip_frag_offset", "has_ipv4"),
    "ipv4.ttl": ("ip_ttl", "has_ipv4"),
    "ipv4.protocol": ("ip_proto", "has_ipv4"),
    "tcp.src_port": ("src_port", "has_tcp"),
    "tcp.dst_port": ("dst_port", "has_tcp"),
    "tcp.data_offset": ("tcp_data_offset", "has_tcp"),
    "tcp.flags": ("tcp_flags", "has_tcp"),
    "tcp.window": ("tcp_window", "has_tcp"),
    "udp.src_port": ("src_port", "has_udp"),
    "udp.dst_port": ("dst_port", "has_udp"),
    "udp.length": ("udp_len", "has_udp"),
    "l4.src_port": ("src_port", "has_l4"),  # TCP or UDP port, 0 otherwise (never required)
    "l4.dst_port": ("dst_port", "has_l4"),
}


# derived port fields: min/max of the TCP or UDP ports, 0 for other protocols (never required)
PORT_PAIR_FIELDS: dict[str, str] = {"l4.server_port": "min", "l4.client_port": "max"}


def header_values(table: pd.DataFrame, field: str) -> np.ndarray:
    """A header field per packet as the data plane reads it: 0 where the header is absent."""
    if field in PORT_PAIR_FIELDS:
        pick = np.minimum if PORT_PAIR_FIELDS[field] == "min" else np.maximum
        values = pick(table["src_port"].to_numpy(np.int64), table["dst_port"].to_numpy(np.int64))
        return np.where(header_present(table, "has_l4"), values, 0)
    column, flag = HEADER_COLUMNS[field]
    values = table[column].to_numpy(np.int64)
    present = header_present(table, flag)
    return np.where(present, values, 0) if present is not None else values


def header_present(table: pd.DataFrame, flag: str | None) -> np.ndarray | None:
    if flag is None:
        return None
    if flag == "has_l4":
        return table["has_tcp"].to_numpy(bool) | table["has_udp"].to_numpy(bool)
    return table[flag].to_numpy(bool)


def required_header(field: str) -> str | None:
    """The validity column a packet needs for this field to be classified on (None: none)."""
    if field in PORT_PAIR_FIELDS:
        return None
    flag = HEADER_COLUMNS[field][1]
    return None if flag in (None, "has_ipv4", "has_l4") else flag


def empty_packet_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in PACKET_COLUMNS.items()})


def as_packet_table(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Build a packet table from column arrays (missing columns raise; dtypes are enforced)."""
    missing = sorted(set(PACKET_COLUMNS) - set(columns))
    if missing:
        raise KeyError(f"packet table lacks columns {missing}")
    return pd.DataFrame({c: np.asarray(columns[c]).astype(t) for c, t in PACKET_COLUMNS.items()})


def five_tuple(table: pd.DataFrame) -> np.ndarray:
    """(n, 5) uint32: ip_src, ip_dst, src_port, dst_port, ip_proto (zeros where absent)."""
    return np.stack([table["ip_src"].to_numpy(np.uint32), table["ip_dst"].to_numpy(np.uint32),
                     table["src_port"].to_numpy(np.uint32), table["dst_port"].to_numpy(np.uint32),
                     table["ip_proto"].to_numpy(np.uint32)], axis=1)
