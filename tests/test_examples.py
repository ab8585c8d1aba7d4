"""The bundled example specs stay runnable (with a tiny budget) and verified."""

from __future__ import annotations

import pytest

from homunculus.compile import CompileOptions, compile_plan
from homunculus.frontend.yaml_spec import plan_from_yaml

from conftest import ROOT


@pytest.mark.parametrize("spec", ["iot/spec.yaml", "anomaly/spec.yaml", "botnet/spec.yaml",
                                  "traffic/spec.yaml"])
def test_example_compiles_and_verifies(tmp_path, spec) -> None:
    plan = plan_from_yaml(ROOT / "examples" / spec)
    result = compile_plan(plan, CompileOptions(tmp_path / "out", trials=3, progress=False))
    assert result.metrics["agreement"] == 1.0
    sim = result.report.get("packet_simulation")
    if sim is not None:
        assert sim["agreement"] == 1.0
