"""Write a labelled scenario (attacks injected into background traffic) as a capture plus a label
file that reproduces its labels exactly, so any tool can replay it (e.g. ``homunculus simulate``).
"""

from __future__ import annotations

import csv
import ipaddress
from pathlib import Path

import numpy as np
import pandas as pd

from homunculus.data import attacks
from homunculus.data.labels import label_from_file
from homunculus.data.pcap import write_pcap
from homunculus.errors import DataError

SCENARIOS = ("anomaly", "botnet")


def scenario_table(name: str, flows: int, seconds: float, seed: int) -> pd.DataFrame:
    """Synthetic background with the named scenario's attacks injected (all seeded)."""
    if name not in SCENARIOS:
        raise DataError(f"unknown scenario '{name}'; known: {list(SCENARIOS)}")
    background = attacks.synthetic_background(np.random.default_rng(seed), flows,
                                              int(seconds * 1e6))
    return getattr(attacks, f"scenario_{name}")(background, seed)


def label_rules(table: pd.DataFrame, default: str) -> list[dict[str, str]]:
    """One rule per directional 5-tuple and label (time-bounded) for every non-default packet."""
    rows = table[table["label"].astype(str) != default]
    keys = ["ip_src", "ip_dst", "src_port", "dst_port", "ip_proto", "label"]
    rules = []
    for values, group in rows.groupby(keys, sort=True):
        src, dst, sport, dport, proto, label = values
        l4 = bool(group["has_tcp"].iloc[0] or group["has_udp"].iloc[0])
        rules.append({
            "label": str(label), "src": str(ipaddress.IPv4Address(int(src))),
            "dst": str(ipaddress.IPv4Address(int(dst))),
            "sport": str(int(sport)) if l4 else "", "dport": str(int(dport)) if l4 else "",
            "proto": str(int(proto)), "start_us": str(int(group["ts_us"].min())),
            "end_us": str(int(group["ts_us"].max())), "bidirectional": "false"})
    return rules


def write_scenario(table: pd.DataFrame, pcap: Path, labels: Path, default: str = "benign") -> None:
    """Write the capture and its label file; check that the file reproduces every label."""
    write_pcap(table, pcap)
    rules = label_rules(table, default)
    with labels.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["label", "src", "dst", "sport", "dport", "proto",
                                                "start_us", "end_us", "bidirectional"])
        writer.writeheader()
        writer.writerows(rules)
    again = label_from_file(table.drop(columns=["label"]), labels, default=default)
    mismatch = int((again["label"].to_numpy() != table["label"].astype(str).to_numpy()).sum())
    if mismatch:
        raise DataError(f"{labels}: the label rules reproduce all but {mismatch} labels "
                        "(a 5-tuple carries two labels at the same time)")
