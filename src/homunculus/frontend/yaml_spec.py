"""YAML specs: parse with line numbers so every error names file, field and line.

The file is checked before anything is expanded: a regular file of bounded size, nesting at most
MAX_DEPTH levels deep, aliases that are not recursive and expand to at most MAX_NODES nodes (no
"billion laughs"), and no key given twice in one mapping.
"""

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
from homunculus.inputs import MAX_SPEC_BYTES, read_text


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


MAX_DEPTH = 64
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available
MAX_NODES = 100_000  # nodes of the document with every alias expanded



class SpecConstructor(yaml.SafeLoader):
    """SafeLoader construction, but a timestamp stays the text it was written as (no spec field
    is a date; PyYAML also fails on some malformed explicit timestamps)."""


SpecConstructor.add_constructor("tag:yaml.org,2002:timestamp",
                                yaml.SafeLoader.construct_yaml_str)

_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_events(text: str, source: str) -> None:
    """Bound the nesting depth from the event stream (PyYAML composes recursively)."""
    depth = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(f"the YAML nests deeper than {MAX_DEPTH} levels", file=source,
                                line=event.start_mark.line + 1)
        elif isinstance(event, _CLOSE):
            depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_graph(root: yaml.Node, source: str) -> None:
    """Reject recursive aliases and documents whose aliases expand beyond MAX_NODES, without
    expanding anything (sizes are summed over the node graph, each node visited once)."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            size[key] = min(1 + sum(size[id(c)] for c in _children(node)), MAX_NODES + 1)
            continue
        if key in size:
            continue
        if key in active:
            raise SpecError("recursive YAML alias (a node contains itself)", file=source,
                            line=node.start_mark.line + 1)
        active.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in active:
                raise SpecError("recursive YAML alias (a node contains itself)", file=source,
                                line=child.start_mark.line + 1)
            if id(child) not in size:
                stack.append((child, False))
    if size[id(root)] > MAX_NODES:
        raise SpecError(f"the YAML's aliases expand to more than {MAX_NODES} nodes",
                        file=source, line=1)


def _check_duplicates(root: yaml.Node, source: str) -> None:
    """A key given twice in one mapping would silently replace the first: reject it."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                    continue
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if ident in keys:
                    raise SpecError(f"key '{key_node.value[:80]}' appears twice in one mapping "
                                    f"(first on line {keys[ident]})", file=source, line=line)
                keys[ident] = line
        stack.extend(_children(node))


def compose_spec(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The checked node graph of a YAML document and the data it constructs."""
    _check_events(text, source)
    root = yaml.compose(text, Loader=LOADER)
    if root is None:
        return None, None
    _check_graph(root, source)
    _check_duplicates(root, source)
    loader = SpecConstructor("")
    try:
        return root, loader.construct_document(root)
    finally:
        loader.dispose()


def spec_class(data: dict[str, Any]) -> type[Spec] | type[ScheduleSpec] | type[ChainSpec]:
    """Several models (``models:``), one model over several devices (``platforms:``), or one
    model on one device."""
    if "models" in data:
        return ScheduleSpec
    return ChainSpec if "platforms" in data else Spec


def load_yaml_spec(path: Path) -> tuple[Spec, dict[tuple[Any, ...], int]]:
    """Read and validate a YAML spec; return it with its line index (for later data errors)."""
    source = str(path)
    text = read_text(path, "spec", MAX_SPEC_BYTES,
                     lambda msg: SpecError(msg, file=source))
    try:
        root, data = compose_spec(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", file=source,
                        line=mark.line + 1 if mark else None) from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a timestamp out of range
        raise SpecError(f"not valid YAML: {exc}", file=source) from None
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


def plan_from_yaml(path: Path, seed: int | None = None) -> Plan:
    """Parse a YAML spec into a Plan whose data loads lazily (errors keep their lines); a
    SchedulePlan or ChainPlan for several models or devices (frontend/schedule_plan.py).
    ``seed`` replaces ``search.seed`` (which also seeds the train/test split)."""
    spec, lines = load_yaml_spec(path)
    if seed is not None:
        spec = spec.model_copy(update={"search": spec.search.model_copy(update={"seed": seed})})
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
                source, origins, inputs=spec_inputs(spec, path))
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
        plan.feature_paths = [f"traffic.features[{i}]" for i, f in enumerate(spec.traffic.features)
                              for _ in range(f.bins if f.kind in ("len_hist", "iat_hist") else 1)]
        return plan
    plan.feature_paths = [f"data.features[{i}]" for i in range(len(spec.data.features))]
    features = [FeatureDecl(f.name, f.width, f.field, categorical=f.categorical)
                for f in spec.data.features]
    try:
        check_feature_decls(features, source)
    except FeatureDeclError as exc:
        raise plan.error(f"data.features[{exc.index}]", str(exc)) from None
    base = path.parent

    def load() -> Dataset:
        return load_tabular(
            base / spec.data.path, spec.data.label, features,
            test_path=base / spec.data.test_path if spec.data.test_path else None,
            test_fraction=spec.data.test_fraction, seed=spec.search.seed, locate=plan.error,
            group=spec.data.group)

    plan.load_data = load
    return plan


def spec_inputs(spec: Spec, path: Path) -> list[Path]:
    """The files a spec reads: itself, its data, its captures and label file."""
    base = path.parent
    files = [path]
    if spec.data is not None:
        files += [base / p for p in (spec.data.path, spec.data.test_path) if p]
    if spec.traffic is not None:
        files += [base / p for p in spec.traffic.pcaps]
        if spec.traffic.labels.path:
            files.append(base / spec.traffic.labels.path)
    return files


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
