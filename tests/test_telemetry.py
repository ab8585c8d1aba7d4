"""Telemetry out of the XDP program: sampled packets reach user space through the BPF ring
buffer (read with libbpf), exactly as the twin predicts them.

The program is attached to a veth pair between two network namespaces the test creates and
removes (``hmn-test-*``); packets are sent from the other namespace in order, from one CPU, so
the per-CPU rate counter and the per-flow counts are the twin's."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_xdp_live import (
    TARGET,
    attached,
    frames_of,
    packets,  # noqa: F401  (fixture)
    send,
    table_pipeline,
    veth_link,
    wait_for,
)

from homunculus.ir.telemetry import (
    SAMPLE_COLUMNS,
    TelemetryConfig,
    records_from_bytes,
    sample_mask,
    twin_samples,
)
from homunculus.targets.xdp.loader import RingBuffer, load_object
from homunculus.targets.xdp.runner import packet_features, reference
from homunculus.targets.xdp.snapshot import install, set_telemetry, slot_versions, snapshot_of
from homunculus.targets.xdp.target import XdpTarget


def expected_samples(program, table: pd.DataFrame, config: TelemetryConfig,  # noqa: ANN001
                     version: int) -> pd.DataFrame:
    values, classified = packet_features(program, table)
    sampled = sample_mask(table, classified, config)
    cls = reference(program, values[sampled]).class_index
    return twin_samples(table, sampled, values[sampled], cls, version)


@pytest.mark.parametrize("config", [TelemetryConfig("first_k", first_k=2),
                                    TelemetryConfig("rate", one_in=3),
                                    TelemetryConfig("first_k_rate", first_k=2, one_in=3)],
                         ids=["first_k", "rate", "first_k_rate"])
def test_ring_buffer_samples_equal_the_twin(packets: pd.DataFrame, config: TelemetryConfig,  # noqa: F811
                                            tmp_path: Path) -> None:
    program = table_pipeline()
    target = XdpTarget(TARGET.profile, telemetry=config)
    files = target.emit(program, tmp_path, "tel")
    want = expected_samples(program, packets, config, 7)
    assert 20 < len(want) < len(packets), "the sampling keeps some packets, not all"
    if config.sampling == "first_k_rate":  # later packets of long flows are sampled too
        head_only = expected_samples(program, packets, TelemetryConfig(
            "first_k", first_k=config.first_k), 7)
        assert len(want) > len(head_only) + 10
    with veth_link(f"t{config.mode}") as link, load_object(files["bpf_o"]) as obj:
        install(obj, snapshot_of(program, target.capacity(program)))
        obj.map("hmn_version").update_u32(0, 7)
        assert slot_versions(obj) == (7, 0)
        set_telemetry(obj, config.mode, config.param, config.every)
        with RingBuffer(obj.map("hmn_samples").fd) as ring, attached(link, obj, "skb"):
            assert send(link, frames_of(packets, link)) == len(packets)
            wait_for(lambda: obj.map("hmn_stats").lookup_u64(0), len(packets))
            deadline = time.monotonic() + 5
            while ring.consume() == 0 and time.monotonic() < deadline:
                ring.poll(50)
            records: list[bytes] = []
            while time.monotonic() < deadline and len(records) < len(want):
                ring.poll(50)
                records += ring.drain()
            time.sleep(0.05)
            ring.consume()
            records += ring.drain()
        lost = obj.map("hmn_tel_ctr").lookup_u64(1)
    got = records_from_bytes(records, len(program.features))
    assert lost == 0
    assert len(got) == len(want)
    head = [c for c in SAMPLE_COLUMNS if c != "ts_us"]
    pd.testing.assert_frame_equal(got[head + [f"x{j}" for j in range(len(program.features))]],
                                  want[head + [f"x{j}" for j in range(len(program.features))]])
    assert (np.diff(got["ts_us"].to_numpy()) >= 0).all(), "records arrive in packet order"
