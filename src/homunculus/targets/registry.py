"""Target names -> backends, with their profiles' documented defaults and limits."""

from __future__ import annotations

from typing import Any

from homunculus.targets.base import Limits, Target

SWITCHES = ("tofino", "bmv2")
KERNEL = ("xdp", "c")
TARGETS = SWITCHES + KERNEL
UNIT_NS = {"tofino": 1024, "bmv2": 1000, "xdp": 1000, "c": 1000}  # the data plane's clock


def make_target(name: str, overrides: dict[str, Any]) -> tuple[Target, Limits]:
    """The backend for ``name`` with profile overrides, and the limits its profile implies.

    Raises KeyError (unknown target or profile field) with a message listing what is known.
    """
    if name in SWITCHES:
        from homunculus.targets.p4.profiles import PROFILES
        from homunculus.targets.p4.target import SwitchTarget

        profile = PROFILES[name].with_overrides(overrides)
        return SwitchTarget(profile), profile.default_limits()
    if name == "c":
        from homunculus.targets.c.target import CTarget

        target = CTarget.with_overrides(overrides)
        return target, target.default_limits()
    if name == "xdp":
        from homunculus.targets.xdp.target import XdpTarget

        target = XdpTarget.with_overrides(overrides)
        return target, target.default_limits()
    raise KeyError(f"unknown target '{name}'; known: {list(TARGETS)}")


def with_adapt(target: Target, adapt: Any) -> Target:
    """``target`` compiled for adaptation (the spec's ``adapt`` section): telemetry sampling
    and, on switches, version-keyed model tables. KeyError for the C target (no data plane)
    and for per-flow sampling on a switch."""
    from dataclasses import replace

    from homunculus.ir.telemetry import TelemetryConfig

    if adapt is None:
        return target
    if target.name == "c":
        raise KeyError("the C target classifies feature vectors for its caller: it has no "
                       "data plane to sample or install into (use xdp, tofino or bmv2)")
    telemetry = TelemetryConfig(adapt.sampling, adapt.one_in, adapt.first_k)
    if target.name in SWITCHES and telemetry.sampling != "rate":
        raise KeyError(f"adapt.sampling: {telemetry.sampling} needs per-flow counters that only "
                       f"the XDP target keeps; {target.name} samples at a rate (adapt.sampling: "
                       "rate, with adapt.one_in)")
    if target.name in SWITCHES:
        return replace(target, telemetry=telemetry, versioned=adapt.versioned)  # type: ignore
    return replace(target, telemetry=telemetry)  # type: ignore[type-var]
