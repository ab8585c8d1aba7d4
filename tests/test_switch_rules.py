"""The generated P4 keeps the real targets' rules, for every family, feature kind and verdict.

The rules (targets/p4/rules.py) are what the Tofino compiler rejected in this project's earlier
programs (tests/fixtures/real-compilers) or enforces in its source: one ALU operation per
destination per action with operands of one width, no comparison of two computed values, the
verdict acted on in the deciding table, the clock read only in stateful ALUs, register actions
within one stateful ALU. The lint must find each rejection the compiler reported in the fixture
programs, and none in what the generator writes now.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from test_p4_flow_codegen import flow_pipeline

from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.models.base import all_families, requires_dense
from homunculus.passes.lower import lower
from homunculus.targets.p4 import emit_p4
from homunculus.targets.p4.profiles import BMV2, TOFINO
from homunculus.targets.p4.rules import check_rules, rule_violations
from homunculus.targets.p4.target import SwitchTarget

FIXTURES = Path(__file__).parent / "fixtures" / "real-compilers" / "tna"
FAMILIES = sorted(n for n, f in all_families().items() if not requires_dense(f))
VERDICTS = {
    VerdictKind.METADATA: VerdictPlan(VerdictKind.METADATA),
    VerdictKind.DSCP: VerdictPlan(VerdictKind.DSCP, dscp={1: 10, 2: 46}),
    VerdictKind.DROP: VerdictPlan(VerdictKind.DROP, drop=frozenset({0})),
    VerdictKind.FORWARD: VerdictPlan(VerdictKind.FORWARD, ports={0: 3, 1: 4, 2: 5}),
}


def trained_pipeline(family: str, n_classes: int, verdict: VerdictPlan, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = [FeatureDecl("ttl", 8, "ipv4.ttl"), FeatureDecl("len", 16, "ipv4.total_len"),
             FeatureDecl("proto", 8, "ipv4.protocol"), FeatureDecl("x", 5)]
    n = 240
    x = np.stack([rng.integers(0, 256, n), rng.integers(0, 1 << 16, n),
                  rng.integers(0, 256, n), rng.integers(0, 32, n)], axis=1)
    y = (x[:, 0] // 40 + x[:, 3]) % n_classes
    labels = [f"c{v}" for v in y]
    ds = make_dataset(feats, x, labels, x[:8], labels[:8], "rules")
    fam = all_families()[family]
    trained = fam.train(fam.default_params(), ds.x_train, ds.y_train, ds.n_classes, ds.widths,
                        seed)
    return lower(trained.quantised, ds.features, ds.class_labels, verdict,
                 trained.winner_to_class)


@pytest.mark.parametrize(("family", "profile"), list(itertools.product(FAMILIES,
                                                                        (TOFINO, BMV2))))
def test_every_family_keeps_the_rules(family: str, profile) -> None:
    target = SwitchTarget(profile)
    for kind, n_classes in ((VerdictKind.DSCP, 3), (VerdictKind.DROP, 3),
                            (VerdictKind.FORWARD, 3), (VerdictKind.METADATA, 11)):
        pipeline = target.prepare(trained_pipeline(family, n_classes, VERDICTS[kind]))
        text = emit_p4(pipeline, profile.arch)
        assert rule_violations(text, profile.arch) == [], (family, kind)
        # the arg-max of summed scores: differences, then a sign table or sign gateways
        if pipeline.alu:
            assert "hmn_argmax_diff();" in text or "hmn_am_sub0();" in text


@pytest.mark.parametrize("arch", ["tna", "v1model"])
def test_every_flow_feature_kind_keeps_the_rules(arch: str) -> None:
    check_rules(emit_p4(flow_pipeline(arch)[0], arch), arch)


def test_the_lint_finds_what_the_compiler_rejected() -> None:
    """Each fixture program the compiler rejected breaks a rule naming the same construct."""
    expected = {
        "iot-rf-tofino": "operators", "iot-xgb-tofino": "operators",
        "iot-gnb-tofino": "operators", "iot-cnb-tofino": "operators",
        "iot-svm-tofino": "operators", "iot-kmeans-tofino": "operators",
        "anomaly-tofino": "operators", "botnet-tofino": "clock is read outside",
        "traffic-tofino": "clock is read outside", "gateway-field-compare": "compares two fields",
    }
    for name, what in expected.items():
        found = rule_violations((FIXTURES / name / "program.p4").read_text(), "tna")
        assert any(what in v for v in found), (name, found)
    # the accepted program broke no rejection rule: only the verdict's extra stage
    dt = rule_violations((FIXTURES / "iot-dt-tofino" / "program.p4").read_text(), "tna")
    assert dt == ["the verdict is read from metadata after its table (act in its actions)"]


@pytest.mark.parametrize("profile", [TOFINO, BMV2])
def test_unclassified_packets_leave_on_the_default_port(profile) -> None:
    """Regression (fixture bmv2 run logs): the default port must not be one class's port."""
    verdict = VerdictPlan(VerdictKind.FORWARD, default_port=7, ports={0: 3, 1: 4, 2: 5})
    for family in ("dt", "gnb"):
        pipeline = SwitchTarget(profile).prepare(trained_pipeline(family, 3, verdict))
        text = emit_p4(pipeline, profile.arch)
        port = "ig_tm_md.ucast_egress_port" if profile.arch == "tna" else \
            "standard_metadata.egress_spec"
        apply = text[text.index("apply {", text.index("control MyIngress(")):]
        first = re.search(re.escape(port) + r" = (\w+);", apply)
        assert first is not None and first.group(1) == "9w7"
        assert pipeline.default_port == 7
        assert {e.params[1] for e in pipeline.verdict.entries} <= {3, 4, 5}
