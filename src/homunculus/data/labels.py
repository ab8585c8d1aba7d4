"""Labelling packet tables: canonical flow keys and rule files that add a ``label`` column.

A label file is a CSV with a header row. ``label`` is required; every other column is optional
and an empty cell (or ``*``) is a wildcard:

=============  ==========================================================================
column         value
=============  ==========================================================================
label          the label given to matching packets
src, dst       IPv4 address or CIDR prefix (``10.0.0.0/8``)
sport, dport   port or inclusive range (``1024-65535``)
proto          IP protocol number or ``tcp`` / ``udp`` / ``icmp``
start_us       first matching ``ts_us`` (inclusive)
end_us         last matching ``ts_us`` (inclusive)
bidirectional  ``true``/``false``: also match with source and destination swapped
=============  ==========================================================================

Rules are tried in file order and the first that matches a packet labels it; packets no rule
matches get the default label. A rule naming an address, port or protocol matches only IPv4
packets, and one naming a port only TCP/UDP packets. Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import csv
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from homunculus.data.packets import five_tuple
from homunculus.data.pcap import MAX_TS_US
from homunculus.errors import DataError
from homunculus.inputs import MAX_LABEL_FILE_BYTES, read_text

COLUMNS = ("label", "src", "dst", "sport", "dport", "proto", "start_us", "end_us",
           "bidirectional")
PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1}
TRUE, FALSE = {"true", "yes", "1", "y"}, {"false", "no", "0", "n"}

Range = tuple[int, int]  # inclusive [lo, hi]


@dataclass(frozen=True)
class LabelRule:
    """One label-file row; None fields are wildcards. ``src``/``dst`` are (network, mask)."""

    label: str
    src: tuple[int, int] | None = None
    dst: tuple[int, int] | None = None
    sport: Range | None = None
    dport: Range | None = None
    proto: int | None = None
    start_us: int | None = None
    end_us: int | None = None
    bidirectional: bool = True
    line: int = 0

    @property
    def needs_ipv4(self) -> bool:
        return any(v is not None for v in (self.src, self.dst, self.sport, self.dport,
                                           self.proto))


def flow_keys(table: pd.DataFrame) -> np.ndarray:
    """Canonical bidirectional 5-tuple key per row, as 13-byte strings (dtype ``S13``).

    The key is big-endian (ip_lo, ip_hi, port_lo, port_hi, proto) where (ip_lo, port_lo) is the
    smaller endpoint, so both directions of a flow share one key. Keys are hashable and
    sortable (``np.unique``, pandas ``groupby``/``merge``). Rows without IPv4 share the all-zero
    key; filter on ``has_ipv4`` first when that matters.
    """
    t = five_tuple(table).astype(np.uint64)
    a, b = (t[:, 0] << 16) | t[:, 2], (t[:, 1] << 16) | t[:, 3]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key = np.empty(len(t), dtype=[("ip_lo", ">u4"), ("ip_hi", ">u4"), ("port_lo", ">u2"),
                                  ("port_hi", ">u2"), ("proto", "u1")])
    key["ip_lo"], key["ip_hi"] = lo >> 16, hi >> 16
    key["port_lo"], key["port_hi"] = lo & 0xFFFF, hi & 0xFFFF
    key["proto"] = t[:, 4]
    return key.view("S13")


def flow_key(src: int, dst: int, sport: int, dport: int, proto: int) -> bytes:
    """The :func:`flow_keys` key of one 5-tuple (IPv4 addresses as integers).

    Trailing zero bytes are stripped, as numpy does when an ``S13`` element is read, so the
    result compares and hashes equal to the elements of :func:`flow_keys`.
    """
    lo, hi = sorted([(src, sport), (dst, dport)])
    return (lo[0].to_bytes(4, "big") + hi[0].to_bytes(4, "big") + lo[1].to_bytes(2, "big")
            + hi[1].to_bytes(2, "big") + bytes([proto])).rstrip(b"\0")


# ---------------------------------------------------------------------------------------------
# label files


def _net(text: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(text, strict=False)
    return int(net.network_address), int(net.netmask)


def _range(text: str) -> Range:
    lo, _, hi = text.partition("-")
    r = (int(lo), int(hi or lo))
    if not 0 <= r[0] <= r[1] <= 65535:
        raise ValueError("expected a port 0..65535 or a range lo-hi")
    return r


def _proto(text: str) -> int:
    v = PROTO_NAMES.get(text.lower())
    v = int(text) if v is None else v
    if not 0 <= v <= 255:
        raise ValueError("expected a protocol number 0..255 or tcp/udp/icmp")
    return v


def _bool(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError("expected true or false")


def _time(text: str) -> int:
    v = int(text)
    if not 0 <= v <= MAX_TS_US:
        raise ValueError(f"expected microseconds in 0..{MAX_TS_US}")
    return v


_PARSERS = {"src": _net, "dst": _net, "sport": _range, "dport": _range, "proto": _proto,
            "start_us": _time, "end_us": _time, "bidirectional": _bool}


def _rule(row: dict[str, str], where: str, line: int, bidirectional: bool) -> LabelRule:
    label = (row.get("label") or "").strip()
    if not label:
        raise DataError(f"{where}:{line}: column 'label' is empty")
    values: dict[str, object] = {"bidirectional": bidirectional}
    for col, parse in _PARSERS.items():
        cell = (row.get(col) or "").strip()
        if cell in ("", "*"):
            continue
        try:
            values[col] = parse(cell)
        except ValueError as e:
            raise DataError(f"{where}:{line}: column '{col}': bad value {cell!r} ({e})") from None
    rule = LabelRule(label=label, line=line, **values)  # type: ignore[arg-type]
    if rule.start_us is not None and rule.end_us is not None and rule.start_us > rule.end_us:
        raise DataError(f"{where}:{line}: start_us {rule.start_us} > end_us {rule.end_us}")
    return rule


def _cells(text: str, where: str, line: int) -> list[str]:
    try:
        return next(csv.reader([text]))
    except csv.Error as e:
        raise DataError(f"{where}:{line}: not a CSV line ({e})") from None


def read_label_file(path: Path, *, bidirectional: bool = True) -> list[LabelRule]:
    """Parse a label file; ``bidirectional`` is the default for rows that leave it empty."""
    where = str(path)
    text = read_text(Path(path), "label file", MAX_LABEL_FILE_BYTES)
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{where}: label file is empty")
    header_line, header = lines[0]
    names = [c.strip() for c in _cells(header, where, header_line)]
    unknown = sorted(set(names) - set(COLUMNS))
    if unknown or "label" not in names:
        why = f"unknown columns {unknown}" if unknown else "no 'label' column"
        raise DataError(f"{where}:{header_line}: {why}; columns are {', '.join(COLUMNS)}")
    rules = []
    for line, ln in lines[1:]:
        cells = _cells(ln, where, line)
        if len(cells) > len(names):
            raise DataError(f"{where}:{line}: {len(cells)} cells for {len(names)} columns")
        rules.append(_rule(dict(zip(names, cells, strict=False)), where, line, bidirectional))
    return rules


# ---------------------------------------------------------------------------------------------
# applying rules


def _match_dir(rule: LabelRule, src: np.ndarray, dst: np.ndarray, sport: np.ndarray,
               dport: np.ndarray) -> np.ndarray:
    m = np.ones(len(src), bool)
    for net, col in ((rule.src, src), (rule.dst, dst)):
        if net is not None:
            m &= (col & net[1]) == net[0]
    for rng, col in ((rule.sport, sport), (rule.dport, dport)):
        if rng is not None:
            m &= (col >= rng[0]) & (col <= rng[1])
    return m


@dataclass(frozen=True)
class _Columns:
    tuple5: np.ndarray
    ts: np.ndarray
    ipv4: np.ndarray
    l4: np.ndarray

    @classmethod
    def of(cls, table: pd.DataFrame) -> _Columns:
        return cls(five_tuple(table).astype(np.int64), table["ts_us"].to_numpy(np.int64),
                   table["has_ipv4"].to_numpy(bool),
                   table["has_tcp"].to_numpy(bool) | table["has_udp"].to_numpy(bool))


def _rule_mask(rule: LabelRule, c: _Columns) -> np.ndarray:
    t = c.tuple5
    m = c.ipv4.copy() if rule.needs_ipv4 else np.ones(len(t), bool)
    if rule.sport is not None or rule.dport is not None:
        m &= c.l4
    if rule.proto is not None:
        m &= t[:, 4] == rule.proto
    if rule.start_us is not None:
        m &= c.ts >= rule.start_us
    if rule.end_us is not None:
        m &= c.ts <= rule.end_us
    hit = _match_dir(rule, t[:, 0], t[:, 1], t[:, 2], t[:, 3])
    if rule.bidirectional:
        hit |= _match_dir(rule, t[:, 1], t[:, 0], t[:, 3], t[:, 2])
    return m & hit


def rule_mask(rule: LabelRule, table: pd.DataFrame) -> np.ndarray:
    """Rows of the table that the rule matches."""
    return _rule_mask(rule, _Columns.of(table))


def _exact_key(rule: LabelRule) -> tuple[int, int, int, int, int] | None:
    """The one directed 5-tuple a rule can match, if it names exactly one (else None)."""
    full = 0xFFFFFFFF
    if rule.src is None or rule.dst is None or rule.proto is None:
        return None
    if rule.src[1] != full or rule.dst[1] != full:
        return None
    if rule.sport is None and rule.dport is None and rule.proto not in (6, 17):
        return rule.src[0], rule.dst[0], 0, 0, rule.proto
    if (rule.sport is None or rule.dport is None or rule.sport[0] != rule.sport[1]
            or rule.dport[0] != rule.dport[1]):
        return None
    return rule.src[0], rule.dst[0], rule.sport[0], rule.dport[0], rule.proto


def _candidates(rule: LabelRule, rows_of: dict[tuple[int, ...], np.ndarray]
                ) -> np.ndarray | None:
    """Row indices a rule naming one 5-tuple can match (None: any row may match)."""
    key = _exact_key(rule)
    if key is None:
        return None
    empty = np.zeros(0, np.int64)
    found = [rows_of.get(key, empty)]
    if rule.bidirectional:
        src, dst, sport, dport, proto = key
        found.append(rows_of.get((dst, src, dport, sport, proto), empty))
    return np.unique(np.concatenate(found))


def apply_rules(table: pd.DataFrame, rules: list[LabelRule], *,
                default: str = "unknown") -> pd.DataFrame:
    """A copy of the table with a ``label`` column: first matching rule wins, else default.

    Rules naming one exact 5-tuple are looked up by key; other rules cost O(rows) each.
    """
    cols = _Columns.of(table)
    n = len(table)
    labels = np.full(n, default, dtype=object)
    free = np.ones(n, bool)
    rows_of: dict[tuple[int, ...], np.ndarray] = {}
    if any(_exact_key(r) is not None for r in rules):
        index = pd.DataFrame(cols.tuple5).groupby(list(range(5)), sort=False).indices
        rows_of = {tuple(int(v) for v in k): idx for k, idx in index.items()}
    for rule in rules:
        if not free.any():
            break
        idx = _candidates(rule, rows_of)
        if idx is None:
            m = free & _rule_mask(rule, cols)
        else:
            idx = idx[free[idx]]
            sub = _Columns(cols.tuple5[idx], cols.ts[idx], cols.ipv4[idx], cols.l4[idx])
            m = np.zeros(n, bool)
            m[idx[_rule_mask(rule, sub)]] = True
        labels[m] = rule.label
        free &= ~m
    out = table.copy()
    out["label"] = labels.astype(str)
    return out


def label_from_file(table: pd.DataFrame, path: Path, *, default: str = "unknown",
                    bidirectional: bool = True) -> pd.DataFrame:
    """Label a packet table with the rules of a label file (see the module docstring)."""
    return apply_rules(table, read_label_file(path, bidirectional=bidirectional),
                       default=default)
