"""Compile an MLP split by layers over a chain of hosts (C, XDP; schedule/split_mlp.py).

The search sees the chain as one target (:class:`HostChainTarget`): an MLP configuration is
feasible when its layers split over the chain, each device's part within that device's limits;
its usage counts the devices used as "stages" (the search's second objective: fewer devices).
The best configuration is split, each part's program (C library built with gcc, or XDP program
built with clang with its snapshot) is emitted into ``OUT/devices/<i>_<name>/``, and the chain
of real programs, each fed the previous one's carried activations, must agree 100% with the
quantised model on the test set (C through ctypes, XDP in the kernel with BPF_PROG_TEST_RUN)
and, for a spec learning from traffic, on every packet of the capture: the first device (XDP,
with the flow registers) inserts the carry header, the others strip and rewrite it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from homunculus.compile import (
    CompileOptions,
    check_algorithms,
    choose_candidates,
    positive_class,
    verdict_plan,
    write_model,
)
from homunculus.errors import VerificationError
from homunculus.frontend.schedule_plan import ChainPlan
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.names import sanitise_identifier
from homunculus.outputs import check_out_dir, open_output
from homunculus.progress import search_progress
from homunculus.report.summary import candidates_section, confusion, trial_rows
from homunculus.schedule.chain import (
    ChainResult,
    chain_budget,
    chain_study,
    check_agreement,
    evaluation_view,
    headline,
)
from homunculus.schedule.search import build
from homunculus.schedule.split import Device
from homunculus.schedule.split_mlp import (
    CARRY_ETHER_TYPE,
    MlpSplit,
    Part,
    carry_header,
    describe,
    partition_mlp,
    run_parts,
)
from homunculus.search.metrics import score
from homunculus.search.problem import make_problem
from homunculus.search.study import run_search, shipped_configuration
from homunculus.targets.base import Limits, Usage

OBJECTIVES = ("metric", "stages")
MLP_FAMILY = "mlp"


@dataclass(frozen=True)
class HostChainTarget:
    """A chain of hosts as one search target: an MLP is feasible when its layers split over
    the chain (fewest devices, then fewest header bytes); ``stages`` counts the devices used
    (one more than the chain has when it does not split)."""

    devices: tuple[Device, ...]
    default_port: int = 1
    cuts: tuple[int, ...] | None = None
    name: str = "host-chain"
    arch: str = "cpu"
    supports_dense: bool = True
    lowering: str = "cpu"

    def limits(self) -> Limits:
        return Limits(stages=len(self.devices))

    def prepare(self, program: CpuProgram) -> CpuProgram:
        """Nothing: each device's part is cut from the whole CPU program."""
        return program

    def split(self, program: CpuProgram) -> MlpSplit:
        return partition_mlp(program, list(self.devices), self.default_port, self.cuts)

    def estimate(self, program: CpuProgram) -> Usage:
        return chain_usage(self.split(program), len(self.devices))


def chain_usage(split: MlpSplit, n_devices: int) -> Usage:
    """One Usage for the chain: the devices used as stages, memory and entries summed, the
    latency summed along the chain, the slowest device's rate, the most verifier
    instructions of one device."""
    if not split.feasible:
        return Usage(stages=n_devices + 1, tables=0, sram_kbit=0.0, tcam_kbit=0.0, entries=0,
                     phv_bits=0, throughput_gpps=0.0, latency_ns=0.0)
    u = [p.usage for p in split.parts]
    return Usage(stages=split.devices, tables=sum(x.tables for x in u),
                 sram_kbit=sum(x.sram_kbit for x in u), tcam_kbit=0.0,
                 entries=sum(x.entries for x in u), phv_bits=0,
                 throughput_gpps=min(x.throughput_gpps for x in u),
                 latency_ns=sum(x.latency_ns for x in u),
                 instructions=max(x.instructions for x in u))


@dataclass
class MlpChainResult(ChainResult):
    """A compiled MLP chain of hosts: its directory and report (schedule/chain.py's result)."""

    def summary(self) -> list[str]:
        r = self.report
        m = r["metrics"]
        lines = headline(r, "mlp split by layers", "host(s)")
        for d in r["devices"]:
            first, last = d["layers"]
            lines.append(f"  {d['name']} ({d['target']}): layers {first}..{last}, "
                         f"{d['usage']['latency_ns']:.0f} ns estimated, carries in "
                         f"{d['carry_in']} and out {d['carry_out']} activation(s)")
        if r["packet_simulation"]:
            sim = r["packet_simulation"]
            lines.append(f"  packets: {sim['classified']} classified of {sim['packets']} "
                         "through the chain agree 100% with the model")
        one = r["one_device"]
        lines.append(f"  the best MLP of the search that fits {r['chain'][0]} alone: "
                     + ("none" if one["metric"] is None else
                        f"{one['metric']:.4f} cross-validated (the chain's: "
                        f"{m['validation_quantised']:.4f})"))
        return lines


def check_cuts(plan: ChainPlan, devices: list[Device]) -> tuple[int, ...] | None:
    """The spec's ``cuts`` (the first layer of each device after the first), checked against
    the chain: strictly increasing, at least 1, one device each."""
    cuts = plan.cuts
    if cuts is None:
        return None
    if not all(isinstance(c, int) and c >= 1 for c in cuts) or any(
            b <= a for a, b in zip(cuts, cuts[1:], strict=False)):
        raise plan.plan.error("cuts", f"cuts {list(cuts)} leave a device without layers: each "
                                      "is the first layer of the next device, strictly "
                                      "increasing from 1")
    if len(cuts) + 1 > len(devices):
        raise plan.plan.error("cuts", f"cuts {list(cuts)} need {len(cuts) + 1} devices; the "
                                      f"chain has {len(devices)}")
    return tuple(cuts)


def check_smallest_fits(problem: Any, target: HostChainTarget, base: Any) -> None:
    """Refuse a chain that cannot hold even the smallest MLP split by layers, naming the
    device and the limit that stops it."""
    from homunculus.models.base import get_family
    from homunculus.search.problem import lower_for

    ds = problem.dataset
    smallest = get_family(MLP_FAMILY).smallest_model(ds.widths, ds.n_classes)
    split = target.split(lower_for(target, smallest, ds, problem.verdict, None))
    if not split.feasible:
        raise base.error("platforms", "the MLP does not fit the chain even split by layers: "
                                      f"the smallest MLP does not ({split.reason}); add a "
                                      "device, or relax its constraints")


def compile_mlp_chain(plan: ChainPlan, options: CompileOptions,
                      devices: list[Device]) -> MlpChainResult:
    base = plan.plan
    seed = base.search.seed if options.seed is None else options.seed
    requested = check_algorithms(base)
    if requested is not None and requested != [MLP_FAMILY]:
        raise base.error("model.algorithms", "a chain of hosts splits an MLP by layers: set "
                                             f"algorithms: [{MLP_FAMILY}] (got {requested})")
    cuts = check_cuts(plan, devices)
    dataset = base.load_data()
    if dataset.traffic is not None and devices[0].target.name != "xdp":
        raise base.error("platforms[0].target", "a spec learning from traffic splits an MLP "
                                                "over hosts from an XDP first device (it keeps "
                                                "the flow registers)")
    verdict = verdict_plan(base, dataset)
    target = HostChainTarget(tuple(devices), verdict.default_port, cuts)
    problem = replace(make_problem(dataset, target, target.limits(), base.model.metric,
                                   positive_class(base, dataset), verdict, seed,
                                   base.search.validation_fraction, base.select_features,
                                   base.search.cv_folds),
                      flow_decisions=False)  # the last device keeps no flow state to decide
    check_smallest_fits(problem, target, base)
    candidates, _ = choose_candidates(problem, [MLP_FAMILY])
    budget = chain_budget(base, options)
    out_dir = check_out_dir(options.out_dir, [*base.inputs, *options.inputs])
    with open_output(out_dir) as output:
        output.start(options.resume)
        study = chain_study(output, base, OBJECTIVES, seed, budget)
        with search_progress(budget.trials, base.model.metric, options.progress) as progress:
            result = run_search(problem, [MLP_FAMILY], OBJECTIVES, budget, study, progress)
        feasible = [t for t in result.trials if t.state.name == "COMPLETE"
                    and t.user_attrs.get("feasible")]
        best_trial = result.best_trial
        params = shipped_configuration(best_trial)[1]
        best = build(problem, MLP_FAMILY, params, best_trial.user_attrs["metric"],
                     best_trial.number)
        split = target.split(best.pipeline)
        if not feasible or not split.feasible:
            raise base.error("platforms", "the MLP does not fit the chain even split by "
                                          f"layers: {split.reason} (tried {len(result.trials)} "
                                          "configurations; add a device, or relax its "
                                          "constraints)")
        program = sanitise_identifier(base.name, "hmn")
        report = write_mlp_chain(output.work, plan, devices, best, split, result, candidates,
                                 program, seed)
        output.commit()
    return MlpChainResult(out_dir, report)


def device_dir(out: Path, d: int, name: str) -> Path:
    return out / "devices" / f"{d}_{sanitise_identifier(name, 'dev')[4:]}"


def run_built_parts(out: Path, split: MlpSplit, devices: list[Device], x: np.ndarray) -> Any:
    """The chain of built programs on feature rows ``x``: each part's C library (ctypes) or XDP
    program (BPF_PROG_TEST_RUN) fed the previous part's activations as the header's bytes;
    the last part's class and verdict fields."""
    from homunculus.targets.c.twin import CLibrary
    from homunculus.targets.xdp.runner import load_built, run_carry_vectors, run_vectors

    def runner(part: Part, inputs: np.ndarray) -> Any:
        where = device_dir(out, part.device, devices[part.device].name)
        if devices[part.device].target.name == "xdp":
            obj, _ = load_built(where)
            with obj:
                if part.carries:
                    return run_carry_vectors(obj, part.program, inputs)
                return run_vectors(obj, part.program, inputs)[0].fields
        (library,) = sorted((where / "c").glob("libhmn_*.so"))
        lib = CLibrary(library)
        return lib.carry_out(inputs, part.carries) if part.carries else \
            lib.classify_verdict(inputs).fields

    return run_parts(split, x, runner)


def best_on_one_device(trials: list[Any]) -> dict[str, Any]:
    """Among the search's feasible trials, the best whose MLP needs one device (what the chain
    bought over one host)."""
    fits = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("feasible")
            and t.user_attrs["usage"]["stages"] <= 1]
    if not fits:
        return {"metric": None, "trial": None}
    best = max(fits, key=lambda t: t.user_attrs["metric"])
    return {"metric": best.user_attrs["metric"], "trial": best.number}


def with_header(frame: bytes, activations: np.ndarray, n_in: int) -> bytes:
    """``frame`` with its carry header (``n_in`` activations; none when 0) replaced by one
    holding ``activations``: what a C part's caller sends on."""
    inner = frame[12:14] if not n_in else frame[14 + n_in:16 + n_in]
    rest = frame[14:] if not n_in else frame[16 + n_in:]
    return frame[:12] + CARRY_ETHER_TYPE.to_bytes(2, "big") + carry_header(
        activations, int.from_bytes(inner, "big")) + rest


def run_chain_packets(out: Path, split: MlpSplit, devices: list[Device], table: Any
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Every packet of the capture through the chain of built programs. The first part (XDP)
    runs every packet in capture order (its flow registers, the test clock at capture time):
    the packets it classifies leave with the carry header. Each later XDP part runs those
    frames through ``hmn_xdp`` (strip, compute, insert again or classify); a C part is fed the
    header's bytes and its caller's work (rewriting the header) is done here. Per packet, the
    last part's class (-1: not classified), and the mask of packets the first part
    classified."""
    from homunculus.targets.c.twin import CLibrary
    from homunculus.targets.xdp.loader import prog_test_run
    from homunculus.targets.xdp.runner import MAIN_PROG, load_built, run_classified, run_frames

    classes = np.full(len(table), -1, dtype=np.int64)
    frames: list[bytes] = []
    mask = np.zeros(len(table), dtype=bool)
    for part in split.parts:
        device = devices[part.device]
        where = device_dir(out, part.device, device.name)
        n_in = len(part.program.features) if part.model.carried_in else 0
        if device.target.name == "xdp":
            obj, _ = load_built(where)
            with obj:
                if part.first == 0:
                    _, mask, runs = run_frames(obj, part.program, table)
                    frames = [bytes(r.data) for r, m in zip(runs, mask, strict=True) if m]
                elif part.carries:
                    fd = obj.prog_fd(MAIN_PROG)
                    frames = [bytes(prog_test_run(fd, f).data) for f in frames]
                else:
                    env, seen, _ = run_classified(obj, part.program, frames)
                    classes[np.flatnonzero(mask)] = np.where(seen, env[:, 0], -1)
            continue
        (library,) = sorted((where / "c").glob("libhmn_*.so"))
        lib = CLibrary(library)
        x = np.asarray([list(f[14:14 + n_in]) for f in frames], dtype=np.int64).reshape(
            len(frames), n_in)
        if part.carries:
            act = lib.carry_out(x, part.carries)
            frames = [with_header(f, a, n_in) for f, a in zip(frames, act, strict=True)]
        elif len(frames):
            classes[np.flatnonzero(mask)] = lib.classify_verdict(x).class_index
    return classes, mask


def verify_chain_packets(out: Path, split: MlpSplit, devices: list[Device], whole: CpuProgram,
                         table: Any) -> dict[str, Any]:
    """The chain of built programs over every packet of the capture against the whole
    program's reference (the quantised model on the reference features of the same packets,
    flow state per capture): the same packets classified, each in the same class."""
    from homunculus.targets.xdp.runner import reference_packets

    classes, mask = run_chain_packets(out, split, devices, table)
    expected, want = reference_packets(whole, table)
    if not np.array_equal(mask, want):
        raise VerificationError(f"the chain classifies {int(mask.sum())} packets of "
                                f"{len(table)}; the model {int(want.sum())}")
    bad = np.nonzero(classes[mask] != expected.class_index)[0]
    if len(bad):
        raise VerificationError(f"the chain disagrees with the model on {len(bad)} of "
                                f"{int(mask.sum())} classified packets")
    return {"packets": len(table), "classified": int(mask.sum()), "agreement": 1.0}


def write_mlp_chain(out: Path, plan: ChainPlan, devices: list[Device], best: Any,
                    split: MlpSplit, result: Any, candidates: list[Any], program: str,
                    seed: int) -> dict[str, Any]:
    """Emit every part, verify the chain of built programs, write the model and the report."""
    for part in split.parts:
        where = device_dir(out, part.device, devices[part.device].name)
        devices[part.device].target.emit(part.program, where, f"{program}_{part.device}")
    ds = best.problem.dataset
    expected = best.trained.predict_quantised(ds.x_test)
    produced = run_built_parts(out, split, devices, ds.x_test)["class_id"]
    check_agreement(expected, produced)
    packets = None
    if ds.traffic is not None and ds.traffic.table is not None:
        packets = verify_chain_packets(out, split, devices, best.pipeline, ds.traffic.table)
    write_model(out, evaluation_view(best), ds, best.problem.verdict)
    metric = best.problem.metric

    def metric_of(pred: np.ndarray) -> float:
        return score(metric, ds.y_test, pred, ds.n_classes, best.problem.positive)

    rows = describe(split, devices)
    for row, part in zip(rows, split.parts, strict=True):
        row["directory"] = str(device_dir(out, part.device, row["name"]).relative_to(out))
    trials = trial_rows(result.trials)
    names = [d.name for d in devices]
    report = {
        "kind": "chain", "split": "layers", "name": plan.name, "target": "chain",
        "chain": names, "family": best.family, "params": best.params, "metric": metric,
        "class_labels": list(ds.class_labels), "layers": split.layers,
        "devices_used": split.devices, "header_bytes": split.header_bytes,
        "carry_bytes": list(split.carry_bytes), "devices": rows,
        "carry_header": {"ether_type": "0x88B5", "field_bits": 8,
                         "fields": "one int8 activation per byte (two's complement, neuron "
                                   "order), then the displaced EtherType"},
        "metrics": {"float": metric_of(best.trained.predict_float(ds.x_test)),
                    "quantised": metric_of(expected), "pipeline": metric_of(produced),
                    "agreement": float(np.mean(expected == produced)),
                    "validation_quantised": best.metric, "test_samples": len(ds.y_test)},
        "packet_simulation": packets,
        "confusion_matrix": confusion(ds.y_test, produced, ds.class_labels),
        "one_device": best_on_one_device(result.trials),
        "trials": trials, "candidates": candidates_section(candidates),
        "search": {"trials": len(trials), "infeasible": sum(not r["feasible"] for r in trials),
                   "seconds": result.seconds, "seed": seed,
                   "objectives": [d.name.lower() for d in result.study.directions]},
    }
    (out / "chain.json").write_text(json.dumps(
        {"chain": names, "split": "layers", "carry_ether_type": "0x88B5",
         "devices": [{k: r[k] for k in ("name", "target", "directory", "layers", "carry_in",
                                        "carry_out", "carry_out_bytes")} for r in rows]},
        indent=1) + "\n")
    from homunculus.schedule.report import write_schedule_report

    write_schedule_report(out, report, "chain_mlp.html.j2")
    return report
