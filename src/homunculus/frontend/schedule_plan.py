"""Plans of schedules (several models on one device) and chains (one model over several).

Both frontends build these: YAML through ``models:`` + ``schedule:`` or ``platforms:`` (this
module), Python through the operators of frontend/alchemy.py. Each model of a schedule gets a
:class:`ModelPlan`: a Plan whose errors name the model's own fields (``models[1].verdict``).

A model may read an upstream model's class as a feature (``{name: ad_class, width: 2, model:
ad}``). The class is not a column of its data: the compiler computes it with the upstream model
on this model's rows, from the upstream model's features (a feature table must carry them as
columns; traffic computes them from the packets), and appends it as the model's last feature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from homunculus.data.dataset import Dataset, FeatureDecl, FeatureDeclError, check_feature_decls
from homunculus.errors import DataError, NotSupportedError, SpecError
from homunculus.frontend.plan import Plan
from homunculus.frontend.spec import (
    ChainSpec,
    JointSpec,
    PlatformSpec,
    PolicySpec,
    ScheduleSpec,
    SearchSpec,
)
from homunculus.schedule.expr import (
    Node,
    ScheduleError,
    ScheduleSyntaxError,
    check_schedule,
    parse_schedule,
)

UpstreamValues = Callable[[Dataset, Dataset], tuple[np.ndarray, np.ndarray]]
"""Given this model's dataset and an upstream model's: the upstream model's features' values on
this model's train and test rows."""


@dataclass(frozen=True)
class ClassFeature:
    """A feature that is an upstream model's class."""

    name: str
    width: int
    model: str
    field_path: str  # where it is declared, for errors


@dataclass
class ModelPlan(Plan):
    """One model of a schedule; error paths are rewritten to the model's place in the spec."""

    prefix: str = ""  # "models[1]" in YAML; "" for Python models (their origins are exact)
    weight: float = 1.0
    class_features: list[ClassFeature] = field(default_factory=list)
    upstream_values: UpstreamValues | None = None

    def spec_path(self, field_path: str) -> str:
        if not self.prefix:
            return field_path
        head, _, rest = field_path.partition(".")
        if head == "model":
            return self.prefix + ("." + rest if rest else "")
        if head.split("[")[0] in ("data", "traffic"):
            return f"{self.prefix}.{field_path}"
        return field_path

    def error(self, field_path: str, message: str) -> SpecError:
        return super().error(self.spec_path(field_path), f"model '{self.model.name}': {message}")


@dataclass
class SchedulePlan:
    """Several models on one platform."""

    name: str
    models: list[ModelPlan]
    node: Node
    policy: PolicySpec
    platform: PlatformSpec
    search: SearchSpec
    joint: JointSpec
    source: str
    origins: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    schedule_text: str = ""

    def error(self, field_path: str, message: str) -> SpecError:
        return Plan.error(self, field_path, message)  # type: ignore[arg-type]

    @property
    def uses(self) -> dict[str, list[str]]:
        return {m.model.name: [c.model for c in m.class_features] for m in self.models
                if m.class_features}


@dataclass
class ChainPlan:
    """One model split over devices in chain order."""

    plan: Plan  # the model (its platform is the chain's first device)
    platforms: list[PlatformSpec]
    names: list[str]  # each device's name (its platform name, or "device<i>")
    source: str
    cuts: list[int] | None = None  # an MLP over hosts: each later device's first layer

    @property
    def name(self) -> str:
        return self.plan.name


# ----------------------------------------------------------------------------- checks


def check_schedule_plan(plan: SchedulePlan) -> None:
    """The schedule against its models: names, repeats, gates' places, class-feature order,
    the policy's order; errors name the spec's field and line."""
    declared = [m.model.name for m in plan.models]
    dup = sorted({n for n in declared if declared.count(n) > 1})
    if dup:
        raise plan.error("models", f"model names {dup} are declared more than once")
    for m in plan.models:
        for c in m.class_features:
            if c.model not in declared:
                raise m.error(c.field_path, f"feature '{c.name}' is the class of '{c.model}', "
                                            f"which is not a model of the schedule "
                                            f"(models: {', '.join(declared)})")
            if c.model == m.model.name:
                raise m.error(c.field_path, f"feature '{c.name}' is the model's own class "
                                            "(a cycle)")
    try:
        check_schedule(plan.node, declared, plan.uses)
    except ScheduleError as exc:
        raise plan.error("schedule", str(exc)) from None
    order = plan.policy.order
    for i, name in enumerate(order):
        if name not in declared:
            raise plan.error(f"policy.order[{i}]", f"'{name}' is not a model of the schedule "
                                                   f"(models: {', '.join(declared)})")
    if len(set(order)) != len(order):
        raise plan.error("policy.order", "a model is listed twice")


def parse_or_raise(text: str, plan_error: Callable[[str, str], SpecError]) -> Node:
    try:
        return parse_schedule(text)
    except ScheduleSyntaxError as exc:
        raise plan_error("schedule", f"{exc} in {text!r}") from None


# ----------------------------------------------------------------------------- YAML


def _origins_of(source: str, lines: dict[tuple[Any, ...], int]) -> dict[str, tuple[str, int]]:
    from homunculus.frontend.yaml_spec import dotted

    return {dotted(k): (source, v) for k, v in lines.items()}


def schedule_plan_from_yaml(spec: ScheduleSpec, lines: dict[tuple[Any, ...], int],
                            path: Path) -> SchedulePlan:
    source = str(path)
    origins = _origins_of(source, lines)
    models = [_yaml_model(i, m, spec, path, origins) for i, m in enumerate(spec.models)]
    text = spec.schedule if spec.schedule is not None else (
        models[0].model.name if len(models) == 1 else "")
    plan = SchedulePlan(spec.name, models, None, spec.policy, spec.platform,  # type: ignore[arg-type]
                        spec.search, spec.joint, source, origins, text)
    if not text:
        raise plan.error("schedule", "several models need a 'schedule' expression, e.g. "
                                     f"\"{models[0].model.name} > {models[1].model.name}\"")
    plan.node = parse_or_raise(text, plan.error)
    check_schedule_plan(plan)
    return plan


def _yaml_model(i: int, m: Any, spec: ScheduleSpec, path: Path,
                origins: dict[str, tuple[str, int]]) -> ModelPlan:
    """The plan of ``models[i]``: its data loader (class features left out) and the values
    of an upstream model's features on its rows."""
    prefix = f"models[{i}]"
    plan = ModelPlan(m.name, m, spec.platform, spec.search, lambda: None,  # type: ignore
                     str(path), origins, prefix=prefix, weight=m.weight)
    from homunculus.frontend.yaml_spec import spec_inputs

    plan.inputs = spec_inputs(m, path)  # the compile may not write over them
    base = path.parent
    if m.traffic is not None:
        from homunculus.frontend.yaml_spec import traffic_loader

        own = [f for f in m.traffic.features if f.model is None]
        plan.class_features = [ClassFeature(f.name, f.width, f.model,
                                            f"traffic.features[{j}]")
                               for j, f in enumerate(m.traffic.features) if f.model is not None]
        traffic = m.traffic.model_copy(update={"features": own})
        view = SimpleNamespace(traffic=traffic, platform=spec.platform, search=spec.search)
        plan.load_data = traffic_loader(view, base, plan)  # type: ignore[arg-type]
        plan.select_features = traffic.select_features
        plan.upstream_values = _traffic_upstream(plan)
        return plan
    own_specs = [(j, f) for j, f in enumerate(m.data.features) if f.model is None]
    plan.class_features = [ClassFeature(f.name, f.width, f.model, f"data.features[{j}]")
                           for j, f in enumerate(m.data.features) if f.model is not None]
    features = [FeatureDecl(f.name, f.width, f.field) for _, f in own_specs]
    if not features:
        raise plan.error("data.features", "a model needs at least one feature that is not "
                                          "another model's class")
    try:
        check_feature_decls(features, str(path))
    except FeatureDeclError as exc:
        raise plan.error(f"data.features[{own_specs[exc.index][0]}]", str(exc)) from None
    data = m.data

    def load() -> Dataset:
        from homunculus.data.tabular import load_tabular

        return load_tabular(base / data.path, data.label, features,
                            test_path=base / data.test_path if data.test_path else None,
                            test_fraction=data.test_fraction, seed=spec.search.seed,
                            locate=plan.error)

    def upstream(_own: Dataset, up: Dataset) -> tuple[np.ndarray, np.ndarray]:
        from homunculus.data.tabular import load_tabular

        decls = [FeatureDecl(f.name, f.width, f.field) for f in up.features]
        try:
            ds = load_tabular(base / data.path, data.label, decls,
                              test_path=base / data.test_path if data.test_path else None,
                              test_fraction=data.test_fraction, seed=spec.search.seed,
                              locate=lambda _f, msg: DataError(msg))
        except DataError as exc:
            raise plan.error("data", f"it reads an upstream model's class, computed from that "
                                     f"model's features on its rows: {exc}") from None
        return ds.x_train, ds.x_test

    plan.load_data = load
    plan.upstream_values = upstream
    return plan


def _traffic_upstream(plan: ModelPlan) -> UpstreamValues:
    def upstream(own: Dataset, up: Dataset) -> tuple[np.ndarray, np.ndarray]:
        if up.traffic is None or own.traffic is None:
            raise NotSupportedError(
                f"model '{plan.model.name}' learns from traffic but reads the class of a model "
                "that learns from a feature table: both must learn from traffic (the class is "
                "computed from the packets)")
        assert own.traffic.rows is not None and own.traffic.table is not None
        from homunculus.data.traffic import per_capture
        from homunculus.features.reference import reference_features

        info = own.traffic
        defs = [d for d in up.traffic.features if d.kind != CLASS_KIND]
        values, _ = per_capture(info.table,
                                lambda t: reference_features(t, defs, info.config))
        train, test = info.rows
        return values[train], values[test]

    return upstream


HOST_TARGETS = ("xdp", "c")
"""Targets that run the CPU program: a chain of switches may end on one, and a chain of them
splits an MLP by layers."""

CLASS_KIND = "model_class"
"""The FeatureDef kind of an upstream model's class in a traffic dataset (computed, no state)."""


def chain_plan_from_yaml(spec: ChainSpec, lines: dict[tuple[Any, ...], int],
                         path: Path) -> ChainPlan:
    from homunculus.frontend.yaml_spec import plan_from_spec

    source = str(path)
    origins = _origins_of(source, lines)
    names = [p.name or f"device{i}" for i, p in enumerate(spec.platforms)]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _error(origins, source, "platforms", f"platform names {dup} are used twice")
    order = list(range(len(names)))
    if spec.chain is not None:
        order = []
        for i, name in enumerate(spec.chain):
            if name not in names:
                raise _error(origins, source, f"chain[{i}]",
                             f"'{name}' is not a platform of the spec (platforms: "
                             f"{', '.join(names)})")
            if names.index(name) in order:
                raise _error(origins, source, f"chain[{i}]", f"platform '{name}' is twice in "
                                                             "the chain")
            order.append(names.index(name))
    platforms = [PlatformSpec(**spec.platforms[i].model_dump(exclude={"name"})) for i in order]
    for i, p in enumerate(platforms):
        if p.target in HOST_TARGETS and any(q.target not in HOST_TARGETS
                                            for q in platforms[i + 1:]):
            raise _error(origins, source, f"platforms[{order[i]}].target",
                         f"a {p.target} host can only end a chain (it classifies; the switches "
                         "before it carry partial results), or be followed by hosts only (an "
                         "MLP split by layers)")
    single = SimpleNamespace(name=spec.name, data=spec.data, traffic=spec.traffic,
                             model=spec.model, platform=platforms[0], search=spec.search)
    plan = plan_from_spec(single, lines, path)  # type: ignore[arg-type]
    return ChainPlan(plan, platforms, [names[i] for i in order], source, spec.cuts)


def _error(origins: dict[str, tuple[str, int]], source: str, field_path: str,
           message: str) -> SpecError:
    file, line = origins.get(field_path, (source, None))
    return SpecError(message, file=file, field=field_path, line=line)
