"""The Alchemy-style Python frontend and the CLI running a script."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from homunculus.alchemy import DataLoader, Feature, Model, Platforms, Schedule, Verdict, generate
from homunculus.cli import app
from homunculus.errors import DataError, SpecError

from conftest import EXAMPLE_DIR, ROOT

runner = CliRunner()


def make_loader(x_train, y_train, x_test, y_test):
    @DataLoader(features=[Feature("a", 8, field="ipv4.ttl"), Feature("b", 16)])
    def load():
        return x_train, y_train, x_test, y_test

    return load


def toy():
    rng = np.random.default_rng(0)
    x = np.stack([rng.integers(0, 256, 300), rng.integers(0, 65536, 300)], 1)
    y = np.where(x[:, 0] > 128, "attack", "benign")
    return x[:200], y[:200], x[200:], y[200:]


def test_generate_compiles_a_python_spec(tmp_path) -> None:
    model = Model("toy", data=make_loader(*toy()), metric="recall", class_of_interest="attack",
                  algorithms=["dt"], verdict=Verdict.drop(["attack"]))
    bm = Platforms.BMv2()
    bm.constrain(resources={"entries": 500})
    bm.schedule(model)
    result = generate(bm, tmp_path / "out", trials=3, progress=False)
    assert result.metrics["agreement"] == 1.0 and result.metrics["pipeline"] > 0.9
    cli = (tmp_path / "out/runtime/simple_switch_cli.txt").read_text()
    assert "table_add" in cli and "MyIngress.verdict" in cli


def test_schedule_operators_build_schedules_and_reject_a_model_used_twice(tmp_path):
    load = make_loader(*toy())
    m1, m2, m3 = (Model(n, data=load) for n in ("m1", "m2", "m3"))
    seq = m1 > m2
    par = m1 | m2
    nested = (m1 > m2) | m3
    assert isinstance(seq, Schedule) and seq.op == ">" and par.op == "|"
    assert [m.spec.name for m in nested.models()] == ["m1", "m2", "m3"]
    tofino = Platforms.Tofino()
    tofino.schedule(m1 > m2 | m1)
    with pytest.raises(SpecError, match="used twice") as exc:
        generate(tofino, tmp_path / "out", trials=2, progress=False)
    assert exc.value.field == "schedule" and exc.value.line is not None
    assert not (tmp_path / "out").exists()


def test_errors_point_at_the_script_line() -> None:
    with pytest.raises(SpecError) as exc:
        Model("m", data=make_loader(*toy()), metric="auc")
    assert exc.value.file == __file__ and exc.value.field == "metric"
    assert exc.value.line is not None
    with pytest.raises(SpecError) as exc:
        Platforms.Tofino().constrain(resources={"stages": 0})
    assert exc.value.field == "constrain.resources.stages" and exc.value.file == __file__


def test_loader_output_is_validated(tmp_path) -> None:
    x_train, y_train, x_test, y_test = toy()
    x_train = x_train.copy()
    x_train[3, 1] = 70000  # beyond 16 bits
    model = Model("m", data=make_loader(x_train, y_train, x_test, y_test), algorithms=["dt"])
    tofino = Platforms.Tofino()
    tofino.schedule(model)
    with pytest.raises(DataError, match="'b' = 70000.0 in row 3"):
        generate(tofino, tmp_path / "out", trials=2, progress=False)


def test_cli_runs_the_bundled_python_example(tmp_path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(EXAMPLE_DIR / "compile_iot.py"), "-o", str(out),
                                 "--trials", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["agreement"] == 1.0 and len(report["trials"]) == 3
    assert not (ROOT / "out").exists() or (ROOT / "out").stat()  # the source tree is untouched


def test_platform_profile_overrides_from_python(tmp_path) -> None:
    model = Model("toy", data=make_loader(*toy()), algorithms=["dt"])
    small = Platforms.Tofino(stages=1)
    small.schedule(model)
    from homunculus.errors import InfeasibleError

    with pytest.raises(InfeasibleError, match=r"stages \d > limit 1"):
        generate(small, tmp_path / "out", trials=2, progress=False)
