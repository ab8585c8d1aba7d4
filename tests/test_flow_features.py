"""Flow features: the per-feature Python reference and the register-program twin (what the
generated P4 executes) compute identical integers on random packet sequences, including hash
collisions (tiny register arrays), counter saturation (narrow counters) and time wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homunculus.data.packets import PACKET_COLUMNS, as_packet_table
from homunculus.features.library import FeatureDef, FlowConfig, histogram, validate
from homunculus.features.reference import reference_features
from homunculus.ir.flow import lower_flow_features
from homunculus.targets.p4.flow_twin import run_flow_program


def packet_sequence(seed: int, n: int, n_flows: int, wrap: bool) -> object:
    rng = np.random.default_rng(seed)
    cols = {c: np.zeros(n, dtype=np.int64) for c in PACKET_COLUMNS}
    flow = rng.integers(0, n_flows, n)
    start = (2**32 - 5000) if wrap else 1_700_000_000_000_000
    cols["ts_us"] = start + np.cumsum(rng.integers(0, 3000, n))
    cols["has_ipv4"] = rng.random(n) < 0.95
    cols["ip_ihl"] = np.where(rng.random(n) < 0.95, 5, 6)
    cols["ip_src"] = 0x0A000000 + flow
    cols["ip_dst"] = 0xC0A80001 + flow % 3
    cols["ip_proto"] = np.where(flow % 3 == 0, 17, 6)
    cols["has_udp"] = flow % 3 == 0
    cols["has_tcp"] = flow % 3 != 0
    cols["src_port"] = 1024 + flow
    cols["dst_port"] = np.where(flow % 3 == 0, 53, 443)
    cols["ip_total_len"] = rng.integers(20, 1501, n)
    cols["ip_ttl"] = rng.integers(1, 256, n)
    return as_packet_table(cols)


ALL_KINDS = [
    FeatureDef("ttl", "header", 8, field="ipv4.ttl"),
    FeatureDef("pkts", "pkt_count", 3),
    FeatureDef("pkts16", "pkt_count", 16),
    FeatureDef("bytes", "byte_count", 11),
    FeatureDef("mn", "min_len", 16),
    FeatureDef("mx", "max_len", 16),
    FeatureDef("ew", "ewma_len", 16, param=2),
    FeatureDef("iat", "iat", 12),
    FeatureDef("age", "flow_age", 14),
    *histogram("lh", "len_bin", 4, 8, 2),
    *histogram("ih", "iat_bin", 3, 10, 3),
]


def assert_same(features: list[FeatureDef], table, cfg: FlowConfig) -> None:
    ref, ref_ok = reference_features(table, features, cfg)
    program = lower_flow_features(features, cfg)
    twin, twin_ok = run_flow_program(program, table, len(features))
    np.testing.assert_array_equal(ref_ok, twin_ok)
    flow = [i for i, f in enumerate(features) if f.is_flow]
    np.testing.assert_array_equal(ref[:, flow][ref_ok], twin[:, flow][twin_ok])
    for i in flow:
        assert ref[:, i].max() <= features[i].max_value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), n_flows=st.integers(1, 30),
       slots=st.sampled_from([2, 4, 16, 1024]), time_shift=st.integers(0, 6),
       unit_ns=st.sampled_from([1000, 1024]), wrap=st.booleans(),
       subset=st.lists(st.sampled_from(range(len(ALL_KINDS))), min_size=1, max_size=8,
                       unique=True))
def test_reference_equals_register_twin(seed, n, n_flows, slots, time_shift, unit_ns, wrap,
                                        subset) -> None:
    table = packet_sequence(seed, n, n_flows, wrap)
    features = [ALL_KINDS[i] for i in sorted(subset)]
    cfg = FlowConfig(slots=slots, time_shift=time_shift, unit_ns=unit_ns)
    if not any(f.is_flow for f in features):
        features = [*features, ALL_KINDS[1]]
    assert_same(features, table, cfg)


def test_collisions_and_saturation_actually_happen() -> None:
    """The property above would be weak if collisions or saturation never occurred."""
    few_flows = packet_sequence(3, 400, 2, wrap=False)
    ref, ok = reference_features(few_flows, ALL_KINDS, FlowConfig(slots=1024))
    assert (ref[ok, 1] == 7).sum() > 100, "the 3-bit counter saturates at 7"
    assert_same(ALL_KINDS, few_flows, FlowConfig(slots=1024))
    crowded = packet_sequence(3, 400, 25, wrap=False)
    ref, ok = reference_features(crowded, ALL_KINDS, FlowConfig(slots=2))
    alone, ok_alone = reference_features(crowded, ALL_KINDS, FlowConfig(slots=65536))
    assert (ref[ok, 2] != alone[ok_alone, 2]).any(), "evictions changed some counts"
    assert_same(ALL_KINDS, crowded, FlowConfig(slots=2))


def test_known_values_for_one_flow() -> None:
    n = 5
    cols = {c: np.zeros(n, dtype=np.int64) for c in PACKET_COLUMNS}
    cols.update(ts_us=np.array([1000, 1300, 2300, 2400, 10000]), has_ipv4=np.ones(n, bool),
                ip_ihl=np.full(n, 5), ip_src=np.full(n, 1), ip_dst=np.full(n, 2),
                ip_proto=np.full(n, 6), has_tcp=np.ones(n, bool), src_port=np.full(n, 3),
                dst_port=np.full(n, 4), ip_total_len=np.array([100, 60, 1500, 40, 300]))
    table = as_packet_table(cols)
    feats = [FeatureDef("pkts", "pkt_count", 3), FeatureDef("bytes", "byte_count", 16),
             FeatureDef("iat", "iat", 16), FeatureDef("age", "flow_age", 16),
             FeatureDef("ew", "ewma_len", 16, param=1), *histogram("lh", "len_bin", 2, 10, 4)]
    ref, _ = reference_features(table, feats, FlowConfig())
    assert ref[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert ref[:, 1].tolist() == [100, 160, 1660, 1700, 2000]
    assert ref[:, 2].tolist() == [0, 300, 1000, 100, 7600]
    assert ref[:, 3].tolist() == [0, 300, 1300, 1400, 9000]
    assert ref[:, 4].tolist() == [100, 80, 790, 415, 358]  # e - e>>1 + len>>1
    assert ref[:, 5].tolist() == [1, 2, 2, 3, 4] and ref[:, 6].tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("bad,msg", [
    (FeatureDef("x", "header", 16, field="ipv4.ttl"), "8 bits"),
    (FeatureDef("x", "pkt_countz", 8), "unknown feature kind"),
    (FeatureDef("x", "min_len", 8), "width must be 16"),
    (FeatureDef("x", "ewma_len", 16, param=0), "shift k"),
    (FeatureDef("x", "len_bin", 8, param=5, bins=4), "bin index 5"),
])
def test_validation(bad, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        validate(bad)
