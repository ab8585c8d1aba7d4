"""``homunculus adapt`` live on a deployed XDP program: packets flow through a veth pair (two
namespaces the test creates and removes), the loop reads the ring buffer, the rule agent labels,
the proxy triggers a retrain, the gate passes it and it is pushed while packets keep flowing.
Every sampled packet's class is the one its recorded model version gives its recorded features:
no packet was classified by a mix of two models."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_xdp_live import frames_of, packets, send, veth_link  # noqa: F401  (fixture)
from typer.testing import CliRunner

from homunculus import deploy as deploy_mod
from homunculus.adapt import loop as loop_mod
from homunculus.adapt.model import load_deployed, predict
from homunculus.adapt.run import AdaptOptions, run_adapt
from homunculus.cli import app
from homunculus.data.pcap import write_pcap
from homunculus.data.scenarios import label_rules
from homunculus.ir.telemetry import feature_matrix

SPEC = """\
name: live-adapt
traffic:
  pcaps: [train.pcap]
  labels: {kind: file, path: train.csv, default: benign}
  features:
    - {name: ip_len, kind: header, field: ipv4.total_len, width: 16}
    - {name: ttl, kind: header, field: ipv4.ttl, width: 8}
    - {name: proto, kind: header, field: ipv4.protocol, width: 8}
    - {name: dport, kind: header, field: l4.dst_port, width: 16}
    - {name: pkts, kind: pkt_count, width: 8}
  flow: {slots: 1024}
  split: time
model:
  name: anomaly
  algorithms: [dt]
  verdict: {kind: drop, drop: [attack]}
platform:
  target: xdp
  profile: {max_depth: 8, max_nodes: 256}
search: {trials: 2, seed: 0}
adapt: {sampling: rate, one_in: 1}
"""


def write_labels(table: pd.DataFrame, path: Path, live: bool = False) -> None:
    """Label rules reproducing the table's labels; ``live``: without time bounds (live packets
    carry the kernel's time) and ending with a catch-all benign rule (an operator's list)."""
    import csv

    rules = label_rules(table, "benign")
    if live:
        rules = [r | {"start_us": "", "end_us": ""} for r in rules]
        rules.append({k: "" for k in rules[0]} | {"label": "benign"})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rules[0]))
        writer.writeheader()
        writer.writerows(rules)


def test_live_adapt_installs_while_packets_flow(packets: pd.DataFrame,  # noqa: F811
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    binary = packets.assign(label=np.where(packets["label"] == "benign", "benign", "attack"))
    # The compiled model learns from a capture where only the SYN flood is labelled an attack:
    # live, the operator's rule list (the truth) disagrees with it on the scan and the DNS
    # amplification, so the proxy is low and a retrain follows.
    stale = binary.assign(label=np.where(packets["label"] == "syn_flood", "attack", "benign"))
    write_pcap(stale, tmp_path / "train.pcap")
    write_labels(stale, tmp_path / "train.csv")
    write_labels(binary, tmp_path / "truth.csv", live=True)
    (tmp_path / "spec.yaml").write_text(SPEC)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compile", str(tmp_path / "spec.yaml"), "-o", str(out),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    seen: list[pd.DataFrame] = []
    observe = loop_mod.AdaptLoop.observe

    def recording(self, window, f1=None, extra=None):  # noqa: ANN001, ANN202
        seen.append(window.samples.copy())
        return observe(self, window, f1, extra)

    monkeypatch.setattr(loop_mod.AdaptLoop, "observe", recording)
    name = f"hmn_test_adapt{os.getpid()}"
    stop = threading.Event()
    try:
        with veth_link("a") as link:
            result = CliRunner().invoke(app, ["deploy", str(out), "--iface", link.receiver,
                                              "--netns", link.rx, "--name", name])
            assert result.exit_code == 0, result.output
            frames = frames_of(binary, link)

            def traffic() -> None:
                while not stop.is_set():
                    send(link, frames, stop, pace=8)

            sender = threading.Thread(target=traffic, daemon=True)
            sender.start()
            options = AdaptOptions(out, name=name, agents="rules", rules=tmp_path / "truth.csv",
                                   window=1.0, windows=10, cooldown=1, min_per_class=5,
                                   max_installs=1, report=tmp_path / "report")
            summary, html = run_adapt(options, echo=lambda _m: None)
            time.sleep(0.3)
            stop.set()
            sender.join(timeout=10)
            state = json.loads((deploy_mod.STATE_DIR / f"{name}.json").read_text())
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            deploy_mod.undeploy(name)
    assert summary["installs"] == 1 and state["version"] == 1 and state["pushes"] == 1
    decisions = [json.loads(line) for line in (tmp_path / "report" / "decisions.jsonl")
                 .read_text().splitlines()]
    install = next(d for d in decisions if d.get("installed"))
    assert install["verified"] and install["gate"]["install"]
    assert html.is_file()
    samples = pd.concat(seen, ignore_index=True)
    versions = samples["version"].to_numpy()
    assert (versions == 0).sum() > 100 and (versions == 1).sum() > 100, \
        "packets were sampled under both models: the install happened while they flowed"
    first = samples.index[versions == 1][0]
    assert (versions[first:] == 1).all(), "after the flip no packet used the old slot again"
    from homunculus.targets.xdp.snapshot import read_snapshot

    initial = load_deployed(out).program
    report_dir = tmp_path / "report"
    installed = read_snapshot(json.loads((report_dir / "installed" / "v1.json").read_text()))[0]
    x = feature_matrix(samples)
    expected = np.where(versions == 0, predict(initial, x), predict(installed, x))
    mixed = int((samples["cls"].to_numpy() != expected).sum())
    assert mixed == 0, f"{mixed} packets got a class neither model version gives them"
    assert (predict(initial, x) != predict(installed, x)).any(), "the two models differ"

