"""YAML specs: parse with line numbers so every error names file, field and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from homunculus.data.dataset import Dataset, FeatureDecl, FeatureDeclError, check_feature_decls
from homunculus.data.tabular import load_tabular
from homunculus.errors import SpecError
from homunculus.frontend.plan import Plan
from homunculus.frontend.spec import ChainSpec, ScheduleSpec, Spec


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Record the 1-based line of every mapping key and sequence item under ``node``."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_index(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _line_index(item, (*path, i), out)


def line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    """The line of ``loc`` or of its nearest ancestor present in the file."""
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def spec_class(data: dict[str, Any]) -> type[Spec] | type[ScheduleSpec] | type[ChainSpec]:
    """Several models (``models:``), one model over several devices (``platforms:``), or one
    model on one device."""
    if "models" in data:
        return ScheduleSpec
    return ChainSpec if "platforms" in data else Spec


def load_yaml_spec(path: Path) -> tuple[Spec, dict[tuple[Any, ...], int]]:
    """Read and validate a YAML spec; return it with its line index (for later data errors)."""
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the spec: {exc.strerror}", file=source) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=source,
                        line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict) or root is None:
        raise SpecError("the spec must be a YAML mapping (name, data, model, platform, search)",
                        file=source, line=1)
    lines: dict[tuple[Any, ...], int] = {}
    _line_index(root, (), lines)
    try:
        return spec_class(data).model_validate(data), lines  # type: ignore[return-value]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise SpecError(err["msg"] + more, file=source, field=dotted(loc),
                        line=line_of(lines, loc)) from None


def plan_from_yaml(path: Path) -> Plan:
    """Parse a YAML spec into a Plan whose data loads lazily (errors keep their lines); a
    SchedulePlan or ChainPlan for several models or devices (frontend/schedule_plan.py)."""
    spec, lines = load_yaml_spec(path)
    if isinstance(spec, ScheduleSpec):
        from homunculus.frontend.schedule_plan import schedule_plan_from_yaml

        return schedule_plan_from_yaml(spec, lines, path)  # type: ignore[return-value]
    if isinstance(spec, ChainSpec):
        from homunculus.frontend.schedule_plan import chain_plan_from_yaml

        return chain_plan_from_yaml(spec, lines, path)  # type: ignore[return-value]
    return plan_from_spec(spec, lines, path)


def plan_from_spec(spec: Spec, lines: dict[tuple[Any, ...], int], path: Path) -> Plan:
    """The Plan of one model on one platform (``spec``: a Spec, or anything with its fields)."""
    source = str(path)
    origins = {dotted(k): (source, v) for k, v in lines.items()}
    plan = Plan(spec.name, spec.model, spec.platform, spec.search, lambda: None,  # type: ignore
                source, origins)
    plan.adapt = getattr(spec, "adapt", None)
    for where, feats in (("data", spec.data.features if spec.data else []),
                         ("traffic", spec.traffic.features if spec.traffic else [])):
        for i, f in enumerate(feats):
            if f.model is not None:
                raise plan.error(f"{where}.features[{i}].model",
                                 "a model's class is a feature only in a schedule of several "
                                 "models ('models:' and 'schedule:')")
    if spec.traffic is not None:
        plan.load_data = traffic_loader(spec, path.parent, plan)
        plan.select_features = spec.traffic.select_features
        return plan
    features = [FeatureDecl(f.name, f.width, f.field) for f in spec.data.features]
    try:
        check_feature_decls(features, source)
    except FeatureDeclError as exc:
        raise plan.error(f"data.features[{exc.index}]", str(exc)) from None
    base = path.parent

    def load() -> Dataset:
        return load_tabular(
            base / spec.data.path, spec.data.label, features,
            test_path=base / spec.data.test_path if spec.data.test_path else None,
            test_fraction=spec.data.test_fraction, seed=spec.search.seed, locate=plan.error)

    plan.load_data = load
    return plan


def traffic_loader(spec: Spec, base: Path, plan: Plan):  # noqa: ANN201  (() -> Dataset)
    """Validate the traffic features now; load packets and compute features when called."""
    from homunculus.data.traffic import build_traffic_dataset, feature_defs, load_traffic_packets
    from homunculus.features.library import FlowConfig
    from homunculus.targets.registry import UNIT_NS

    traffic = spec.traffic
    defs = feature_defs(traffic.features, plan.error)
    try:
        config = FlowConfig(traffic.flow.slots, traffic.flow.time_shift,
                            UNIT_NS[spec.platform.target])
    except ValueError as exc:
        raise plan.error("traffic.flow", str(exc)) from None

    def load() -> Dataset:
        table, stats, source = load_traffic_packets(traffic, base, plan.error)
        return build_traffic_dataset(table, defs, config, split=traffic.split,
                                     test_fraction=traffic.test_fraction, seed=spec.search.seed,
                                     source=source, ingest=stats)

    return load
