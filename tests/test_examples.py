"""The bundled example specs stay runnable (with a tiny budget) and verified."""

from __future__ import annotations

import pytest

from homunculus.compile import CompileOptions, compile_plan
from homunculus.frontend.yaml_spec import plan_from_yaml

from conftest import ROOT


@pytest.mark.parametrize("spec,trials", [("iot/spec.yaml", 3), ("anomaly/spec.yaml", 3),
                                         ("botnet/spec.yaml", 10), ("traffic/spec.yaml", 3)])
def test_example_compiles_and_verifies(tmp_path, spec, trials) -> None:
    plan = plan_from_yaml(ROOT / "examples" / spec)
    result = compile_plan(plan, CompileOptions(tmp_path / "out", trials=trials, progress=False))
    assert result.metrics["agreement"] == 1.0
    sim = result.report.get("packet_simulation")
    if sim is not None:
        assert sim["agreement"] == 1.0
