"""Compile a schedule of several models onto one device.

1. Each model, in schedule order (upstream first), loads its data (an upstream class appended,
   computed by that model's best variant) and is searched multi-objectively on the device
   (schedule/search.py); its front of variants is rebuilt.
2. The integer program (schedule/joint.py) picks one variant per model; on a switch the chosen
   pipelines are fused (schedule/fuse.py) and placed by the real allocation pass: a choice that
   does not fit is cut and the program solved again. On a host (C, XDP) the models run one after
   the other (schedule/cpu.py, schedule/xdp.py).
3. The program is emitted, verified against the quantised models composed by the schedule (on
   feature vectors, and on packets when every model learns from traffic: schedule/verify.py),
   and moved into OUT with a report of the choice, the alternatives and the fusion.

OUT holds the program (``p4/``, ``runtime/``; ``c/``; or ``xdp/``), ``pipeline.json`` (the fused
pipeline), ``schedule.json`` (the schedule's semantics), ``models/<name>/`` (each model, float and
quantised), ``resources.json``, ``report.json``, ``report.html`` and ``study.db`` (one study per
model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from homunculus.compile import (
    CompileOptions,
    compile_plan,
    label_resources,
    make_target_and_limits,
    profile_of,
)
from homunculus.data.dataset import Dataset
from homunculus.errors import InfeasibleError, SpecError
from homunculus.features.library import FLOW_KINDS
from homunculus.frontend.schedule_plan import ChainPlan, ModelPlan, SchedulePlan
from homunculus.ir.names import sanitise_identifier
from homunculus.ir.quantised import to_json
from homunculus.ir.serialize import compiled_to_json
from homunculus.models.base import TrainedModel
from homunculus.outputs import check_out_dir, open_output
from homunculus.progress import search_progress
from homunculus.report.summary import candidates_section, resources_section, trial_rows
from homunculus.schedule import capacity
from homunculus.schedule.expr import names, priority, to_text
from homunculus.schedule.fuse import Fused, Part, fuse, model_classes
from homunculus.schedule.joint import JointInfeasible, Selection, Variant, alternatives, select
from homunculus.schedule.policy import ModelVerdicts, Policy, bind_gates
from homunculus.schedule.search import (
    Built,
    Searched,
    UpstreamRows,
    search_model,
    with_class_features,
)
from homunculus.schedule.verify import Member, check_features, check_packets
from homunculus.search.metrics import score
from homunculus.search.study import Budget
from homunculus.targets.base import Target, assess
from homunculus.toolchain_hook import check_final_program, resolve_hook


def compile_any(plan: Any, options: CompileOptions) -> Any:
    """Compile a Plan (one model), a SchedulePlan (several) or a ChainPlan (one over several
    devices)."""
    if options.shared is not None and isinstance(plan, SchedulePlan | ChainPlan):
        raise SpecError("--storage: a shared search runs one model on one platform; schedules "
                        "and chains are searched locally (drop --storage and --study)",
                        file=plan.source)
    if isinstance(plan, SchedulePlan):
        return compile_schedule(plan, options)
    if isinstance(plan, ChainPlan):
        from homunculus.schedule.chain import compile_chain

        return compile_chain(plan, options)
    return compile_plan(plan, options)


@dataclass
class ScheduleResult:
    """A compiled schedule (what ``homunculus compile`` prints)."""

    out_dir: Path
    report: dict[str, Any] = field(repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        return {m["name"]: m["metrics"] for m in self.report["models"]}

    def summary(self) -> list[str]:
        r = self.report
        lines = [f"schedule {r['schedule']} ({r['policy']['kind']} policy) on {r['target']}"]
        for m in r["models"]:
            mm = m["metrics"]
            lines.append(
                f"  {m['name']}: {m['family']} (trial {m['trial']}, variant {m['variant']} of "
                f"{len(m['variants'])}); {m['metric']}: quantised {mm['quantised']:.4f}, "
                f"through the schedule {mm['pipeline']:.4f}, runs on {mm['ran']:.1%} of its "
                "test rows")
        j = r["joint"]
        lines.append(f"  joint objective {j['objective']:.4f} after {len(j['rounds'])} "
                     f"integer-program round(s); verification: {r['verification']['rows']} "
                     "rows agree 100%" + (f", {r['verification']['packets']['classified']} "
                                          "packets agree 100%"
                                          if r["verification"].get("packets") else ""))
        flow = r.get("flow_state")
        if flow:  # an XDP schedule's shared flow state
            lines.append(f"  flow state shared: {flow['registers']} registers for "
                         f"{flow['registers_separate']} ({flow['bytes']} bytes instead of "
                         f"{flow['bytes_separate']}), {flow['flow_features']} flow features "
                         f"for {flow['flow_features_separate']}")
        return lines


# ----------------------------------------------------------------------------- helpers


def check_gate(plan: SchedulePlan, name: str, labels: tuple[str, ...]) -> None:
    """The gate on model ``name`` names labels of its data (errors name the schedule)."""
    from homunculus.schedule.expr import refs

    for r in refs(plan.node):
        if r.name != name or r.gate is None:
            continue
        for g in r.gate:
            if g not in labels:
                raise plan.error("schedule", f"the gate on '{r.name}' names class '{g}', which "
                                             f"is not a label of its data (labels: "
                                             f"{list(labels)})")


def check_flow_geometry(plan: SchedulePlan, loaded: dict[str, Dataset]) -> None:
    """The models keeping flow state share one register program on a device (fused on a
    switch, merged on XDP), so they need the same ``traffic.flow`` (slots, time base):
    refused before any search otherwise."""
    configs = {name: ds.traffic.config for name, ds in loaded.items()
               if ds.traffic is not None and any(f.kind in FLOW_KINDS for f in ds.features)}
    if len(set(configs.values())) > 1:
        raise plan.error("models", "the models keeping flow state share the flow registers, so "
                                   "they need the same traffic.flow (" + "; ".join(
                                       f"'{name}': {c.slots} slots, time_shift {c.time_shift}"
                                       for name, c in configs.items()) + ")")


def make_policy(plan: SchedulePlan, first: ModelPlan) -> Policy:
    order = list(plan.policy.order)
    order += [m for m in priority(plan.node) if m not in order]
    port = plan.policy.default_port
    return Policy(plan.policy.kind, tuple(order),
                  first.model.verdict.default_port if port is None else port)


def _part(built: Built, name: str, upstream_names: dict[str, str]) -> Part:
    pipeline = built.pipeline
    ds = built.problem.dataset
    upstream = {i: upstream_names[f.name] for i, f in enumerate(pipeline.features)
                if f.name in upstream_names}
    return Part(name, pipeline, ds.class_labels,
                ModelVerdicts.of(built.problem.verdict, ds.n_classes), upstream)


def _variant(name: str, b: Built, target: Target) -> Variant:
    return Variant(name, b.trial, b.family, b.params, b.metric,
                   capacity.cost_of(b.pipeline, b.usage, target))


@dataclass
class Composition:
    """The chosen variants as one program on the device."""

    program: Any  # the fused Pipeline, or the CPU schedule program
    usage: Any
    feasibility: Any
    fused: Fused | None = None
    separate: dict[str, Any] = field(default_factory=dict)


def compose(target: Target, limits: Any, chosen: dict[str, Built], order: list[str],
            uses: dict[str, dict[str, str]], node: Any, policy: Policy) -> Composition:
    """Fuse (switch) or chain (host) the chosen variants; estimate and assess the program."""
    if getattr(target, "lowering", "tables") == "cpu":
        from homunculus.schedule import cpu, xdp

        program = cpu.compose_cpu([(m, chosen[m]) for m in order], uses, node, policy)
        usage = (xdp.estimate if target.name == "xdp" else cpu.estimate)(program, target)
        return Composition(program, usage, assess(usage, limits))
    parts = [_part(chosen[m], m, uses.get(m, {})) for m in order]
    fused = fuse(parts, node, policy)
    usage = target.estimate(fused.pipeline)
    return Composition(fused.pipeline, usage, assess(usage, limits), fused)


# ----------------------------------------------------------------------------- driver


@dataclass
class Searches:
    """A schedule's models after their searches: what the joint allocation chooses from."""

    target: Target
    limits: Any
    order: list[str]  # schedule order (upstream first)
    searched: dict[str, Searched]
    upstream_rows: dict[str, UpstreamRows]
    node: Any  # the schedule with its gates bound to class indices
    policy: Policy
    uses: dict[str, dict[str, str]]  # model -> class feature -> upstream model
    variants: dict[str, list[Variant]]
    weights: dict[str, float]
    capacity: dict[str, float]
    cache: dict[tuple[int, ...], Composition] = field(default_factory=dict)

    def composition(self, choice: dict[str, int]) -> Composition:
        """The chosen variants as one program (fused on a switch), estimated and assessed."""
        key = tuple(choice[m] for m in self.order)
        if key not in self.cache:
            chosen = {m: self.searched[m].front[choice[m]] for m in self.order}
            self.cache[key] = compose(self.target, self.limits, chosen, self.order, self.uses,
                                      self.node, self.policy)
        return self.cache[key]

    def fits(self, choice: dict[str, int]) -> tuple[bool, str | None]:
        c = self.composition(choice)
        reason = None if c.feasibility.feasible else "; ".join(c.feasibility.violations)
        return c.feasibility.feasible, reason


def search_schedule(plan: SchedulePlan, options: CompileOptions, seed: int,
                    storage: Path) -> Searches:
    """Load every model's data (errors first), then search the models in schedule order."""
    first = plan.models[0]
    target, limits = make_target_and_limits(first)
    budget = Budget(options.trials if options.trials is not None else plan.search.trials,
                    options.seconds if options.seconds is not None else plan.search.seconds)
    by_name = {m.model.name: m for m in plan.models}
    order = names(plan.node)
    datasets: dict[str, Dataset] = {}
    searched: dict[str, Searched] = {}
    upstream_models: dict[str, tuple[Dataset, TrainedModel]] = {}
    upstream_rows: dict[str, UpstreamRows] = {}
    loaded = {name: by_name[name].load_data() for name in order}  # every data error first
    for name in order:
        check_gate(plan, name, loaded[name].class_labels)
    if target.name != "c":  # a C library takes flow features as inputs: no registers
        check_flow_geometry(plan, loaded)
    storage.parent.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(order):
        mp = by_name[name]
        dataset, up_rows = with_class_features(mp, loaded[name], upstream_models)
        datasets[name] = dataset
        upstream_rows[name] = up_rows
        with search_progress(budget.trials, f"{name} {mp.model.metric}",
                             options.progress) as progress:
            s = search_model(mp, i, dataset, target, limits, seed, budget, storage,
                             options.resume, plan.joint.variants, progress)
        searched[name] = s
        upstream_models[name] = (s.best.problem.dataset, s.best.trained)
    node = bind_gates(plan.node, {}, {m: ds.class_labels for m, ds in datasets.items()})
    uses = {m.model.name: {c.name: c.model for c in m.class_features} for m in plan.models}
    out = Searches(target, limits, order, searched, upstream_rows, node,
                   make_policy(plan, first), uses,
                   {m: [_variant(m, b, target) for b in searched[m].front] for m in order},
                   {m: by_name[m].weight for m in order}, {})
    out.capacity = joint_capacity(target, limits, out.composition({m: 0 for m in order}), order)
    return out


def compile_schedule(plan: SchedulePlan, options: CompileOptions) -> ScheduleResult:
    """Compile ``plan`` into ``options.out_dir`` (see the module docstring). OUT is written as
    a single model's compile writes it: checked, locked, built in a workspace and committed by
    one rename (outputs.py)."""
    seed = plan.search.seed if options.seed is None else options.seed
    inputs = [p for m in plan.models for p in getattr(m, "inputs", [])]
    out_dir = check_out_dir(options.out_dir, [*inputs, *options.inputs])
    with open_output(out_dir) as output:
        output.start(options.resume)
        probe, _ = make_target_and_limits(plan.models[0])
        hook = resolve_hook(plan.models[0], probe, options.p4c, options.p4c_timeout)
        s = search_schedule(plan, replace(options, resume=output.resumed is not None), seed,
                            output.study_path)
        try:
            selection = select(s.variants, s.weights, s.capacity, s.fits, plan.joint.max_rounds)
        except JointInfeasible as exc:
            raise InfeasibleError(f"{plan.source}: {exc}") from None
        chosen = {m: s.searched[m].front[selection.chosen[m]] for m in s.order}
        final = s.composition(selection.chosen)
        others = alternatives(s.variants, s.weights, s.capacity,
                              [r.choice for r in selection.rounds if not r.fits])
        program_name = sanitise_identifier(plan.name, "hmn")
        members = members_of(final, chosen, s.order, s.uses, s.upstream_rows)
        report = write_schedule(output.work, plan, s.target, s.limits, final, chosen,
                                s.searched, s.order, members, s.node, s.policy, selection,
                                s.variants, others, s.capacity, program_name, seed, hook)
        output.commit()
    return ScheduleResult(out_dir, report)


def joint_capacity(target: Target, limits: Any, sample: Composition,
                   order: list[str]) -> dict[str, float]:
    if getattr(target, "lowering", "tables") == "cpu":
        return capacity.cpu_capacity(limits)
    assert sample.fused is not None
    prefixes = [sample.fused.prefixes[m] for m in order]
    shared = capacity.switch_shared(sample.fused.pipeline, target.profile, prefixes,
                                    sample.usage)
    return capacity.switch_capacity(target.profile, limits, shared)


# ----------------------------------------------------------------------------- outputs


def members_of(final: Composition, chosen: dict[str, Built], order: list[str],
               uses: dict[str, dict[str, str]],
               upstream_rows: dict[str, UpstreamRows]) -> list[Member]:
    out = []
    for m in order:
        b = chosen[m]
        ds = b.problem.dataset
        upstream = {i: uses.get(m, {})[f.name] for i, f in enumerate(ds.features)
                    if f.name in uses.get(m, {})}
        fused = final.fused
        inputs = fused.features[m] if fused is not None else final.program.inputs[m]
        out.append(Member(m, b.trained, ds, upstream, list(inputs),
                          ModelVerdicts.of(b.problem.verdict, ds.n_classes),
                          b.problem.metric, b.problem.positive, upstream_rows.get(m, {})))
    return out


def write_models(out: Path, chosen: dict[str, Built]) -> None:
    for m, b in chosen.items():
        d = out / "models" / sanitise_identifier(m, "m")
        d.mkdir(parents=True, exist_ok=True)
        joblib.dump(b.trained.float_model, d / "float_model.joblib")
        ds = b.problem.dataset
        doc = {"name": m, "family": b.family, "params": b.params,
               "features": [{"name": f.name, "width": f.width, "field": f.field}
                            for f in ds.features],
               "class_labels": list(ds.class_labels),
               "winner_to_class": list(b.trained.winner_to_class or range(ds.n_classes)),
               "model": to_json(b.trained.quantised)}
        (d / "quantised.json").write_text(json.dumps(doc, indent=1) + "\n")


def run_switch(target: Target, pipeline: Any, out: Path, fused: Fused):
    def run(x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        result = target.run_twin(pipeline, out, x)
        return model_classes(fused, result.fields), result.fields

    return run


def run_switch_packets(pipeline: Any, out: Path, fused: Fused):
    from homunculus.targets.p4.entries import read_runtime_entries
    from homunculus.targets.p4.twin import simulate_packets, with_installed_entries

    installed = read_runtime_entries(json.loads((out / "runtime" / "entries.json").read_text()),
                                     pipeline)
    program = with_installed_entries(pipeline, installed)

    def run(table: Any) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        result, classified = simulate_packets(program, table)
        return classified, model_classes(fused, result.fields), result.fields

    return run


def write_schedule(out: Path, plan: SchedulePlan, target: Target, limits: Any,
                   final: Composition, chosen: dict[str, Built], searched: dict[str, Searched],
                   order: list[str], members: list[Member], node: Any, policy: Policy,
                   selection: Selection, variants: dict[str, list[Variant]],
                   others: dict[str, list[float | None]], cap: dict[str, float],
                   program_name: str, seed: int, hook: Any) -> dict[str, Any]:
    """Emit, verify and report into ``out`` (a staging directory); the vendor compiler, when
    one runs, must accept the program."""
    from homunculus.schedule import xdp

    uses = {m.name: {f.name: m.upstream[i] for i, f in enumerate(m.dataset.features)
                     if i in m.upstream} for m in members}
    if final.fused is not None:
        target.emit(final.program, out, program_name)
        (out / "pipeline.json").write_text(json.dumps(compiled_to_json(final.program)) + "\n")
        run = run_switch(target, final.program, out, final.fused)
        n_inputs = len(final.program.features)
    else:
        from homunculus.schedule import cpu

        host = xdp if target.name == "xdp" else cpu
        host.emit(final.program, target, out, program_name)
        run = host.twin(final.program, out)
        n_inputs = len(final.program.features)
    check = check_features(members, node, policy, run, n_inputs, seed)
    packets = None
    traffic = [m for m in members if m.dataset.traffic is not None]
    packet_run = (run_switch_packets(final.program, out, final.fused)
                  if final.fused is not None else
                  xdp.packet_twin(final.program, out) if target.name == "xdp" else None)
    if packet_run is not None and len(traffic) == len(members):
        tables = [m.dataset.traffic.table for m in traffic if m.dataset.traffic.table is not None]
        packets = check_packets(members, node, policy, packet_run, tables)
    write_models(out, chosen)
    schedule_doc = {
        "schedule": to_text(plan.node), "policy": {"kind": policy.kind,
                                                   "order": list(policy.order),
                                                   "default_port": policy.default_port},
        "models": [{"name": m, "class_field": (final.fused.class_fields[m].name
                                               if final.fused else None),
                    "labels": list(chosen[m].problem.dataset.class_labels),
                    "reads_class_of": uses.get(m, {})} for m in order]}
    (out / "schedule.json").write_text(json.dumps(schedule_doc, indent=1) + "\n")
    report = schedule_report(plan, target, limits, final, chosen, searched, order, policy,
                             selection, variants, others, cap, check, packets, seed)
    report["toolchain"] = check_final_program(hook, out, program_name, final.usage, limits,
                                              getattr(target, "profile", None))
    label_resources(report["resources"], report["toolchain"])
    (out / "resources.json").write_text(json.dumps(report["resources"], indent=1) + "\n")
    from homunculus.schedule.report import write_schedule_report

    write_schedule_report(out, report)
    return report


def xdp_flow_sharing(program: Any) -> dict[str, Any] | None:
    """An XDP schedule's shared flow state against one register program per model."""
    from homunculus.schedule import xdp

    return xdp.flow_sharing(program)


def separate_usage(target: Target, chosen: dict[str, Built], order: list[str]
                   ) -> dict[str, Any]:
    """The chosen models as separate programs, side by side: what fusion is measured against."""
    keys = ("stages", "tables", "sram_kbit", "tcam_kbit", "entries", "phv_bits")
    total = {k: 0.0 for k in keys}
    per = {}
    for m in order:
        u = chosen[m].usage
        per[m] = {k: getattr(u, k) for k in keys}
        for k in keys:
            total[k] += getattr(u, k)
    return {"per_model": per, "total": total}


def schedule_report(plan: SchedulePlan, target: Target, limits: Any, final: Composition,
                    chosen: dict[str, Built], searched: dict[str, Searched], order: list[str],
                    policy: Policy, selection: Selection, variants: dict[str, list[Variant]],
                    others: dict[str, list[float | None]], cap: dict[str, float],
                    check: Any, packets: Any, seed: int) -> dict[str, Any]:
    models = []
    for m in order:
        b, s = chosen[m], searched[m]
        ds = b.problem.dataset
        quantised = score(b.problem.metric, ds.y_test, b.trained.predict_quantised(ds.x_test),
                          ds.n_classes, b.problem.positive)
        floated = score(b.problem.metric, ds.y_test, b.trained.predict_float(ds.x_test),
                        ds.n_classes, b.problem.positive)
        rows = []
        for i, v in enumerate(variants[m]):
            rows.append({"index": i, "trial": v.trial, "family": v.family, "params": v.params,
                         "metric": v.metric, "cost": v.cost,
                         "usage": {k: getattr(s.front[i].usage, k)
                                   for k in ("stages", "tables", "sram_kbit", "tcam_kbit",
                                             "entries", "latency_ns")},
                         "chosen": i == selection.chosen[m],
                         "joint_objective_if_chosen": others[m][i]})
        models.append({
            "name": m, "family": b.family, "params": b.params, "trial": b.trial,
            "variant": selection.chosen[m], "weight": plan.models[[p.model.name for p in
                                                                   plan.models].index(m)].weight,
            "metric": b.problem.metric, "class_labels": list(ds.class_labels),
            "metrics": {"float": floated, "quantised": quantised,
                        "validation_quantised": b.metric,
                        "pipeline": check.per_model[m]["pipeline"],
                        "ran": check.per_model[m]["ran"], "test_samples": len(ds.y_test)},
            "variants": rows,
            "search": {"trials": len(s.result.trials), "seconds": s.result.seconds,
                       "objectives": list(s.objectives),
                       "infeasible": sum(not r["feasible"] for r in trial_rows(s.result.trials))},
            "trials": trial_rows(s.result.trials),
            "candidates": candidates_section(s.candidates),
            "reads_class_of": {c.name: c.model for c in s.plan.class_features},
        })
    fusion = None
    if final.fused is not None:
        sep = separate_usage(target, chosen, order)
        fused_totals = {k: getattr(final.usage, k) for k in sep["total"]}
        fusion = {"shared": final.fused.shared, "separate": sep, "fused": fused_totals,
                  "saved": {k: sep["total"][k] - fused_totals[k] for k in fused_totals}}
    return {
        "kind": "schedule", "name": plan.name, "target": target.name,
        "schedule": to_text(plan.node),
        "policy": {"kind": policy.kind, "order": list(policy.order),
                   "default_port": policy.default_port},
        "models": models,
        "joint": {"objective": selection.objective, "capacity": cap,
                  "rounds": [{"choice": r.choice, "objective": r.objective, "fits": r.fits,
                              "reason": r.reason} for r in selection.rounds]},
        "fusion": fusion,
        "flow_state": (xdp_flow_sharing(final.program) if target.name == "xdp" else None),
        "resources": resources_section(final.usage, limits, final.feasibility, target.name),
        "verification": {"rows": check.rows, "agreement": 1.0, "packets": packets},
        "profile": profile_of(target), "seed": seed,
    }
