"""Schedules of several models on one device: semantics, fusion, joint allocation, frontends."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_switch_rules import trained_pipeline
from typer.testing import CliRunner

from homunculus.alchemy import DataLoader, Feature, Model, Platforms, Verdict, generate
from homunculus.cli import app
from homunculus.errors import SpecError
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.ir.pipeline import VerdictKind, VerdictPlan
from homunculus.schedule.expr import (
    Par,
    Ref,
    ScheduleError,
    ScheduleSyntaxError,
    Seq,
    check_schedule,
    parse_schedule,
    priority,
    to_text,
)
from homunculus.schedule.fuse import Part, fuse, model_classes
from homunculus.schedule.joint import Variant, pareto, select, solve
from homunculus.schedule.policy import ModelVerdicts, Policy, bind_gates, evaluate
from homunculus.targets.p4 import emit_p4, runtime_entries
from homunculus.targets.p4.check import check_program
from homunculus.targets.p4.profiles import TOFINO
from homunculus.targets.p4.rules import check_rules
from homunculus.targets.p4.target import SwitchTarget
from homunculus.targets.p4.twin import simulate

runner = CliRunner()

# ----------------------------------------------------------------------------- the expression


def test_precedence_grouping_and_round_trip() -> None:
    node = parse_schedule("ad[benign] > tc | bd")
    assert node == Seq(Ref("ad", ("benign",), 1), Par((Ref("tc", None, 14),
                                                        Ref("bd", None, 19))))
    assert parse_schedule("a > b > c") == Seq(Seq(Ref("a", None, 1), Ref("b", None, 5)),
                                              Ref("c", None, 9))
    for text in ("ad[benign] > (tc | bd)", "(a | b) > c", "a > (b > c)", "a | b | c",
                 'a["port scan", x] > b'):
        node = parse_schedule(text)
        again = parse_schedule(to_text(node))
        assert to_text(again) == to_text(node)
    assert priority(parse_schedule("ad > tc | bd")) == ["tc", "bd", "ad"]


@pytest.mark.parametrize(("text", "column"), [("a >", 4), ("a | | b", 5), ("a[", 3),
                                              ("a b", 3), ("(a", 3), ("a $ b", 3), ("", 1)])
def test_syntax_errors_name_the_column(text: str, column: int) -> None:
    with pytest.raises(ScheduleSyntaxError) as exc:
        parse_schedule(text)
    assert exc.value.column == column


@pytest.mark.parametrize(("text", "uses", "message"), [
    ("a > c", None, "'c' is not a model"),
    ("a > b > a", None, "used twice"),
    ("a", None, "not in the schedule"),
    ("a > b[x]", None, "never acts"),
    ("a[x] | b", None, "never acts"),
    ("a | b", {"b": ["a"]}, "does not run before it"),
    ("a > b", {"a": ["b"], "b": ["a"]}, "cycle"),
])
def test_bad_schedules(text: str, uses, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        check_schedule(parse_schedule(text), ["a", "b"], uses)


def test_python_operators_build_the_yaml_expression() -> None:
    @DataLoader(features=[Feature("x", 8, field="ipv4.ttl")])
    def load():
        return np.zeros((4, 1)), ["p", "q", "p", "q"], np.zeros((2, 1)), ["p", "q"]

    ad, tc, bd = (Model(n, data=load) for n in ("ad", "tc", "bd"))
    strip = _strip_columns
    assert strip((ad["benign"] > tc | bd).node()) == strip(parse_schedule(
        "ad[benign] > (tc | bd)"))
    assert strip(((ad > tc) > bd).node()) == strip(parse_schedule("ad > tc > bd"))
    with pytest.raises(SpecError, match="chained comparison") as exc:
        _ = ad > tc > bd
    assert exc.value.line is not None and exc.value.file.endswith("test_schedule.py")
    tofino = Platforms.Tofino()
    with pytest.raises(SpecError, match="only acts on the left"):
        tofino.schedule(ad["benign"])


def _strip_columns(node):
    if isinstance(node, Ref):
        return Ref(node.name, node.gate)
    if isinstance(node, Par):
        return Par(tuple(_strip_columns(p) for p in node.parts))
    return Seq(_strip_columns(node.first), _strip_columns(node.then))


# ----------------------------------------------------------------------------- the policy


DROP_1 = VerdictPlan(VerdictKind.DROP, drop=frozenset({1}))
MARK = VerdictPlan(VerdictKind.DSCP, dscp={1: 10, 2: 46})
PORTS = VerdictPlan(VerdictKind.FORWARD, ports={1: 7})


def test_policies_by_hand() -> None:
    verdicts = {"ad": ModelVerdicts.of(DROP_1, 2), "tc": ModelVerdicts.of(MARK, 3),
                "bd": ModelVerdicts.of(PORTS, 2)}
    node = bind_gates(parse_schedule("ad[0] > tc | bd"), verdicts)
    classes = {"ad": np.array([0, 0, 0, 1, 0]), "tc": np.array([0, 1, 2, 2, 2]),
               "bd": np.array([0, 0, 1, 1, 1])}
    severity = evaluate(node, classes, verdicts, Policy("severity", ("tc", "bd", "ad"), 3))
    assert severity.ran["tc"].tolist() == [True, True, True, False, True]
    assert severity.classes["tc"].tolist() == [0, 1, 2, -1, 2]
    assert severity.drop.tolist() == [0, 0, 0, 1, 0]
    assert severity.mark.tolist() == [0, 1, 1, 0, 1]
    assert severity.dscp.tolist() == [0, 10, 46, 0, 46]
    assert severity.port.tolist() == [3, 3, 7, 3, 7]
    # priority: the first model in the order that ran decides everything
    first = evaluate(node, classes, verdicts, Policy("priority", ("bd", "tc", "ad"), 3))
    assert first.port.tolist() == [3, 3, 7, 3, 7]
    assert first.mark.tolist() == [0, 0, 0, 0, 0]  # bd decides where it ran: no mark
    assert first.drop.tolist() == [0, 0, 0, 1, 0]  # ad decides where bd did not run
    # without a gate a model passes the packets its verdict does not drop
    plain = bind_gates(parse_schedule("ad > tc"), verdicts)
    out = evaluate(plain, {"ad": np.array([0, 1]), "tc": np.array([1, 1])},
                   verdicts, Policy("severity", ("tc", "ad"), 1))
    assert out.ran["tc"].tolist() == [True, False]


# ----------------------------------------------------------------------------- fusion + twin

FEATURES = np.random.default_rng(5).integers(0, [256, 1 << 16, 256, 32], (600, 4))


def _parts(families=("dt", "gnb", "rf")):
    target = SwitchTarget(TOFINO)
    plans = (("ad", 2, DROP_1), ("tc", 3, MARK), ("bd", 2, PORTS))
    out = []
    for seed, ((name, n, verdict), family) in enumerate(zip(plans, families, strict=True)):
        pipeline = target.prepare(trained_pipeline(family, n, verdict, seed))
        out.append(Part(name, pipeline, tuple(f"c{i}" for i in range(n)),
                        ModelVerdicts.of(verdict, n)))
    return out


@pytest.mark.parametrize("families", [("dt", "gnb", "rf"), ("xgb", "svm", "kmeans")])
def test_the_fused_twin_runs_gates_and_combines_verdicts(families) -> None:
    parts = _parts(families)
    node = bind_gates(parse_schedule("ad[0] > tc | bd"), {})
    fused = fuse(parts, node, Policy("severity", ("tc", "bd", "ad"), 3))
    result = simulate(fused.pipeline, FEATURES)
    got = model_classes(fused, result.fields)
    alone = {p.name: simulate(p.pipeline, FEATURES).class_index for p in parts}
    for name in alone:  # every model is computed on every packet, as alone
        assert (got[name] == alone[name]).all()
    attack = alone["ad"] == 1
    assert attack.any() and (~attack).any()
    f = result.fields
    # ad drops its class 1; then tc and bd do not run: nothing else applies
    assert (f["verdict_drop"][attack] == 1).all()
    assert (f["verdict_mark"][attack] == 0).all() and (f["verdict_port"][attack] == 3).all()
    benign = ~attack
    tc, bd = alone["tc"][benign], alone["bd"][benign]
    assert (f["verdict_drop"][benign] == 0).all()
    assert (f["verdict_mark"][benign] == (tc != 0)).all()
    assert (f["verdict_dscp"][benign] == np.select([tc == 1, tc == 2], [10, 46], 0)).all()
    assert (f["verdict_port"][benign] == np.where(bd == 1, 7, 3)).all()
    for arch in ("tna", "v1model"):
        text = emit_p4(fused.pipeline, arch, program_name="sched")
        check_rules(text, arch)
        check_program(text, runtime_entries(fused.pipeline, program_name="sched", arch=arch),
                      flow=fused.pipeline.flow)
        assert "table combine" in text and "m_ad_decide.apply()" in text


def test_a_model_reads_an_upstream_class() -> None:
    """tc's fourth feature is ad's class: the fused program feeds ad's decision into tc."""
    target = SwitchTarget(TOFINO)
    ad = target.prepare(trained_pipeline("dt", 2, DROP_1, 0))
    rng = np.random.default_rng(1)
    from homunculus.data.dataset import FeatureDecl, make_dataset
    from homunculus.models.base import get_family
    from homunculus.passes.lower import lower

    x = np.column_stack([rng.integers(0, 256, 300), rng.integers(0, 2, 300)])
    y = np.where(x[:, 1] == 1, "up", np.where(x[:, 0] > 99, "hi", "lo"))
    feats = [FeatureDecl("ttl", 8, "ipv4.ttl"), FeatureDecl("ad_class", 1)]
    ds = make_dataset(feats, x, y, x[:5], y[:5], "t")
    fam = get_family("dt")
    trained = fam.train(fam.minimal_params() | {"dt_max_depth": 4}, ds.x_train, ds.y_train,
                        ds.n_classes, ds.widths, 0)
    tc = target.prepare(lower(trained.quantised, ds.features, ds.class_labels, MARK))
    parts = [Part("ad", ad, ("c0", "c1"), ModelVerdicts.of(DROP_1, 2)),
             Part("tc", tc, ds.class_labels, ModelVerdicts.of(MARK, 3), upstream={1: "ad"})]
    node = bind_gates(parse_schedule("ad > tc"), {})
    fused = fuse(parts, node, Policy("severity", ("tc", "ad"), 1))
    assert [f.name for f in fused.pipeline.features] == ["ttl", "len", "proto", "x"]
    result = simulate(fused.pipeline, FEATURES)
    got = model_classes(fused, result.fields)
    ad_class = simulate(ad, FEATURES).class_index
    want = trained.predict_quantised(np.column_stack([FEATURES[:, 0], ad_class]))
    assert (got["ad"] == ad_class).all() and (got["tc"] == want).all()
    assert len(set(want.tolist())) > 1


def test_fusion_shares_identical_encoders_and_features() -> None:
    target = SwitchTarget(TOFINO)
    same = target.prepare(trained_pipeline("rf", 2, DROP_1, 0))
    parts = [Part("a", same, ("c0", "c1"), ModelVerdicts.of(DROP_1, 2)),
             Part("b", same, ("c0", "c1"), ModelVerdicts.of(DROP_1, 2))]
    node = bind_gates(parse_schedule("a | b"), {})
    fused = fuse(parts, node, Policy("severity", ("a", "b"), 1))
    assert len(fused.pipeline.encoders) == len(same.encoders)
    assert set(fused.shared["encoders"]) == {e.name for e in fused.pipeline.encoders}
    assert set(fused.shared["features"]) == {f.name for f in same.features}
    fused_usage = target.estimate(fused.pipeline)
    alone = target.estimate(same)
    assert fused_usage.tcam_kbit < 2 * alone.tcam_kbit
    assert fused_usage.phv_bits < 2 * alone.phv_bits


def test_fusion_shares_flow_registers() -> None:
    from test_p4_flow_codegen import flow_pipeline

    target = SwitchTarget(TOFINO)
    one = target.prepare(flow_pipeline("tna")[0])
    parts = [Part("a", one, one.class_labels, ModelVerdicts.of(DROP_1, len(one.class_labels))),
             Part("b", one, one.class_labels, ModelVerdicts.of(MARK, len(one.class_labels)))]
    node = bind_gates(parse_schedule("a > b"), {})
    fused = fuse(parts, node, Policy("severity", ("b", "a"), 1))
    registers = {r.name for r in one.flow.registers}
    assert set(fused.shared["flow_registers"]) == registers
    assert {r.name for r in fused.pipeline.flow.registers} == registers
    text = emit_p4(fused.pipeline, "tna", program_name="sched")
    check_rules(text, "tna")
    from homunculus.targets.p4.units import program_units

    salus = sum(u.salus for u in program_units(fused.pipeline, TOFINO))
    assert salus == sum(u.salus for u in program_units(one, TOFINO))


# ----------------------------------------------------------------------------- joint allocation


def _v(model: str, metric: float, tcam: float, trial: int = 0) -> Variant:
    return Variant(model, trial, "dt", {}, metric, {"tcam": tcam})


def test_integer_program_on_a_small_front_by_hand() -> None:
    fronts = {"a": [_v("a", .9, 8), _v("a", .8, 4), _v("a", .5, 1)],
              "b": [_v("b", .95, 8), _v("b", .7, 3), _v("b", .6, 2)]}
    weights = {"a": 1.0, "b": 1.0}
    # 10 blocks: a.9+b.6 and a.8+b.7 both reach 1.5; the second uses less (7 < 10 blocks)
    assert solve(fronts, weights, {"tcam": 10}) == ({"a": 1, "b": 1}, pytest.approx(1.5))
    # 12 blocks: a.8 + b.95 = 1.75 beats a.9 + b.7 = 1.6
    assert solve(fronts, weights, {"tcam": 12})[0] == {"a": 1, "b": 0}
    # weights: b counts double -> a.5 + b.95 (2.4) beats a.8 + b.95 if only 9 blocks are free
    assert solve(fronts, {"a": 1.0, "b": 2.0}, {"tcam": 9})[0] == {"a": 2, "b": 0}
    assert solve(fronts, weights, {"tcam": 2}) is None


def test_cut_and_resolve_when_the_real_allocation_refuses() -> None:
    fronts = {"a": [_v("a", .9, 8), _v("a", .8, 4)], "b": [_v("b", .95, 8), _v("b", .7, 3)]}
    refused = {"a": 1, "b": 0}
    sel = select(fronts, {"a": 1, "b": 1}, {"tcam": 12},
                 lambda c: (c != refused, None if c != refused else "13 stages > 12"))
    assert [r.choice for r in sel.rounds] == [refused, {"a": 0, "b": 1}]
    assert sel.rounds[0].reason == "13 stages > 12" and sel.chosen == {"a": 0, "b": 1}


def test_integer_program_equals_brute_force_on_random_fronts() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        fronts = {m: [Variant(m, i, "dt", {}, float(rng.random()),
                              {"x": float(rng.integers(1, 9)), "y": float(rng.integers(1, 9))})
                      for i in range(int(rng.integers(1, 5)))] for m in "abc"}
        weights = {m: float(rng.integers(1, 3)) for m in "abc"}
        cap = {"x": float(rng.integers(5, 20)), "y": float(rng.integers(5, 20))}
        best = None
        for combo in itertools.product(*(range(len(v)) for v in fronts.values())):
            choice = dict(zip(fronts, combo, strict=True))
            if all(sum(fronts[m][i].cost[k] for m, i in choice.items()) <= cap[k] for k in cap):
                value = sum(weights[m] * fronts[m][i].metric for m, i in choice.items())
                best = value if best is None else max(best, value)
        solved = solve(fronts, weights, cap)
        assert (solved is None) == (best is None)
        if solved is not None:
            assert solved[1] == pytest.approx(best, abs=1e-6)


def test_pareto_front() -> None:
    points = [(0.9, (8.0,)), (0.8, (4.0,)), (0.8, (5.0,)), (0.5, (1.0,)), (0.4, (2.0,))]
    assert pareto(points) == [0, 1, 3]


# ----------------------------------------------------------------------------- end to end


def _two_tables(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    n = 500
    frame = pd.DataFrame({"ttl": rng.integers(0, 256, n), "len": rng.integers(0, 1500, n),
                          "port": rng.integers(0, 1024, n)})
    frame["kind"] = np.where(frame.ttl > 128, "media", "other")
    frame["device"] = np.where(frame.len > 700, "cam", np.where(frame.port > 500, "tv", "hub"))
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


SCHEDULE_SPEC = """\
name: two
models:
  - name: kind
    algorithms: [dt]
    verdict: {{kind: drop, drop: [other]}}
    data:
      path: {data}
      label: kind
      features:
        - {{name: ttl, width: 8, field: ipv4.ttl}}
        - {{name: port, width: 16}}
  - name: dev
    algorithms: [dt, gnb]
    verdict: {{kind: dscp, dscp: {{cam: 34, tv: 26}}}}
    weight: 2
    data:
      path: {data}
      label: device
      features:
        - {{name: len, width: 16, field: ipv4.total_len}}
        - {{name: port, width: 16}}
        - {{name: kind_class, width: 1, model: kind}}
schedule: "{schedule}"
platform:
  target: {target}
search: {{trials: 3, seed: 0, cv_folds: 2}}
joint: {{variants: 3}}
"""


def test_a_yaml_schedule_compiles_and_verifies(tmp_path) -> None:
    data = _two_tables(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(SCHEDULE_SPEC.format(data=data, schedule="kind[media] > dev",
                                         target="tofino"))
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "kind[media] > dev" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "schedule" and report["verification"]["agreement"] == 1.0
    models = {m["name"]: m for m in report["models"]}
    assert models["dev"]["reads_class_of"] == {"kind_class": "kind"}
    assert 0 < models["dev"]["metrics"]["ran"] < 1 and models["kind"]["metrics"]["ran"] == 1
    assert sum(v["chosen"] for v in models["dev"]["variants"]) == 1
    assert report["fusion"]["shared"]["features"] == {"port": ["kind", "dev"]}
    text = (out / "p4" / "hmn_two.p4").read_text()
    check_rules(text, "tna")
    assert "table combine" in text
    doc = json.loads((out / "schedule.json").read_text())
    assert doc["schedule"] == "kind[media] > dev"
    assert {p.name for p in (out / "models").iterdir()} == {"m_kind", "m_dev"}
    assert (out / "report.html").read_text().count("<tr class=\"chosen\">") == 2


def test_a_schedule_writes_out_safely(tmp_path, monkeypatch) -> None:
    """Schedules write OUT as single models do: the user's directory is refused untouched, and
    a recompile replaces only the OUT it made (outputs.py)."""
    data = _two_tables(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(SCHEDULE_SPEC.format(data=data, schedule="kind > dev", target="tofino"))
    (tmp_path / "notes.txt").write_text("mine\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compile", "s.yaml", "-o", ".", "--no-progress"])
    assert result.exit_code == 2 and "error:" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    for _ in range(2):
        result = runner.invoke(app, ["compile", "s.yaml", "-o", "out", "--no-progress"])
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "out"])
    assert (tmp_path / "out" / ".homunculus.json").is_file()


def test_a_schedule_is_not_a_shared_search(tmp_path) -> None:
    data = _two_tables(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(SCHEDULE_SPEC.format(data=data, schedule="kind > dev", target="tofino"))
    journal = f"journal:{tmp_path / 'j.log'}"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "out"),
                                 "--no-progress", "--storage", journal, "--study", "s"])
    assert result.exit_code == 2 and "searched locally" in result.output, result.output
    result = runner.invoke(app, ["worker", str(spec), "--storage", journal, "--study", "s",
                                 "--wait", "0", "--no-progress"])
    assert result.exit_code == 2 and "one model on one platform" in result.output, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "j.log").exists()


def test_a_python_schedule_compiles(tmp_path) -> None:
    frame = pd.read_csv(_two_tables(tmp_path))

    @DataLoader(features=[Feature("ttl", 8, field="ipv4.ttl"), Feature("port", 16)])
    def load_kind():
        x, y = frame[["ttl", "port"]].to_numpy(), frame["kind"].to_numpy()
        return x[:350], y[:350], x[350:], y[350:]

    @DataLoader(features=[Feature("len", 16, field="ipv4.total_len"), Feature("port", 16)])
    def load_dev():
        x, y = frame[["len", "port"]].to_numpy(), frame["device"].to_numpy()
        return x[:350], y[:350], x[350:], y[350:]

    kind = Model("kind", data=load_kind, algorithms=["dt"], verdict=Verdict.drop(["other"]))
    dev = Model("dev", data=load_dev, algorithms=["gnb"],
                verdict=Verdict.forward({"cam": 5}))
    bmv2 = Platforms.BMv2()
    bmv2.schedule(kind | dev, policy="priority")
    result = generate(bmv2, tmp_path / "out", trials=2, progress=False)
    assert result.report["schedule"] == "kind | dev"
    assert result.report["policy"] == {"kind": "priority", "order": ["kind", "dev"],
                                       "default_port": 1}
    assert (tmp_path / "out" / "runtime" / "simple_switch_cli.txt").is_file()


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("schedule", "message"), [
    ("kind > dve", "'dve' is not a model"),
    ("kind > dev > kind", "used twice"),
    ("dev > kind", "does not run before it"),
    ("kind[media > dev", "expected ']'"),
    ("kind[nope] > dev", "names class 'nope'"),
])
def test_bad_schedules_name_file_field_and_line(tmp_path, schedule, message) -> None:
    data = _two_tables(tmp_path)
    text = SCHEDULE_SPEC.format(data=data, schedule=schedule, target="tofino")
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    result = runner.invoke(app, ["compile", str(spec), "-o", str(tmp_path / "out"),
                                 "--no-progress"])
    assert result.exit_code == 2
    assert message in result.output
    assert f"{spec}:{line_of(text, 'schedule:')}" in result.output.replace("\n", "")
    assert "field 'schedule'" in result.output
    assert not (tmp_path / "out").exists()


def test_a_class_feature_cycle_and_unknown_models_are_rejected(tmp_path) -> None:
    data = _two_tables(tmp_path)
    text = SCHEDULE_SPEC.format(data=data, schedule="kind > dev", target="tofino")
    cyclic = text.replace("        - {name: port, width: 16}\n  - name: dev",
                          "        - {name: port, width: 16}\n"
                          "        - {name: dc, width: 2, model: dev}\n  - name: dev")
    assert cyclic != text
    spec = tmp_path / "c.yaml"
    spec.write_text(cyclic)
    with pytest.raises(SpecError, match="cycle"):
        plan_from_yaml(spec)
    unknown = text.replace("model: kind}", "model: kinds}")
    spec.write_text(unknown)
    with pytest.raises(SpecError) as exc:
        plan_from_yaml(spec)
    assert exc.value.field == "models[1].data.features[2]"
    assert exc.value.line == line_of(unknown, "model: kinds")
    assert "'kinds'" in str(exc.value)
    twice = text.replace("name: dev", "name: kind")
    spec.write_text(twice)
    with pytest.raises(SpecError, match="declared more than once"):
        plan_from_yaml(spec)


def _compiled(tmp_path: Path, schedule: str, target: str, edit=lambda text: text
              ) -> tuple[Path, dict]:
    """The two-table schedule compiled for ``target`` (``edit``: a change to the spec's text):
    OUT and its report."""
    spec = tmp_path / "s.yaml"
    spec.write_text(edit(SCHEDULE_SPEC.format(data=_two_tables(tmp_path), schedule=schedule,
                                              target=target)))
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(spec), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text())


def test_a_schedule_on_the_c_target_runs_only_the_models_it_must(tmp_path) -> None:
    """On a host the models run one after the other and only when the schedule runs them."""
    import ctypes

    out, report = _compiled(tmp_path, "kind[media] > dev", "c")
    assert report["verification"]["agreement"] == 1.0 and report["fusion"] is None
    lib = ctypes.CDLL(str(next((out / "c").glob("libhmn_*.so"))))

    class Result(ctypes.Structure):
        _fields_ = [("classes", ctypes.c_int32 * 2), ("port", ctypes.c_uint32),
                    ("drop", ctypes.c_uint32), ("mark", ctypes.c_uint32),
                    ("dscp", ctypes.c_uint32)]

    kinds = report["models"][0]["class_labels"]
    r = Result()
    seen = set()
    assert lib.hmn_sched_n_features() == 3  # ttl, port (shared), len
    for ttl in range(0, 256, 8):
        row = (ctypes.c_uint32 * 3)(ttl, 100, 900)
        lib.hmn_sched_classify(row, ctypes.byref(r))
        kind = kinds[r.classes[0]]
        seen.add(kind)
        assert (r.classes[1] == -1) == (kind != "media")  # dev runs on media only
        assert r.drop == (kind == "other")  # kind drops "other"
    assert seen == {"media", "other"}


def test_a_schedule_on_xdp_runs_in_the_kernel_only_where_the_schedule_runs(tmp_path) -> None:
    """One XDP program runs both models (BPF_PROG_TEST_RUN): the gated model only on the
    packets its gate passes, every class and the combined verdict as the schedule's
    reference says."""
    import struct

    from homunculus.deploy import compiled_schedule, verdict_labels
    from homunculus.schedule import xdp
    from homunculus.targets.xdp.loader import prog_test_run
    from homunculus.targets.xdp.runner import pinned_to_one_cpu

    XDP_DROP, XDP_PASS = 1, 2

    out, report = _compiled(tmp_path, "kind[media] > dev", "xdp")
    assert report["target"] == "xdp" and report["verification"]["agreement"] == 1.0
    assert report["verification"]["rows"] > 0 and report["fusion"] is None
    source = next((out / "xdp").glob("*.bpf.c")).read_text()
    # one active-slot selector, read once per packet and passed to every model's maps
    assert source.count("&hmn_active") == 1 and "hmn0_active" not in source
    assert "hmn0_meta" in source and "hmn1_meta" in source
    kinds, devices = (report["models"][k]["class_labels"] for k in (0, 1))
    obj, doc = xdp.load_built(out)
    with obj:
        assert [m["name"] for m in doc["models"]] == ["kind", "dev"]
        rows = np.array([(ttl, 600, 900) for ttl in range(0, 256, 8)])  # ttl, port, len
        classes, verdict = xdp.run_vectors(obj, 2, rows)
    seen = set()
    for (kind, dev), (_, drop, mark, dscp) in zip(classes, verdict, strict=True):
        seen.add(kinds[kind])
        assert (dev == -1) == (kinds[kind] != "media")  # dev runs on media only
        assert drop == (kinds[kind] == "other")  # kind drops "other"
        if dev >= 0:
            expected = {"cam": 34, "tv": 26}.get(devices[dev])
            assert (mark, dscp) == ((1, expected) if expected else (0, 0))
    assert seen == {"media", "other"}
    # packets through the parser (hmn_xdp): the same classes, action and DSCP as the vectors
    with xdp.load_built(out)[0] as obj, pinned_to_one_cpu() as cpu:
        fd = obj.prog_fd("hmn_xdp")
        for (ttl, port, length), want, (_, drop, mark, dscp) in zip(rows, classes, verdict,
                                                                     strict=True):
            run = prog_test_run(fd, _schedule_frame(ttl, port, length))
            scratch = obj.map("hmn_sched").lookup(0)[cpu]
            got = struct.unpack_from("<2q", scratch, 8 * 3)  # after u[3]: cls[2]
            assert list(got) == list(want)
            assert run.retval == (XDP_DROP if drop else XDP_PASS)
            if not drop:
                assert run.data[15] >> 2 == (dscp if mark else 0)
    deployable = compiled_schedule(out)  # what deploy and push read, checked
    assert deployable is not None and len(verdict_labels(deployable["models"])) == 3 * 4


def _class_swapped(program, classes: int):
    """``program`` with its classes' order reversed (its winners' verdict rows' class column)."""
    verdict = tuple((classes - 1 - row[0], *row[1:]) for row in program.verdict)
    return dataclasses.replace(program, verdict=verdict)


def test_a_push_to_an_xdp_schedule_flips_every_model_at_once(tmp_path) -> None:
    """Every model's standby slot is written first (packets still see the old models, all of
    them), then one flip of the shared selector changes every model together."""
    from homunculus.schedule import xdp
    from homunculus.targets.xdp.layout import Capacity
    from homunculus.targets.xdp.snapshot import read_snapshot, write_slot

    out, _ = _compiled(tmp_path, "kind | dev", "xdp", lambda text: text.replace(
        "        - {name: kind_class, width: 1, model: kind}\n", ""))
    rows = np.array([(ttl, 600, length) for ttl in range(0, 256, 16)
                     for length in (100, 900)])
    obj, doc = xdp.load_built(out)
    with obj:
        before = xdp.run_vectors(obj, 2, rows)[0]
        old = [read_snapshot(m["snapshot"]) for m in doc["models"]]
        sizes = [len(m["labels"]) for m in doc["models"]]
        new = [_class_swapped(p, n) for (p, _), n in zip(old, sizes, strict=True)]
        write_slot(xdp.Prefixed(obj, "hmn0_"), new[0], old[0][1], 1)  # one standby slot only
        assert (xdp.run_vectors(obj, 2, rows)[0] == before).all()  # no packet sees a mix
        assert xdp.push(obj, new, [c for _, c in old], grace_s=0) == 1
        after = xdp.run_vectors(obj, 2, rows)[0]
        assert (after == np.array(sizes) - 1 - before).all()  # both models, together
        assert len(set(before[:, 0])) == 2 and len(set(before[:, 1])) > 1
        assert xdp.push(obj, [p for p, _ in old], [c for _, c in old], grace_s=0) == 0
        assert (xdp.run_vectors(obj, 2, rows)[0] == before).all()
        small = Capacity.from_json(old[0][1].as_json() | {"trees": 0})
        with pytest.raises(xdp.SnapshotError):  # does not fit: nothing written, no flip
            xdp.push(obj, new, [small, old[1][1]], grace_s=0)
        assert (xdp.run_vectors(obj, 2, rows)[0] == before).all()


def _schedule_frame(ttl: int, port: int, length: int) -> bytes:
    """An IPv4/UDP frame with ``ttl`` and total length ``length``, carrying ``port`` in the
    feature header (UDP port 0x4D4C: the features bound to no header field, bit-packed)."""
    from homunculus.targets.xdp.runner import packet_frame

    row = {"ip_src": 0x0A000001, "ip_dst": 0x0A000002, "eth_type": 0x0800, "has_ipv4": True,
           "ip_ihl": 5, "ip_proto": 17, "ip_total_len": length, "ip_diffserv": 0, "ip_id": 1,
           "ip_frag_offset": 0, "ip_ttl": ttl, "has_tcp": False, "has_udp": True,
           "src_port": 1234, "dst_port": 0x4D4C, "udp_len": 10, "wire_len": 0}
    frame = packet_frame(row)
    return frame[:42] + int(port).to_bytes(2, "big") + frame[44:]
