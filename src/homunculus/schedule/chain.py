"""Compile one model split over a chain of switches (schedule/split.py).

The search runs over the chain as one target (split.ChainTarget): a configuration is feasible
when its model splits over the chain's devices, each within its own limits; the search's
objectives are the metric and the stages along the chain (fewer devices). The best
configuration is split, each device's program and entries are emitted into
``OUT/devices/<i>_<name>/``, and the chain of twins (each device's entries, fed the previous
device's carry header) must agree 100% with the quantised model on the test set and, for traffic
specs, on every packet of the capture. A host may end the chain (schedule/host.py): its C
library (built with gcc) or XDP program (built with clang, run in the kernel) is emitted into its
device directory and run on the test set from the partial scores the switches' twins carry; it
too must agree 100%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from homunculus.compile import (
    CompileOptions,
    check_algorithms,
    choose_candidates,
    positive_class,
    traffic_section,
    verdict_plan,
    write_model,
)
from homunculus.errors import InfeasibleError, NotSupportedError, VerificationError
from homunculus.frontend.schedule_plan import ChainPlan
from homunculus.ir.names import sanitise_identifier
from homunculus.ir.pipeline import Field
from homunculus.ir.serialize import compiled_to_json
from homunculus.outputs import check_out_dir, open_output
from homunculus.progress import search_progress
from homunculus.report.summary import candidates_section, confusion, trial_rows
from homunculus.schedule.host import carry_header, host_features, host_program, partial_scores
from homunculus.schedule.search import Built, build
from homunculus.schedule.split import (
    CARRY_PREFIX,
    ChainTarget,
    Device,
    Split,
    run_switch_packets,
    run_switches,
)
from homunculus.search.metrics import score
from homunculus.search.problem import make_problem
from homunculus.search.study import Budget, open_study, run_search, shipped_configuration
from homunculus.targets.p4.codegen import carry_layout
from homunculus.targets.p4.entries import read_runtime_entries
from homunculus.targets.p4.twin import simulate, with_installed_entries
from homunculus.targets.registry import make_target

OBJECTIVES = ("metric", "stages")
HOST_ENTRY = {"c": "hmn_classify_carried",
              "xdp": "hmn_xdp, which parses and strips the carry header"}
"""What a host ending a chain runs from the carried partial scores, by target."""


@dataclass
class ChainResult:
    out_dir: Path
    report: dict[str, Any] = field(repr=False)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.report["metrics"]

    def summary(self) -> list[str]:
        r = self.report
        lines = headline(r, f"{r['family']} split", "device(s)")
        for d in r["devices"]:
            t = d["usage"]
            checked = "".join(f", {k} {v['used']:g} of {v['limit']:g}"
                              for k, v in d.get("within_limits", {}).items())
            if d["target"] in HOST_ENTRY:
                lines.append(f"  {d['name']} ({d['target']} host): {len(d['tables'])} score "
                             "tables from the carried partial scores, arg-max and verdict "
                             f"({d['carry_in']['entry_point']}); {t['latency_ns']:.0f} ns "
                             f"estimated{checked}")
                continue
            lines.append(f"  {d['name']} ({d['target']}): {len(d['tables'])} score tables, "
                         f"{t['stages']} stages, {t['tables']} tables, {t['entries']} entries"
                         f"{checked}")
        sim = r.get("packet_simulation")
        if sim:
            through = "the switches' twins" + (f", then {sim['host']}'s built program"
                                               if sim.get("host") else "")
            lines.append(f"  packets: {sim['classified']} classified of {sim['packets']} "
                         f"through {through}, agree 100% with the model")
        one = r["one_device"]
        if one["metric"] is not None:
            lines.append(f"  the best configuration that fits {r['chain'][0]} alone: "
                         f"{one['family']} at {one['metric']:.4f} (cross-validated; the chain's "
                         f"model: {r['metrics']['validation_quantised']:.4f})")
        return lines


def chain_budget(base: Any, options: Any) -> Budget:
    """The search budget: the command line's trials and seconds, else the spec's."""
    return Budget(options.trials if options.trials is not None else base.search.trials,
                  options.seconds if options.seconds is not None else base.search.seconds)


def chain_study(output: Any, base: Any, objectives: tuple[str, ...], seed: int,
                budget: Budget) -> Any:
    """The chain's Optuna study in OUT: new, resumed, or continued after a partial run."""
    return open_study(output.study_path, sanitise_identifier(base.name, "study"), objectives,
                      base.search.sampler, seed, budget, output.resumed is not None,
                      missing_ok=output.resumed == "partial")


def headline(report: dict[str, Any], subject: str, devices: str) -> list[str]:
    """The first lines of a chain's summary: the split, the header, the metrics."""
    r, m = report, report["metrics"]
    return [f"{subject} over {r['devices_used']} of {len(r['chain'])} {devices} "
            f"({', '.join(d['name'] for d in r['devices'])}); carry header "
            f"{r['header_bytes']} bytes over {max(r['devices_used'] - 1, 0)} link(s)",
            f"  {r['metric']}: float {m['float']:.4f}, quantised {m['quantised']:.4f}, "
            f"chain {m['pipeline']:.4f} (agreement {m['agreement']:.2%} on "
            f"{m['test_samples']} test samples)"]


def chain_devices(plan: ChainPlan) -> list[Device]:
    """The chain's devices: switches, optionally ended by a host (C or XDP; the frontends refuse
    a host anywhere else)."""
    devices = []
    hosts_only = all(spec.target in HOST_ENTRY for spec in plan.platforms)  # an MLP by layers
    for i, (spec, name) in enumerate(zip(plan.platforms, plan.names, strict=True)):
        try:
            target, limits = make_target(spec.target, spec.profile)
        except KeyError as exc:
            raise plan.plan.error(f"platforms[{i}].profile", str(exc.args[0])) from None
        c = spec.constraints
        wanted = {**c.resources.model_dump(exclude_none=True),
                  **c.performance.model_dump(exclude_none=True)}
        try:
            merged = limits.merged(wanted)
        except KeyError as exc:
            raise plan.plan.error(f"platforms[{i}].constraints", str(exc.args[0])) from None
        devices.append(Device(name, target, merged))
    if devices[0].host and not hosts_only:
        raise plan.plan.error("platforms", "a chain starts on a switch (tofino, bmv2); a host "
                                           "can only end it")
    return devices


def compile_chain(plan: ChainPlan, options: CompileOptions) -> Any:
    """A chain of switches (maybe ended by a host), or of hosts only: an MLP split by layers
    (schedule/chain_mlp.py)."""
    base = plan.plan
    seed = base.search.seed if options.seed is None else options.seed
    devices = chain_devices(plan)
    if all(d.host for d in devices):
        from homunculus.schedule.chain_mlp import compile_mlp_chain

        return compile_mlp_chain(plan, options, devices)
    if plan.cuts is not None:
        raise base.error("cuts", "cuts split an MLP by layers over a chain of hosts (c, xdp) "
                                 "only; a chain of switches splits summed models by tables")
    requested = check_algorithms(base)
    dataset = base.load_data()
    switches = {spec.target for spec in plan.platforms if spec.target not in HOST_ENTRY}
    if dataset.traffic is not None and len(switches) > 1:
        raise base.error("platforms", "a model with flow features runs on one kind of switch "
                                      "along the chain (their clocks tick in different units)")
    target = ChainTarget(tuple(devices))
    problem = make_problem(dataset, target, target.limits(), base.model.metric,
                           positive_class(base, dataset), verdict_plan(base, dataset), seed,
                           base.search.validation_fraction, base.select_features,
                           base.search.cv_folds)
    try:
        candidates, allowed = choose_candidates(problem, requested)
    except InfeasibleError as exc:
        raise InfeasibleError(why_nothing_fits(problem, target, requested, str(exc))) from None
    budget = chain_budget(base, options)
    out_dir = check_out_dir(options.out_dir, [*base.inputs, *options.inputs])
    objectives = tuple(base.model.objectives) if len(base.model.objectives) > 1 else OBJECTIVES
    with open_output(out_dir) as output:
        output.start(options.resume)
        study = chain_study(output, base, objectives, seed, budget)
        with search_progress(budget.trials, base.model.metric, options.progress) as progress:
            try:
                result = run_search(problem, allowed, objectives, budget, study, progress)
            except InfeasibleError as exc:
                raise InfeasibleError(why_nothing_fits(problem, target, allowed,
                                                       str(exc))) from None
        best_trial = result.best_trial
        family, params = shipped_configuration(best_trial)
        best = build(problem, family, params, best_trial.user_attrs["metric"],
                     best_trial.number)
        split = target.split(best.pipeline)
        program = sanitise_identifier(base.name, "hmn")
        report = write_chain(output.work, plan, devices, best, split, result, candidates,
                             program, seed)
        output.commit()
    return ChainResult(out_dir, report)


def why_nothing_fits(problem: Any, target: ChainTarget, families: list[str] | None,
                     message: str) -> str:
    """Per family, why its smallest model does not split over the chain: the device and the
    limit (a host's included); the search's infeasibility ``message`` if none says."""
    from homunculus.models.base import all_families, requires_dense
    from homunculus.search.problem import lower_for

    ds = problem.dataset
    seen = target.why_not()  # before the smallest models add theirs
    lines = []
    for name in families or sorted(all_families()):
        family = all_families()[name]
        if requires_dense(family):
            continue
        try:
            smallest = family.smallest_model(ds.widths, ds.n_classes)
            split = target.split(lower_for(target, smallest, ds, problem.verdict, None))
        except (ValueError, NotSupportedError):
            continue
        if not split.feasible and split.reason:
            lines.append(f"  - {name}: its smallest model does not split over the chain: "
                         f"{split.reason}")
    if seen:
        lines.append(f"  - the search's configurations, most often: {seen}")
    if not lines:
        return message
    return ("no configuration splits over the chain within its devices' limits (add a device, "
            "or relax the named limit):\n" + "\n".join(lines))


def device_dir(out: Path, d: int, name: str) -> Path:
    return out / "devices" / f"{d}_{sanitise_identifier(name, 'dev')[4:]}"


def installed_programs(out: Path, split: Split, names: list[str]) -> list[Any]:
    """Each device's program with the entries written for its control plane."""
    programs = []
    for d, program in enumerate(split.programs):
        runtime = json.loads((device_dir(out, d, names[d]) / "runtime" /
                              "entries.json").read_text())
        programs.append(with_installed_entries(program, read_runtime_entries(runtime, program)))
    return programs


def write_chain(out: Path, plan: ChainPlan, devices: list[Device], best: Built, split: Split,
                result: Any, candidates: list[Any], program: str, seed: int) -> dict[str, Any]:
    """Emit every device's program, verify the chain, write the model and the report."""
    names = [d.name for d in devices]
    for d, prog in enumerate(split.programs):
        where = device_dir(out, d, names[d])
        devices[d].target.emit(prog, where, f"{program}_{d}")
        (where / "pipeline.json").write_text(json.dumps(compiled_to_json(prog)) + "\n")
    installed = installed_programs(out, split, names)
    ds = best.problem.dataset
    expected = best.trained.predict_quantised(ds.x_test)
    twin, carried = run_switches(split, ds.x_test,
                                 lambda p, d, x, c: simulate(installed[d], x, carried=c))
    host = None
    if split.host_tables:
        host = split.host_program or emit_host(out, devices[-1], split, best, program)
        if split.host_program is not None:
            devices[-1].target.emit(host, device_dir(out, split.devices - 1, devices[-1].name),
                                    f"{program}_{split.devices - 1}")
        twin = run_host(out, devices[-1], split, host, ds.x_test, carried, ds.features)
    produced = twin.class_index
    check_agreement(expected, produced)
    packets = None
    if ds.traffic is not None and ds.traffic.table is not None:
        packets = verify_chain_packets(split, installed, best, ds.traffic.table,
                                       None if host is None else (out, devices[-1], host))
    write_model(out, evaluation_view(best), ds, best.problem.verdict)
    metric = best.problem.metric

    def metric_of(pred: np.ndarray) -> float:
        return score(metric, ds.y_test, pred, ds.n_classes, best.problem.positive)

    device_rows = []
    for d, (prog, usage) in enumerate(zip(split.programs, split.usages, strict=True)):
        device_rows.append({
            "name": names[d], "target": devices[d].target.name,
            "directory": str(device_dir(out, d, names[d]).relative_to(out)),
            "tables": list(split.tables[d]),
            "carry_in": carry_layout(prog.carry_in) if prog.carry_in else None,
            "carry_out": carry_layout(prog.carry_out) if prog.carry_out else None,
            "usage": {k: getattr(usage, k) for k in ("stages", "tables", "sram_kbit",
                                                     "tcam_kbit", "entries", "phv_bits",
                                                     "latency_ns")},
            "per_stage": [{"stage": s.stage, "tables": list(s.tables), "ops": list(s.ops)}
                          for s in usage.per_stage],
            "limits": devices[d].limits.as_dict(),
        })
    if host is not None:
        device_rows.append(host_row(out, devices[-1], split, host))
    for row in device_rows:
        row["within_limits"] = within_limits(row["usage"], row["limits"])
    rows = trial_rows(result.trials)
    report = {
        "kind": "chain", "name": plan.name, "target": "chain",
        "chain": names, "family": best.family, "params": best.params,
        "metric": metric, "class_labels": list(ds.class_labels),
        "devices_used": split.devices, "header_bytes": split.header_bytes,
        "carry_bytes": list(split.carry_bytes), "table_order": split.order,
        "devices": device_rows,
        "metrics": {"float": metric_of(best.trained.predict_float(ds.x_test)),
                    "quantised": metric_of(expected), "pipeline": metric_of(produced),
                    "agreement": float(np.mean(expected == produced)),
                    "validation_quantised": best.metric, "test_samples": len(ds.y_test)},
        "packet_simulation": packets, "traffic": traffic_section(ds),
        "confusion_matrix": confusion(ds.y_test, produced, ds.class_labels),
        "one_device": best_on_one_device(result.trials, devices[0]),
        "trials": rows, "candidates": candidates_section(candidates),
        "search": {"trials": len(rows), "infeasible": sum(not r["feasible"] for r in rows),
                   "seconds": result.seconds, "seed": seed,
                   "objectives": [d.name.lower() for d in result.study.directions]},
    }
    (out / "chain.json").write_text(json.dumps(
        {"chain": names, "devices": [{k: r[k] for k in ("name", "target", "directory",
                                                        "tables", "carry_in", "carry_out")}
                                     for r in device_rows],
         "carry_ether_type": "0x88B5"}, indent=1) + "\n")
    from homunculus.schedule.report import write_schedule_report

    write_schedule_report(out, report, "chain.html.j2")
    return report


def emit_host(out: Path, device: Device, split: Split, best: Built, program: str) -> Any:
    """The host's program (the tables the switches left, from their carried scores), emitted
    and built (C: gcc; XDP: clang) in its device directory."""
    problem = best.problem
    cpu = host_program(split, best.pipeline, best.trained.quantised, problem.dataset.features,
                       problem.verdict, best.trained.winner_to_class)
    device.target.emit(cpu, device_dir(out, split.devices - 1, device.name),
                       f"{program}_{split.devices - 1}")
    return cpu


def run_host(out: Path, device: Device, split: Split, cpu: Any, x: np.ndarray,
             carried: dict[str, np.ndarray] | None, features: tuple[Any, ...]) -> Any:
    """The host's built program on feature rows ``x`` (of the model's ``features``) from the
    switches' carried scores: the C library through ctypes, the XDP program in the kernel
    (BPF_PROG_TEST_RUN)."""
    where = device_dir(out, split.devices - 1, device.name)
    partial = partial_scores(carried, cpu, len(x))
    x = x[:, host_features(features)]  # the host reads no flow feature
    if device.target.name == "xdp":
        from homunculus.targets.xdp.runner import load_built, run_vectors

        obj, _ = load_built(where)
        with obj:
            return run_vectors(obj, cpu, x, partial)[0]
    from homunculus.targets.c.twin import CLibrary

    (library,) = sorted((where / "c").glob("libhmn_*.so"))
    return CLibrary(library).classify_carried(x, partial)


def host_row(out: Path, device: Device, split: Split, cpu: Any) -> dict[str, Any]:
    """The host's line of the report (its usage is its target's cost estimate)."""
    usage = split.host_usage or device.target.estimate(cpu)
    layout = carry_layout(tuple(Field(f"{CARRY_PREFIX}{c}", cpu.carry_bits)
                                for c in cpu.carry_in))
    return {
        "name": device.name, "target": device.target.name,
        "directory": str(device_dir(out, split.devices - 1, device.name).relative_to(out)),
        "tables": list(split.host_tables),
        "carry_in": {**layout, "columns": list(cpu.carry_in),
                     "entry_point": HOST_ENTRY[device.target.name]},
        "carry_out": None,
        "usage": {k: getattr(usage, k) for k in ("stages", "tables", "sram_kbit", "tcam_kbit",
                                                 "entries", "phv_bits", "latency_ns",
                                                 "instructions", "throughput_gpps")},
        "per_stage": [], "limits": device.limits.as_dict(),
    }


def within_limits(usage: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """Per limit the device has: its usage, the limit and whether it holds."""
    out = {}
    for key, limit in limits.items():
        if limit is None or key not in usage:
            continue
        used = usage[key]
        ok = used >= limit if key == "throughput_gpps" else used <= limit
        out[key] = {"used": used, "limit": limit, "ok": bool(ok)}
    return out


def check_agreement(expected: np.ndarray, produced: np.ndarray) -> None:
    """VerificationError unless the chain's classes equal the quantised model's on every test
    sample."""
    bad = np.nonzero(expected != produced)[0]
    if len(bad):
        i = int(bad[0])
        raise VerificationError(
            f"the chain disagrees with the quantised model on {len(bad)} of {len(expected)} test "
            f"samples (first: row {i}, model class {expected[i]}, chain class {produced[i]})")


def evaluation_view(best: Any) -> Any:
    """What compile.write_model reads of an Evaluation."""
    from types import SimpleNamespace

    return SimpleNamespace(trained=best.trained, family=best.family, params=best.params,
                           problem=best.problem)


def verify_chain_packets(split: Split, installed: list[Any], best: Built, table: Any,
                         host: tuple[Path, Device, Any] | None = None) -> dict[str, Any]:
    """Every packet of the capture through the chain of twins (and the ``host`` ending it: its
    output directory, device and program, run for real) against the quantised model on the
    reference features of the same packets."""
    from homunculus.data.traffic import per_capture
    from homunculus.features.reference import reference_features

    info = best.problem.dataset.traffic
    result, classified, carried = run_switch_packets(split, table, installed)
    values, _ = per_capture(table, lambda t: reference_features(t, list(info.features),
                                                                info.config))
    expected = best.trained.predict_quantised(values[classified])
    produced = result.class_index
    if host is not None:
        produced = run_host_packets(*host, split, table[classified].reset_index(drop=True),
                                    carried)
    bad = np.nonzero(expected != produced)[0]
    if len(bad):
        raise VerificationError(f"the chain disagrees with the model on {len(bad)} of "
                                f"{len(expected)} classified packets")
    return {"packets": len(table), "classified": int(classified.sum()), "agreement": 1.0,
            "host": None if host is None else host[1].name}


def run_host_packets(out: Path, device: Device, cpu: Any, split: Split, table: Any,
                     carried: dict[str, np.ndarray] | None) -> np.ndarray:
    """The host's built program on the packets the switches classified (``table``, in order),
    each from the partial scores the last switch carried: the XDP program (BPF_PROG_TEST_RUN
    through ``hmn_xdp``) on the packet's frame with the carry header inserted after Ethernet
    (it must classify every one and strip the header); the C library on the header fields its
    caller parses. Per packet, the host's class."""
    from homunculus.targets.p4.twin import header_feature_values

    partial = partial_scores(carried, cpu, len(table))
    where = device_dir(out, split.devices - 1, device.name)
    if device.target.name == "xdp":
        from homunculus.targets.xdp.runner import load_built, packet_frame, run_classified

        plain = [packet_frame(row) for row in table.to_dict("records")]
        frames = [f[:12] + (0x88B5).to_bytes(2, "big")
                  + carry_header(p, cpu, int.from_bytes(f[12:14], "big")) + f[14:]
                  for f, p in zip(plain, partial, strict=True)]
        obj, _ = load_built(where)
        with obj:
            env, seen, runs = run_classified(obj, cpu, frames)
        if not seen.all():
            raise VerificationError(f"the {device.name} host classifies {int(seen.sum())} of "
                                    f"the {len(frames)} packets the switches carried on")
        for frame, run in zip(plain, runs, strict=True):  # the frame leaves as it came
            left = bytes(run.data)
            if len(left) != len(frame) or left[:14] != frame[:14]:
                raise VerificationError(f"the {device.name} host did not strip the carry "
                                        "header")
        return env[:, 0]
    from homunculus.targets.c.twin import CLibrary

    values, _ = header_feature_values(cpu, table)
    (library,) = sorted((where / "c").glob("libhmn_*.so"))
    return CLibrary(library).classify_carried(values, partial).class_index


def best_on_one_device(trials: list[Any], first: Device) -> dict[str, Any]:
    """Among the search's feasible trials, the best whose model fits the first device alone
    (the same trials: what the chain bought over one device)."""
    budget = first.stage_budget
    fits = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("feasible")
            and (budget is None or t.user_attrs["usage"]["stages"] <= budget)]
    if not fits:
        return {"metric": None, "family": None, "trial": None}
    best = max(fits, key=lambda t: t.user_attrs["metric"])
    return {"metric": best.user_attrs["metric"], "family": best.user_attrs["family"],
            "trial": best.number}
