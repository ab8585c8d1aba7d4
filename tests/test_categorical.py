"""Categorical features: the learned exact-match table with a model for the rest, on every target
(P4 exact tables, C arrays and binary search, XDP sorted arrays in the maps), the server/client
port features, the design space and the spec errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from homunculus.compile import CompileOptions, compile_plan
from homunculus.data.dataset import FeatureDecl, make_dataset
from homunculus.errors import SpecError
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.ir.pipeline import MatchKind, VerdictKind, VerdictPlan
from homunculus.models.base import get_family
from homunculus.models.categorical import CAT_FEATURE, CAT_SUPPORT, CAT_TABLE, learn_table
from homunculus.search.problem import evaluate, make_problem
from homunculus.search.study import table_space
from homunculus.targets.registry import make_target

from conftest import write_spec


def test_table_keeps_values_seen_in_enough_groups_with_their_majority() -> None:
    column = np.array([80, 80, 80, 443, 443, 443, 53, 53, 9, 9, 9, 9])
    y = np.array([0, 0, 1, 2, 2, 2, 1, 0, 1, 1, 1, 1])
    groups = np.array([0, 1, 2, 0, 1, 1, 0, 1, 5, 5, 5, 5])  # port 9: many rows, one capture
    table = learn_table(column, y, groups, 0, 3, size=8, support=2)
    assert table.values == (53, 80, 443) and table.classes == (0, 0, 2)  # 53: a tie -> class 0
    assert learn_table(column, y, groups, 0, 3, size=1, support=1).values == (80,)
    assert learn_table(column, y, None, 0, 3, size=1, support=1).values == (9,)  # rows decide
    hit, classes = table.lookup(np.array([[443], [9], [80]]))
    assert hit.tolist() == [True, False, True] and classes[[0, 2]].tolist() == [2, 0]


def test_table_class_is_the_majority_of_groups_not_of_rows() -> None:
    # port 80: one long capture (group 0) of class 2, three short ones of class 1
    column = np.array([80] * 10 + [80, 80, 80, 443, 443])
    y = np.array([2] * 10 + [1, 1, 1, 0, 0])
    groups = np.array([0] * 10 + [1, 2, 3, 0, 1])
    assert learn_table(column, y, groups, 0, 3, size=8, support=1).classes == (1, 0)
    assert learn_table(column, y, None, 0, 3, size=8, support=1).classes == (2, 0)  # rows
    # a group's vote is shared among its rows' classes: class 1 has 4 rows of 7 but
    # 0.75 + 0.5 = 1.25 votes, class 2 has 0.25 + 0.5 + 1 = 1.75
    column = np.full(7, 7)
    y = np.array([1, 1, 1, 2, 1, 2, 2])
    groups = np.array([0, 0, 0, 0, 1, 1, 2])
    assert learn_table(column, y, groups, 0, 3, size=8, support=1).classes == (2,)
    assert learn_table(column, y, None, 0, 3, size=8, support=1).classes == (1,)


def categorical_dataset(n: int = 900, seed: int = 0, wide: bool = False):
    """A 'service' feature whose frequent values decide the class, with rare values left to a
    numeric feature; ``wide``: the service is a 20-bit code (binary search on C)."""
    rng = np.random.default_rng(seed)
    width = 20 if wide else 16
    common = rng.choice(1 << width, 12, replace=False)
    service = np.where(rng.random(n) < 0.7, rng.choice(common, n), rng.integers(0, 1 << width, n))
    size = rng.integers(0, 256, n)
    y = np.where(np.isin(service, common), np.searchsorted(np.sort(common), service) % 3,
                 (size > 128).astype(int) + 1)
    labels = np.array([f"c{v}" for v in y])
    x = np.stack([service, size], axis=1)
    feats = [FeatureDecl("service", width, categorical=True), FeatureDecl("size", 8)]
    cut = int(n * 0.7)
    return make_dataset(feats, x[:cut], labels[:cut], x[cut:], labels[cut:], "categorical")


TARGETS = ["tofino", "bmv2", "c", "xdp"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("wide", [False, True])
def test_hybrid_agrees_on_every_target(tmp_path, target, wide) -> None:
    ds = categorical_dataset(wide=wide)
    tgt, limits = make_target(target, {})
    verdict = VerdictPlan(VerdictKind.DSCP, 1, dscp={0: 10, 2: 46})
    problem = make_problem(ds, tgt, limits, "f1_macro", None, verdict, 0)
    for family in ("dt", "gnb") if target != "xdp" or not wide else ("dt",):
        params = {**get_family(family).minimal_params(), CAT_TABLE: 16, CAT_FEATURE: "service",
                  CAT_SUPPORT: 1}
        ev = evaluate(problem, family, params)
        table = ev.trained.shortcut
        assert table is not None and 8 <= len(table) <= 16
        out = tmp_path / f"{family}-{wide}"
        ev.problem.target.emit(ev.pipeline, out, "prog")
        expected = ev.trained.predict_quantised(ds.x_test)
        produced = ev.problem.target.run_twin(ev.pipeline, out, ds.x_test)
        assert (produced.class_index == expected).all()
        hit, _ = table.lookup(ds.x_test)
        assert 0.3 < hit.mean() < 0.95  # both the table and the model decide test rows
        marked = produced.fields["verdict_mark"]  # the table's hits carry their class's verdict
        assert (marked == np.isin(expected, [0, 2])).all()
        without = evaluate(problem, family, get_family(family).minimal_params())
        assert ev.metric > without.metric  # the table is worth having on this data
        assert ev.usage.entries > 0


def test_switch_program_has_an_exact_table_and_the_deciding_table_applies_it(tmp_path) -> None:
    ds = categorical_dataset()
    tgt, limits = make_target("tofino", {})
    problem = make_problem(ds, tgt, limits, "f1_macro", None, VerdictPlan(), 0)
    params = {**get_family("xgb").minimal_params(), CAT_TABLE: 16, CAT_FEATURE: "service",
              CAT_SUPPORT: 1}
    ev = evaluate(problem, "xgb", params)
    pipeline = ev.pipeline
    (cat,) = [t for t in pipeline.encoders if t.name.startswith("cat")]
    assert cat.kinds == (MatchKind.EXACT,) and len(cat.entries) == len(ev.trained.shortcut)
    assert pipeline.verdict.keys[-1].name == "cat_code"
    ev.problem.target.emit(pipeline, tmp_path, "prog")
    p4 = (tmp_path / "p4" / "prog.p4").read_text()
    assert "meta.cat_code: ternary;" in p4 and "_service: exact;" in p4
    stages = {op for s in ev.usage.per_stage for op in s.tables}
    assert cat.name in stages
    sram = next(s for s in ev.usage.per_stage if cat.name in s.tables).sram_bits
    assert sram > 0
    entries = json.loads((tmp_path / "runtime" / "entries.json").read_text())
    (installed,) = [t for t in entries["tables"] if t["table"].endswith("." + cat.name)]
    assert len(installed["entries"]) == len(cat.entries)


def test_design_space_offers_tables_up_to_the_limit() -> None:
    ds = categorical_dataset()
    tgt, limits = make_target("tofino", {})
    problem = make_problem(ds, tgt, limits.merged({"entries": 100}), "f1_macro", None,
                           VerdictPlan(), 0)
    space = table_space(problem)
    assert space.features == ("service",) and space.sizes == (0, 16, 64)
    assert space.defaults()[CAT_TABLE] == 64
    plain = replace(ds, features=tuple(replace(f, categorical=False) for f in ds.features))
    assert not table_space(replace(problem, dataset=plain)).active


CAT_SPEC = """\
name: cat-test
data:
  path: {data}
  label: label
  group: {group}
  features:
    - {{name: service, width: {width}, categorical: true}}
    - {{name: size, width: 8}}
model:
  name: m
  algorithms: [dt]
platform:
  target: {target}
  constraints:
    resources: {{entries: {entries}}}
search: {{trials: {trials}, seed: 0}}
"""


def write_categorical(tmp_path, n: int = 900, groups: int = 30):
    ds = categorical_dataset(n)
    x = np.vstack([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    frame = pd.DataFrame({"service": x[:, 0], "size": x[:, 1],
                          "label": [ds.class_labels[v] for v in y],
                          "capture": np.arange(len(y)) % groups})
    path = tmp_path / "cat.csv"
    frame.to_csv(path, index=False)
    return path


def test_compile_with_a_categorical_feature_and_groups(tmp_path) -> None:
    data = write_categorical(tmp_path)
    spec = write_spec(tmp_path / "s.yaml", CAT_SPEC.format(
        data=data, group="capture", width=16, target="tofino", entries=4000, trials=4))
    result = compile_plan(plan_from_yaml(spec), CompileOptions(tmp_path / "out", progress=False))
    report = result.report
    assert "grouped by capture" in report["metrics"]["cv"]["scheme"]
    table = report["category_table"]
    assert table is not None and table["feature"] == "service" and table["entries"] > 0
    assert report["metrics"]["agreement"] == 1.0 and report["metrics"]["pipeline"] > 0.9
    model = json.loads((tmp_path / "out" / "model" / "quantised.json").read_text())
    assert model["category_table"]["values"] and model["features"][0]["categorical"]


def test_categorical_spec_errors(tmp_path) -> None:
    data = write_categorical(tmp_path)
    wide = write_spec(tmp_path / "w.yaml", CAT_SPEC.format(
        data=data, group="capture", width=18, target="tofino", entries=4000, trials=1))
    with pytest.raises(SpecError) as err:
        compile_plan(plan_from_yaml(wide), CompileOptions(tmp_path / "o1", progress=False))
    assert "data.features[0].width" in str(err.value) and "w.yaml:" in str(err.value)
    assert "need 16" in str(err.value)
    many = write_spec(tmp_path / "m.yaml", CAT_SPEC.format(
        data=data, group="capture", width=16, target="tofino", entries=20, trials=1))
    with pytest.raises(SpecError) as err:
        compile_plan(plan_from_yaml(many), CompileOptions(tmp_path / "o2", progress=False))
    assert "data.features[0].categorical" in str(err.value) and "m.yaml:7" in str(err.value)
    assert "distinct values" in str(err.value) and "resources.entries" in str(err.value)
    missing = write_spec(tmp_path / "g.yaml", CAT_SPEC.format(
        data=data, group="flow_id", width=16, target="tofino", entries=4000, trials=1))
    with pytest.raises(SpecError) as err:
        compile_plan(plan_from_yaml(missing), CompileOptions(tmp_path / "o3", progress=False))
    assert "data.group" in str(err.value) and "g.yaml:5" in str(err.value)
    assert "flow_id" in str(err.value)
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())


PORT_SPEC = """\
name: ports-test
traffic:
  background: {{flows: 60, seconds: 10, seed: 1}}
  labels: {{kind: attacks, scenario: anomaly, seed: 0}}
  features:
    - {{name: ip_len, kind: header, field: ipv4.total_len, width: 16}}
    - {{name: service, kind: server_port, width: 16}}
    - {{name: client, kind: client_port, width: 16, categorical: false}}
    - {{name: pkts, kind: pkt_count, width: 8}}
  flow: {{slots: 256}}
model:
  name: m
  algorithms: [dt]
platform:
  target: {target}
search: {{trials: 3, seed: 0}}
"""


@pytest.mark.parametrize("target", ["tofino", "bmv2", "xdp"])
def test_server_port_feature_through_the_whole_data_plane(tmp_path, target) -> None:
    spec = write_spec(tmp_path / "p.yaml", PORT_SPEC.format(target=target))
    plan = plan_from_yaml(spec)
    ds = plan.load_data()
    assert [f.categorical for f in ds.features] == [False, True, False, False]
    assert (ds.x_train[:, 1] <= ds.x_train[:, 2]).all()  # server <= client port
    result = compile_plan(plan, CompileOptions(tmp_path / "out", progress=False))
    sim = result.report["packet_simulation"]  # every packet of the capture, through the program
    assert sim["agreement"] == 1.0 and sim["classified"] > 100


def test_generated_port_pair_block_computes_both_ports() -> None:
    from test_p4_flow_codegen import _translate

    from homunculus.ir.pipeline import FeatureInput, Field
    from homunculus.passes.lower import lower
    from homunculus.targets.p4.codegen import emit_p4

    ds = categorical_dataset()
    feats = (FeatureDecl("sp", 16, "l4.server_port"), FeatureDecl("cp", 16, "l4.client_port"))
    ds = replace(ds, features=feats)
    model = get_family("dt").train(get_family("dt").minimal_params(), ds.x_train, ds.y_train,
                                   ds.n_classes, ds.widths, 0)
    pipeline = lower(model.quantised, ds.features, ds.class_labels, VerdictPlan())
    assert pipeline.features[0] == FeatureInput("sp", Field("f_sp", 16), "l4.server_port")
    for arch in ("tna", "v1model"):
        text = emit_p4(pipeline, arch)
        start = text.index("// Server (smaller)")
        end = text.index(".apply();", start)
        block = text[start:text.rindex("\n", 0, end)]
        widths = {"hmn_port_a": 17, "hmn_port_b": 17, "hmn_port_d": 17, "f_sp": 16, "f_cp": 16}
        code = compile("\n".join(_translate(block, widths)), "ports", "exec")
        rng = np.random.default_rng(1)
        for a, b, proto in [(80, 51000, "tcp"), (51000, 443, "udp"), (7, 7, "tcp"),
                            (65535, 0, "udp"), (3, 9, "icmp"),
                            *[(int(p), int(q), "tcp") for p, q in rng.integers(0, 65536, (50, 2))]]:
            headers = {"tcp.valid": int(proto == "tcp"), "udp.valid": int(proto == "udp"),
                       **{f"{h}.{side}_port": v for h in ("tcp", "udp")
                          for side, v in (("src", a), ("dst", b))}}
            meta = dict.fromkeys(widths, 0)
            exec(code, {"M": meta, "H": headers})
            expected = (min(a, b), max(a, b)) if proto != "icmp" else (0, 0)
            assert (meta["f_sp"], meta["f_cp"]) == expected, (arch, a, b, proto)
