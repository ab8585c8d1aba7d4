"""Datasets from packets: captures -> labelled packet table -> per-packet data-plane features.

Features are computed by the Python reference of the feature library (features/reference.py) with
the target's time base, packet by packet in capture order, exactly as the switch would see them;
a packet is a sample when the data plane would classify it (IPv4 without options, and the headers
its header features read are present). Splits keep whole flows (or whole captures) on one side.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homunculus.data.dataset import Dataset, FeatureDecl, FlowRows, make_dataset
from homunculus.data.packets import required_header
from homunculus.errors import DataError
from homunculus.features.library import PORT_KINDS, FeatureDef, FlowConfig, histogram, validate
from homunculus.features.reference import flow_positions, reference_features

Locate = Callable[[str, str], Exception]


@dataclass(frozen=True)
class TrafficInfo:
    """How a traffic dataset was built (kept with the Dataset for the pipeline and the report)."""

    features: tuple[FeatureDef, ...]
    config: FlowConfig
    packets: int
    samples: int
    label_counts: dict[str, int]
    split: str
    ingest: dict[str, Any] = field(default_factory=dict)
    table: pd.DataFrame | None = field(default=None, repr=False)  # the labelled packets
    rows: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # train, test


def feature_defs(specs: list[Any], locate: Locate) -> list[FeatureDef]:
    """FeatureDefs from spec entries; histograms expand into one feature per bin."""
    out: list[FeatureDef] = []
    for i, s in enumerate(specs):
        categorical = bool(s.categorical) if s.categorical is not None else s.kind in PORT_KINDS
        if s.kind in ("len_hist", "iat_hist"):
            kind = "len_bin" if s.kind == "len_hist" else "iat_bin"
            defs = histogram(s.name, kind, s.bins, s.bin_shift, s.width)
            defs = [replace(d, categorical=categorical) for d in defs]
        elif s.kind in PORT_KINDS:
            if s.field is not None:
                raise locate(f"traffic.features[{i}].field", f"a {s.kind} feature reads "
                             f"{PORT_KINDS[s.kind]} itself: give no field")
            if s.width != 16:
                raise locate(f"traffic.features[{i}].width",
                             f"a {s.kind} is a TCP/UDP port: its values need 16 bits, so "
                             f"declare width 16, not {s.width}")
            defs = [FeatureDef(s.name, "header", 16, PORT_KINDS[s.kind],
                               categorical=categorical)]
        else:
            defs = [FeatureDef(s.name, s.kind, s.width, s.field, s.param, s.bin_shift, s.bins,
                               categorical)]
        for d in defs:
            try:
                validate(d)
            except (ValueError, KeyError) as exc:
                raise locate(f"traffic.features[{i}]", str(exc.args[0])) from None
        out.extend(defs)
    dup = sorted(name for name, n in Counter(d.name for d in out).items() if n > 1)
    if dup:
        raise locate("traffic.features", f"feature names {dup} are declared more than once")
    return out


def classifiable(table: pd.DataFrame, features: list[FeatureDef], eligible: np.ndarray
                 ) -> np.ndarray:
    """Eligible packets that also carry every header a header feature reads."""
    mask = eligible.copy()
    for f in features:
        if f.kind == "header" and required_header(f.field) is not None:
            mask &= table[required_header(f.field)].to_numpy(bool)
    return mask


def flow_groups(table: pd.DataFrame) -> np.ndarray:
    """A bidirectional flow id per packet (both directions of a conversation share it)."""
    a = table["ip_src"].to_numpy(np.int64) * 65536 + table["src_port"].to_numpy(np.int64)
    b = table["ip_dst"].to_numpy(np.int64) * 65536 + table["dst_port"].to_numpy(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keys = pd.MultiIndex.from_arrays([lo, hi, table["ip_proto"].to_numpy()])
    return pd.factorize(keys)[0]


def split_rows(table: pd.DataFrame, rows: np.ndarray, how: str, test_fraction: float,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test row indices; by flow or by capture file no group is on both sides."""
    if how == "time":
        order = rows[np.argsort(table["ts_us"].to_numpy()[rows], kind="stable")]
        cut = int(round(len(order) * (1 - test_fraction)))
        return order[:cut], order[cut:]
    groups = (table["file_id"].to_numpy() if how == "file" else flow_groups(table))[rows]
    unique = np.unique(groups)
    if len(unique) < 2:
        raise DataError(f"cannot split by {how}: all samples belong to one {how}")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(unique)
    n_test = min(max(1, int(round(len(unique) * test_fraction))), len(unique) - 1)
    test_groups = set(shuffled[:n_test].tolist())
    in_test = np.array([g in test_groups for g in groups])
    return rows[~in_test], rows[in_test]


def per_capture(table: pd.DataFrame, run: Callable[[pd.DataFrame], tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``run`` to each capture (file_id) separately, as if each were replayed into a switch
    with fresh state; rows keep their order."""
    ids = table["file_id"].to_numpy()
    if len(np.unique(ids)) <= 1:
        return run(table)
    parts = [(np.nonzero(ids == f)[0], run(table[ids == f])) for f in pd.unique(ids)]
    values = np.zeros((len(table), parts[0][1][0].shape[1]), dtype=np.int64)
    mask = np.zeros(len(table), dtype=bool)
    for rows, (v, m) in parts:
        values[rows], mask[rows] = v, m
    return values, mask


def build_traffic_dataset(table: pd.DataFrame, features: list[FeatureDef], config: FlowConfig,
                          *, split: str, test_fraction: float, seed: int, source: str,
                          ingest: dict[str, Any] | None = None) -> Dataset:
    """Per-packet features (reference semantics) and labels, split without leaking flows."""
    if "label" not in table.columns:
        raise DataError(f"{source}: the packet table has no labels")
    if table.empty:
        raise DataError(f"{source}: no packets")
    values, eligible = per_capture(table, lambda t: reference_features(t, features, config))
    rows = np.nonzero(classifiable(table, features, eligible))[0]
    if len(rows) == 0:
        raise DataError(f"{source}: no packet can be classified (no IPv4 packets carrying the "
                        "headers the features read)")
    train, test = split_rows(table, rows, split, test_fraction, seed)
    labels = table["label"].astype(str).to_numpy()
    decls = [FeatureDecl(f.name, f.width, f.field, None if f.kind == "header" else f.kind,
                         f.categorical) for f in features]
    ds = make_dataset(decls, values[train], labels[train], values[test], labels[test], source)
    counts = pd.Series(labels[rows]).value_counts().sort_index()
    info = TrafficInfo(tuple(features), config, len(table), len(rows),
                       {str(k): int(v) for k, v in counts.items()}, split, ingest or {}, table,
                       (train, test))
    groups = table["file_id"].to_numpy() if split == "file" else flow_groups(table)
    pos, ep = packet_positions(table, config)
    return Dataset(ds.features, ds.class_labels, ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                   ds.source, info, groups[train], "capture" if split == "file" else "flow",
                   FlowRows(pos[train], ep[train], pos[test], ep[test]))


def packet_positions(table: pd.DataFrame, config: FlowConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each packet's flow count n and flow-stay id (unique across captures), each capture
    replayed with fresh state (features/reference.py ``flow_positions``)."""
    def run(t: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        pos, ep = flow_positions(t, config)
        return np.stack([pos, ep], axis=1), np.ones(len(t), dtype=bool)

    values, _ = per_capture(table, run)
    files = table["file_id"].to_numpy(np.int64)
    episodes = np.where(values[:, 1] >= 0, files * (1 << 32) + values[:, 1], -1)
    return values[:, 0], episodes


def load_traffic_packets(traffic: Any, base: Path, locate: Locate
                         ) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """Captures (or synthetic background) plus labels, per the spec's labeller."""
    labels = traffic.labels
    if labels.kind == "ndpi":
        from homunculus.data.ndpi import load_ndpi_packets

        return load_ndpi_packets(labels.first_n, labels.max_files, labels.seed)
    table, stats, source = _background(traffic, base, locate)
    if labels.kind == "attacks":
        from homunculus.data import attacks

        if labels.scenario is None:
            raise locate("traffic.labels.scenario", "attack labels need a scenario "
                                                    "(anomaly or botnet)")
        scenario = getattr(attacks, f"scenario_{labels.scenario}")
        return scenario(table, labels.seed), stats, source
    if labels.path is None:
        raise locate("traffic.labels.path", "file labels need 'path' (a label CSV)")
    from homunculus.data.labels import label_from_file

    return label_from_file(table, base / labels.path, default=labels.default), stats, source


def _background(traffic: Any, base: Path, locate: Locate
                ) -> tuple[pd.DataFrame, dict[str, Any], str]:
    if traffic.pcaps:
        from homunculus.data.pcap import ingest

        paths = [base / p for p in traffic.pcaps]
        table, stats = ingest(paths, max_packets=traffic.max_packets)
        for warning in stats.warnings[:20]:
            warnings.warn(warning, stacklevel=2)
        summary = {"packets": stats.packets, "skipped": stats.skipped,
                   "truncated_files": stats.truncated_files, "malformed": stats.malformed}
        return table, summary, ", ".join(str(p) for p in paths)
    if traffic.background is None:
        raise locate("traffic.pcaps", "give captures (pcaps) or a synthetic background")
    bg = traffic.background
    if bg.ndpi_capture is not None:
        return _ndpi_background(bg.ndpi_capture, traffic.max_packets, locate)
    from homunculus.data.attacks import synthetic_background

    table = synthetic_background(np.random.default_rng(bg.seed), bg.flows,
                                 int(bg.seconds * 1e6))
    return table, {"synthetic_flows": bg.flows}, f"synthetic background (seed {bg.seed})"


def _ndpi_background(name: str, max_packets: int | None, locate: Locate
                     ) -> tuple[pd.DataFrame, dict[str, Any], str]:
    """One real capture of the nDPI test suite (fetched and cached) as background traffic."""
    from homunculus.data.ndpi import fetch_ndpi
    from homunculus.data.pcap import ingest

    root = fetch_ndpi(log=lambda _m: None) / "tests" / "pcap"
    path = root / name
    if not path.is_file() or Path(name).name != name:
        known = sorted(p.name for p in root.iterdir())[:8]
        raise locate("traffic.background.ndpi_capture",
                     f"'{name}' is not a capture of the nDPI test suite (e.g. {known})")
    table, stats = ingest([path], max_packets=max_packets)
    summary = {"packets": stats.packets, "skipped": stats.skipped,
               "truncated_files": stats.truncated_files, "malformed": stats.malformed}
    return table, summary, f"nDPI test capture {name} (LGPL-3.0, ntop) as background"
