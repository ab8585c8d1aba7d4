"""Kernel and C targets at native speed: XDP ns/packet over a parse-only program, the C library
against the float models' predict and tl2cgen, and the cost model's estimates next to what is
measured.

For every configuration (family and size) and every seed, a model is trained on the bundled IoT
data (``examples/iot/spec.yaml``, 7 features, its DSCP verdict) and lowered to the CPU program
(passes/lower_cpu.py); everything of one configuration and seed is measured back to back, so the
ratios compare runs made under the same load:

1. **XDP**: the program is built for its default capacity (headroom 2) and loaded (the
   verifier's instructions processed are recorded); frames carrying test rows (IPv4 header
   fields and the UDP feature header) run through ``hmn_xdp`` with ``BPF_PROG_TEST_RUN``
   (``repeat`` runs per call, best of three calls per frame, mean over the frames), interleaved
   with a parse-only XDP program (Ethernet/VLAN/IPv4/TCP/UDP parse, then XDP_PASS; same clang
   flags). "Added" is the difference. Every frame is first checked against the reference.
2. **C**: the library is timed in C (``targets/c/timing.py``: one ``hmn_classify`` call per row,
   and ``hmn_classify_batch``, best of ``--runs`` runs of at least 2 ms: on a shared machine many
   short runs find an undisturbed one, a few long ones rarely do), for trees in every tree code
   (flat arrays, if/else, and for boosted trees the bitvector code) and the default; against
   the float model's ``predict`` on the same rows
   (scikit-learn / xgboost, one thread; PyTorch for the MLP) and, for dt/rf/xgb, tl2cgen
   compiling the same float model (gcc, one thread; installed by this script into
   ``~/.cache/homunculus-bench``, never into the project).
3. **Estimates**: the cost models' ``latency_ns`` (and, for XDP, the verifier instructions)
   next to the measurements. ``--fit`` prints least-squares constants for both cost models
   from this run's measurements.

    python bench/kernel.py [--seeds 0 1 2] [--sizes dt-d8 rf-t16 ...] [--repeat 100000]
                           [--frames 8] [--batch 10000] [--runs 40] [--skip-xdp] [--skip-c]
                           [--no-tl2cgen] [--fit]

Needs root (BPF programs), clang, gcc and libbpf. Build outputs go to a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import DEFAULT_SPEC, STDERR, markdown_table, source_note, source_state

from homunculus.compile import verdict_plan
from homunculus.data.dataset import Dataset
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.ir.cpu import CpuProgram, LookupModel, TreeModel
from homunculus.ir.pipeline import VerdictPlan
from homunculus.models.base import TrainedModel, get_family
from homunculus.passes.lower_cpu import lower_cpu
from homunculus.targets.c import resources as c_resources
from homunculus.targets.c.codegen import resolve_tree_code, tree_leaves
from homunculus.targets.c.profiles import CProfile
from homunculus.targets.c.timing import time_program
from homunculus.targets.xdp import cost as xdp_cost
from homunculus.targets.xdp.build import CLANG_FLAGS, build_source, find_clang
from homunculus.targets.xdp.codegen import FEATURE_UDP_PORT
from homunculus.targets.xdp.loader import BpfObject, load_object, prog_test_run
from homunculus.targets.xdp.runner import (
    env_results,
    load_built,
    packet_frame,
    pinned_to_one_cpu,
    reference,
)
from homunculus.targets.xdp.target import XdpTarget

UDP = 17
STAT_CLASSIFIED = 2  # hmn_stats index of classified packets
TL2CGEN_DIR = Path.home() / ".cache" / "homunculus-bench" / "tl2cgen"
TL2CGEN_PINS = ("tl2cgen==1.0.0", "treelite>=4.1,<5")

# label -> (family, parameters overriding default_params())
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "dt-d3": ("dt", {"dt_max_depth": 3}),
    "dt-d8": ("dt", {"dt_max_depth": 8}),
    "dt-d10": ("dt", {"dt_max_depth": 10}),
    "rf-t4": ("rf", {"rf_n_estimators": 4}),
    "rf-t16": ("rf", {"rf_n_estimators": 16}),
    "xgb-r4": ("xgb", {"xgb_n_estimators": 4}),
    "xgb-r16": ("xgb", {"xgb_n_estimators": 16}),
    "gnb-b8": ("gnb", {"gnb_bins": 8}),
    "gnb-b32": ("gnb", {"gnb_bins": 32}),
    "cnb-b16": ("cnb", {"cnb_bins": 16}),
    "svm-b16": ("svm", {"svm_bins": 16}),
    "kmeans-b16": ("kmeans", {"kmeans_bins": 16}),
    "mlp-1x8": ("mlp", {"mlp_layers": 1, "mlp_width_0": 8}),
    "mlp-2x32": ("mlp", {"mlp_layers": 2, "mlp_width_0": 32, "mlp_width_1": 32}),
}
# issue 10's goals: XDP added ns over parse-only; C batch speed-up over predict (trees)
XDP_GOALS = {"dt-d8": 20.0, "rf-t16": 200.0, "gnb-b8": 40.0, "gnb-b32": 40.0, "cnb-b16": 40.0,
             "svm-b16": 40.0, "kmeans-b16": 40.0, "mlp-2x32": 600.0}
C_GOAL_SPEEDUP = 5.0
RUN_MS = 2.0  # each C timing run lasts at least this long; the best of --runs runs counts
C_GOAL_SINGLE_NS = {"dt-d8": 50.0}
TREE_FAMILIES = ("dt", "rf", "xgb")

# IPv4 header fields a feature may be bound to -> the packet-table column packet_frame reads
HEADER_COLUMNS = {"ipv4.total_len": "ip_total_len", "ipv4.ttl": "ip_ttl",
                  "ipv4.protocol": "ip_proto", "ipv4.diffserv": "ip_diffserv"}

PARSE_ONLY_C = r"""// Parse-only baseline: Ethernet, two VLAN tags, IPv4, TCP/UDP ports; XDP_PASS.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct vlan_t {
    __be16 tci;
    __be16 proto;
};

static __always_inline int is_vlan(__be16 proto)
{
    return proto == bpf_htons(0x8100) || proto == bpf_htons(0x88A8) ||
           proto == bpf_htons(0x9100);
}

SEC("xdp")
int parse_only(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip;
    __u32 off = sizeof(struct ethhdr);
    __u32 sport = 0, dport = 0, hdr = 0;
    __be16 proto;

    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    proto = eth->h_proto;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (!is_vlan(proto))
            break;
        struct vlan_t *vh = data + off;
        if ((void *)(vh + 1) > end)
            return XDP_PASS;
        proto = vh->proto;
        off += sizeof(*vh);
    }
    if (proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    ip = data + off;
    if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl != 5)
        return XDP_PASS;
    if ((bpf_ntohs(ip->frag_off) & 0x1FFF) == 0) {
        if (ip->protocol == 6) {
            struct tcphdr *tcp = (void *)(ip + 1);
            if ((void *)(tcp + 1) <= end) {
                sport = bpf_ntohs(tcp->source);
                dport = bpf_ntohs(tcp->dest);
            }
        } else if (ip->protocol == 17) {
            struct udphdr *udp = (void *)(ip + 1);
            if ((void *)(udp + 1) <= end) {
                sport = bpf_ntohs(udp->source);
                dport = bpf_ntohs(udp->dest);
            }
        }
    }
    hdr = bpf_ntohs(ip->tot_len) ^ ip->ttl ^ ip->tos ^ ip->protocol;
    // keep the parsed values live without a store: the parse must not be optimised away
    asm volatile("" : : "r"(sport), "r"(dport), "r"(hdr));
    return XDP_PASS;
}
"""


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    label: str
    seed: int
    trained: TrainedModel
    dataset: Dataset
    program: CpuProgram


def load_data(spec: Path) -> tuple[Dataset, VerdictPlan]:
    plan = plan_from_yaml(spec)
    dataset = plan.load_data()
    return dataset, verdict_plan(plan, dataset)


def train(label: str, seed: int, dataset: Dataset, verdict: VerdictPlan) -> Model:
    family_name, overrides = CONFIGS[label]
    family = get_family(family_name)
    trained = family.train(family.default_params() | overrides, dataset.x_train,
                           dataset.y_train, dataset.n_classes, dataset.widths, seed)
    program = lower_cpu(trained.quantised, dataset.features, dataset.class_labels, verdict,
                        trained.winner_to_class)
    return Model(label, seed, trained, dataset, program)


def size_of(program: CpuProgram) -> str:
    model = program.model
    if isinstance(model, TreeModel):
        return (f"{len(model.trees)} trees, {sum(t.n_nodes for t in model.trees)} nodes, "
                f"depth {model.depth}")
    if isinstance(model, LookupModel):
        return f"{sum(e.n_bins for e in model.encoders)} bins"
    return f"{sum(la.shape[0] * la.shape[1] for la in model.layers)} weights"


# ----------------------------------------------------------------------------- frames


def feature_header(values: np.ndarray, program: CpuProgram) -> bytes:
    """The carried features (bound to no header), bit-packed MSB first and padded to a byte."""
    bits, width = 0, 0
    for value, feat in zip(values, program.features, strict=True):
        if feat.flow or feat.header_field is not None:
            continue
        bits = (bits << feat.field.width) | (int(value) & feat.field.max_value)
        width += feat.field.width
    pad = -width % 8
    return (bits << pad).to_bytes((width + pad) // 8, "big")


def frame_values(row: np.ndarray, program: CpuProgram) -> np.ndarray:
    """The features as the program sees them: ipv4.protocol is UDP (the feature header rides
    on UDP); everything else is the row's value."""
    values = np.asarray(row, dtype=np.int64).copy()
    for j, feat in enumerate(program.features):
        if feat.header_field == "ipv4.protocol":
            values[j] = UDP
    return values


def feature_frame(values: np.ndarray, program: CpuProgram) -> bytes:
    """An Ethernet/IPv4/UDP frame to the feature-header port carrying ``values``."""
    header = {"ip_total_len": 64, "ip_ttl": 64, "ip_proto": UDP, "ip_diffserv": 0}
    for value, feat in zip(values, program.features, strict=True):
        if feat.header_field is not None:
            if feat.header_field not in HEADER_COLUMNS:
                raise ValueError(f"no frame builder for header field {feat.header_field}")
            header[HEADER_COLUMNS[feat.header_field]] = int(value)
    fh = feature_header(values, program)
    total = max(header["ip_total_len"], 28 + len(fh))
    row = {"ip_src": 0x0A000001, "ip_dst": 0x0A000002, "eth_type": 0x0800, "has_ipv4": True,
           "ip_ihl": 5, "ip_id": 1, "ip_frag_offset": 0, "has_tcp": False, "has_udp": True,
           "src_port": 40000, "dst_port": FEATURE_UDP_PORT, "udp_len": total - 20,
           "wire_len": 0, **header}
    frame = packet_frame(row)
    return frame[:42] + fh + frame[42 + len(fh):]


def bench_rows(dataset: Dataset, n: int) -> np.ndarray:
    """``n`` test rows, drawn once with a fixed seed."""
    rng = np.random.default_rng(0)
    return dataset.x_test[rng.choice(len(dataset.x_test), size=n, replace=False)]


# ----------------------------------------------------------------------------- XDP


@dataclass(frozen=True)
class XdpRun:
    label: str
    seed: int
    size: str
    insns: int
    vec_insns: int
    model_ns: float
    base_ns: float
    estimate_ns: float
    estimate_insns: int
    check: str
    work: dict[str, int]
    structure: dict[str, int]

    @property
    def added_ns(self) -> float:
        return self.model_ns - self.base_ns


def percpu_u64(obj: BpfObject, map_name: str, key: int, cpu: int) -> int:
    values = obj.map(map_name).lookup(key)
    assert isinstance(values, list)
    return struct.unpack_from("<Q", values[cpu], 0)[0]


def check_frames(obj: BpfObject, program: CpuProgram, frames: list[bytes], values: np.ndarray,
                 cpu: int) -> str:
    """Run each frame once: is it classified, and as the reference says?"""
    expected = reference(program, values).class_index
    fd = obj.prog_fd("hmn_xdp")
    classified = agree = 0
    for frame, want in zip(frames, expected, strict=True):
        before = percpu_u64(obj, "hmn_stats", STAT_CLASSIFIED, cpu)
        prog_test_run(fd, frame)
        if percpu_u64(obj, "hmn_stats", STAT_CLASSIFIED, cpu) != before:
            classified += 1
            agree += env_results(obj, cpu, program)[0] == want
    return f"{classified}/{len(frames)} classified, {agree} as the model"


def time_pair(model_fd: int, base_fd: int, frames: list[bytes], repeat: int,
              tries: int = 3) -> tuple[float, float]:
    """Mean over frames of the best-of-``tries`` ns/run, model and baseline interleaved."""
    model = [float("inf")] * len(frames)
    base = [float("inf")] * len(frames)
    for _ in range(tries):
        for i, frame in enumerate(frames):
            base[i] = min(base[i], prog_test_run(base_fd, frame, repeat=repeat).duration_ns)
            model[i] = min(model[i], prog_test_run(model_fd, frame, repeat=repeat).duration_ns)
    return statistics.fmean(model), statistics.fmean(base)


def xdp_run(model: Model, base: BpfObject, rows: np.ndarray, repeat: int, work: Path,
            cpu: int) -> XdpRun:
    program, target = model.program, XdpTarget()
    out = work / f"xdp_{model.label}_{model.seed}"
    target.emit(program, out, model.label.replace("-", "_"))
    cap = target.capacity(program)
    obj, _ = load_built(out)
    with obj:
        stats = obj.verifier_stats
        values = np.stack([frame_values(r, program) for r in rows])
        frames = [feature_frame(v, program) for v in values]
        check = check_frames(obj, program, frames, values, cpu)
        model_ns, base_ns = time_pair(obj.prog_fd("hmn_xdp"), base.prog_fd("parse_only"),
                                      frames, repeat)
    return XdpRun(model.label, model.seed, size_of(program), stats["hmn_xdp"].insns_processed,
                  stats["hmn_xdp_vec"].insns_processed, model_ns, base_ns,
                  xdp_cost.latency_ns(program, cap), xdp_cost.verifier_insns(program, cap),
                  check, xdp_cost.counts(xdp_cost.work(program, cap)),
                  xdp_cost.structure(program, cap))


def build_parse_only(work: Path) -> BpfObject:
    _, obj = build_source(PARSE_ONLY_C, work / "parse_only", "parse_only")
    return load_object(obj)


# ----------------------------------------------------------------------------- C


@dataclass(frozen=True)
class CRun:
    label: str
    seed: int
    single_ns: float  # default tree code, one hmn_classify per row, in C
    batch_ns: float  # hmn_classify_batch per row, in C
    codes: dict[str, tuple[float, float]]  # tree code -> (single, batch)
    float_name: str
    float_ns: float  # float model predict, batched, per row
    tl2cgen_ns: float | None
    estimate_ns: float
    twin_ok: bool
    counts: dict[str, int] = field(default_factory=dict)
    auto: str = "-"  # the tree code "auto" chose


def median_ns(fn: Callable[[], object], n_items: int, runs: int) -> float:
    """Median over ``runs`` (after one warm-up) of the ns per item of ``fn()``."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / n_items)
    return statistics.median(samples)


def torch_predictor(model: Any) -> Callable[[Any], Any]:
    """A PyTorch network with the FloatMLP's weights (input preprocessing included)."""
    import torch

    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    layers: list[Any] = []
    for i, (w, b) in enumerate(zip(model.weights, model.biases, strict=True)):
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
            linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        layers.append(linear)
        if i < len(model.weights) - 1:
            layers.append(act[model.activation]())
    net = torch.nn.Sequential(*layers).eval()
    shifts = torch.as_tensor(model.input_shift, dtype=torch.int64)

    def predict(x: Any) -> Any:
        with torch.inference_mode():
            a = torch.clamp(torch.bitwise_right_shift(x, shifts), max=127).float() / 127.0
            return net(a).argmax(dim=1)

    return predict


def float_timing(model: Model, xb: np.ndarray, runs: int) -> tuple[str, float]:
    """The float model's batched predict, ns per row (PyTorch for the MLP)."""
    float_model = model.trained.float_model
    if model.trained.family == "mlp":
        import torch

        predict = torch_predictor(float_model)
        xt = torch.as_tensor(xb.astype(np.int64))
        return "torch (same weights)", median_ns(lambda: predict(xt), len(xb), runs)
    kind = type(float_model)
    name = (f"numpy {kind.__name__}" if kind.__module__.startswith("homunculus")
            else f"{kind.__module__.split('.')[0]} {kind.__name__}")
    xf = xb.astype(np.float64)
    return name, median_ns(lambda: float_model.predict(xf), len(xb), runs)


def tl2cgen_module() -> Any:
    """tl2cgen and treelite from the bench's own cache (installed there on first use)."""
    if not TL2CGEN_DIR.is_dir():
        STDERR.print(f"installing {' '.join(TL2CGEN_PINS)} into {TL2CGEN_DIR} (bench only)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target",
                        str(TL2CGEN_DIR), *TL2CGEN_PINS], check=True)
    if str(TL2CGEN_DIR) not in sys.path:
        sys.path.append(str(TL2CGEN_DIR))
    return importlib.import_module("tl2cgen")


def forest_of(tree: Any) -> Any:
    """A one-tree RandomForestClassifier computing exactly ``tree``'s class probabilities."""
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=1)
    forest.estimators_ = [tree]
    for name in ("classes_", "n_classes_", "n_features_in_", "n_outputs_"):
        setattr(forest, name, getattr(tree, name))
    return forest


def tl2cgen_timing(model: Model, xb: np.ndarray, runs: int, work: Path) -> float:
    """tl2cgen's compiled predictor for the same float model, batched, ns per row."""
    tl2cgen = tl2cgen_module()
    import treelite

    float_model = model.trained.float_model
    if model.trained.family == "xgb":
        tl_model = treelite.frontend.from_xgboost(float_model.get_booster())
    elif model.trained.family == "dt":  # treelite imports forests: a forest of this one tree
        tl_model = treelite.sklearn.import_model(forest_of(float_model))
    else:
        tl_model = treelite.sklearn.import_model(float_model)
    lib = work / f"tl2cgen_{model.label}_{model.seed}.so"
    tl2cgen.export_lib(tl_model, toolchain="gcc", libpath=str(lib), nthread=1, verbose=False)
    predictor = tl2cgen.Predictor(str(lib), nthread=1, verbose=False)
    dm = tl2cgen.DMatrix(xb.astype(np.float32))
    return median_ns(lambda: predictor.predict(dm), len(xb), runs)


def c_run(model: Model, xb: np.ndarray, runs: int, tl2: bool, work: Path) -> CRun:
    program = model.program
    codes = {}
    family = model.trained.family
    default = time_program(program, xb, repeats=runs, min_ms=RUN_MS)
    twin_ok = bool(np.array_equal(default.classes, model.trained.predict_quantised(xb)))
    if family in TREE_FAMILIES:
        bitvector = family == "xgb" and max(len(tree_leaves(t)) for t in program.model.trees) <= 64
        for code in ("arrays", "branches", *(("bitvector",) * bitvector)):
            t = time_program(program, xb, tree_code=code, repeats=runs, min_ms=RUN_MS)
            twin_ok &= bool(np.array_equal(t.classes, default.classes))
            codes[code] = (t.single_ns, t.batch_ns)
    name, float_ns = float_timing(model, xb, runs)
    tl2_ns = tl2cgen_timing(model, xb, runs, work) if tl2 and family in TREE_FAMILIES else None
    counts = c_resources.op_counts(program).__dict__
    widths = [f.field.width for f in program.features]
    return CRun(model.label, model.seed, default.single_ns, default.batch_ns, codes, name,
                float_ns, tl2_ns, c_resources.op_counts(program).latency_ns(CProfile()), twin_ok,
                dict(counts), resolve_tree_code(program.model, "auto", widths))


# ----------------------------------------------------------------------------- tables


def mean_sd(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def by_label(runs: Sequence[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    return out


def goal_mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def xdp_table(runs: Sequence[XdpRun], base_insns: int) -> str:
    headers = ["model", "size (seed 0)", "verifier insns hmn_xdp / hmn_xdp_vec",
               "program ns/pkt", "parse-only ns/pkt", "added ns/pkt", "goal (added)",
               "frames check"]
    body: list[list[object]] = [["parse-only baseline", "-", f"{base_insns}", "-", "-", "-", "-",
                                 "-"]]
    for label, rs in by_label(runs).items():
        added = [r.added_ns for r in rs]
        goal = XDP_GOALS.get(label)
        body.append([label, rs[0].size, " / ".join(
            f"{min(v)}-{max(v)}" if min(v) != max(v) else f"{v[0]}"
            for v in ([r.insns for r in rs], [r.vec_insns for r in rs])),
            mean_sd([r.model_ns for r in rs]), mean_sd([r.base_ns for r in rs]),
            mean_sd(added, "{:+.1f}"),
            "-" if goal is None else f"<= {goal:g}: {goal_mark(statistics.fmean(added) <= goal)}",
            "; ".join(sorted({r.check for r in rs}))])
    return markdown_table(headers, body)


def c_table(runs: Sequence[CRun]) -> str:
    headers = ["model", "C ns/call (1 sample, in C)", "C ns/row (batch)", "float model",
               "float ns/row (batch)", "C faster (batch)", "tl2cgen ns/row (batch)",
               "C vs tl2cgen (batch)", "goal", "C = quantised model"]
    body = []
    for label, rs in by_label(runs).items():
        speed = [r.float_ns / r.batch_ns for r in rs]
        tl2 = [r.tl2cgen_ns / r.batch_ns for r in rs if r.tl2cgen_ns is not None]
        goals = []
        family = CONFIGS[label][0]
        if family in TREE_FAMILIES:
            goals.append(f">= {C_GOAL_SPEEDUP:g}x predict: "
                         f"{goal_mark(statistics.fmean(speed) >= C_GOAL_SPEEDUP)}")
            if tl2:
                goals.append(f">= tl2cgen: {goal_mark(statistics.fmean(tl2) >= 1.0)}")
        if label in C_GOAL_SINGLE_NS:
            single = statistics.fmean(r.single_ns for r in rs)
            goals.append(f"1 sample <= {C_GOAL_SINGLE_NS[label]:g} ns: "
                         f"{goal_mark(single <= C_GOAL_SINGLE_NS[label])}")
        body.append([label, mean_sd([r.single_ns for r in rs]),
                     mean_sd([r.batch_ns for r in rs]), rs[0].float_name,
                     mean_sd([r.float_ns for r in rs]), mean_sd(speed, "{:.1f}x"),
                     mean_sd([r.tl2cgen_ns for r in rs if r.tl2cgen_ns is not None])
                     if tl2 else "-", mean_sd(tl2, "{:.1f}x") if tl2 else "-",
                     "; ".join(goals) or "-", "yes" if all(r.twin_ok for r in rs) else "NO"])
    return markdown_table(headers, body)


def tree_code_table(runs: Sequence[CRun]) -> str:
    codes = ("arrays", "branches", "bitvector")
    headers = ["model", *(f"{c} ns/call" for c in codes), *(f"{c} ns/row (batch)" for c in codes),
               "fastest (batch)", "default (auto)"]
    body = []
    for label, rs in by_label(runs).items():
        if not rs[0].codes:
            continue
        cells, means = [], {}
        for i in (0, 1):
            for c in codes:
                vals = [r.codes[c][i] for r in rs if c in r.codes]
                cells.append(mean_sd(vals) if vals else "-")
                if i == 1 and vals:
                    means[c] = statistics.fmean(vals)
        best = min(means, key=means.__getitem__)
        second = sorted(means.values())[1] if len(means) > 1 else means[best]
        body.append([label, *cells, f"{best} ({second / means[best]:.2f}x next)", rs[0].auto])
    return markdown_table(headers, body)


def estimate_table(xdp: Sequence[XdpRun], c: Sequence[CRun]) -> str:
    headers = ["model", "XDP latency_ns est.", "XDP measured (program ns/pkt)", "est./meas.",
               "XDP verifier insns est.", "measured", "est./meas.", "C latency_ns est.",
               "C measured (ns/call)", "est./meas."]
    xs, cs = by_label(xdp), by_label(c)
    body = []
    for label in dict.fromkeys([*xs, *cs]):
        row: list[object] = [label]
        if label in xs:
            rs = xs[label]
            row += [mean_sd([r.estimate_ns for r in rs]), mean_sd([r.model_ns for r in rs]),
                    mean_sd([r.estimate_ns / r.model_ns for r in rs], "{:.2f}"),
                    mean_sd([r.estimate_insns for r in rs], "{:.0f}"),
                    mean_sd([r.insns for r in rs], "{:.0f}"),
                    mean_sd([r.estimate_insns / r.insns for r in rs], "{:.2f}")]
        else:
            row += ["-"] * 6
        if label in cs:
            rs = cs[label]
            row += [mean_sd([r.estimate_ns for r in rs]), mean_sd([r.single_ns for r in rs]),
                    mean_sd([r.estimate_ns / r.single_ns for r in rs], "{:.2f}")]
        else:
            row += ["-"] * 3
        body.append(row)
    within = [abs(r.estimate_ns / r.model_ns - 1) <= 0.25 for r in xdp]
    within_i = [abs(r.estimate_insns / r.insns - 1) <= 0.25 for r in xdp]
    within_c = [abs(r.estimate_ns / r.single_ns - 1) <= 0.25 for r in c]
    misses = [f"{r.label} seed {r.seed} ({r.estimate_ns:.1f} vs {r.single_ns:.1f} ns)"
              for r, ok in zip(c, within_c, strict=True) if not ok]
    summary = (f"\n\nWithin 25%: XDP latency {sum(within)}/{len(within)} runs, XDP verifier "
               f"instructions {sum(within_i)}/{len(within_i)}, C latency "
               f"{sum(within_c)}/{len(within_c)}"
               + (f" (C misses: {'; '.join(misses)})." if misses else "."))
    return markdown_table(headers, body) + summary


# ----------------------------------------------------------------------------- fitting


def nnls_fit(rows: list[dict[str, float]], y: list[float]) -> dict[str, float]:
    """Non-negative least squares of y on the count columns (relative error weighted)."""
    from scipy.optimize import nnls

    keys = sorted({k for r in rows for k, v in r.items() if v})
    a = np.array([[r.get(k, 0) for k in keys] for r in rows], dtype=float)
    b = np.asarray(y, dtype=float)
    weight = 1.0 / b
    coef, _ = nnls(a * weight[:, None], b * weight)
    return {k: round(float(c), 3) for k, c in zip(keys, coef, strict=True)}


def fit_report(xdp: Sequence[XdpRun], c: Sequence[CRun]) -> str:
    lines = []
    if xdp:
        ns = nnls_fit([r.work for r in xdp], [r.model_ns for r in xdp])
        insns = nnls_fit([r.structure for r in xdp], [float(r.insns) for r in xdp])
        lines += [f"XDP ns per operation: {ns}", f"XDP verifier instructions: {insns}"]
    if c:
        counts = [{**r.counts, "call": 1} for r in c]
        lines.append(f"C ns per operation: {nnls_fit(counts, [r.single_ns for r in c])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report


def command_output(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "unknown"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> str:
    import sklearn
    import torch
    import xgboost

    return (f"{cpu_model()}, nproc {len(os.sched_getaffinity(0))}, kernel {platform.release()}, "
            f"{command_output([find_clang(), '--version'])} ({' '.join(CLANG_FLAGS)}); "
            f"{command_output(['gcc', '--version'])}; Python {platform.python_version()}, "
            f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, xgboost "
            f"{xgboost.__version__}, torch {torch.__version__}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeat", type=int, default=100_000,
                        help="BPF_PROG_TEST_RUN repeat count per call")
    parser.add_argument("--sizes", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        metavar="CONFIG", help=f"configurations (default all: {list(CONFIGS)})")
    parser.add_argument("--frames", type=int, default=8, help="distinct test frames per program")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per batched call")
    parser.add_argument("--runs", type=int, default=40,
                        help=f"timed runs (of >= {RUN_MS:g} ms) per C measurement; the best counts")
    parser.add_argument("--skip-xdp", action="store_true")
    parser.add_argument("--skip-c", action="store_true")
    parser.add_argument("--no-tl2cgen", action="store_true")
    parser.add_argument("--fit", action="store_true", help="print fitted cost constants")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start, source = time.monotonic(), source_state()
    dataset, verdict = load_data(DEFAULT_SPEC)
    xdp_runs: list[XdpRun] = []
    c_runs: list[CRun] = []
    rows = bench_rows(dataset, args.frames)
    xb = np.resize(dataset.x_test, (args.batch, dataset.x_test.shape[1]))
    import torch

    torch.set_num_threads(1)  # C, sklearn (n_jobs=1), xgboost (n_jobs=1) and tl2cgen use one
    with tempfile.TemporaryDirectory(prefix="hmn_bench_kernel_") as tmp:
        work = Path(tmp)
        base = None if args.skip_xdp else build_parse_only(work)
        base_insns = base.verifier_stats["parse_only"].insns_processed if base else 0
        for seed in args.seeds:
            for label in args.sizes:
                STDERR.print(f"seed {seed}: {label}")
                model = train(label, seed, dataset, verdict)
                if base is not None:
                    with pinned_to_one_cpu() as cpu:
                        xdp_runs.append(xdp_run(model, base, rows, args.repeat, work, cpu))
                if not args.skip_c:
                    c_runs.append(c_run(model, xb, args.runs, not args.no_tl2cgen, work))
        if base is not None:
            base.close()
    seeds = ", ".join(map(str, args.seeds))
    sections = [f"Machine: {machine()}", f"Source: {source_note(source)}"]
    if xdp_runs:
        sections.append(f"### XDP: ns per packet (BPF_PROG_TEST_RUN, repeat {args.repeat:,}, "
                        f"{args.frames} frames, best of 3; mean ± sd over seeds {seeds})\n\n"
                        + xdp_table(xdp_runs, base_insns))
    if c_runs:
        sections.append(f"### C library vs float model and tl2cgen (batch {args.batch:,} rows, "
                        f"best of {args.runs} runs of >= {RUN_MS:g} ms timed in C; mean ± sd "
                        f"over seeds {seeds})"
                        "\n\n" + c_table(c_runs))
        sections.append("### C trees: flat arrays vs if/else vs bitvector (same runs)\n\n"
                        + tree_code_table(c_runs))
    sections.append("### Cost model: estimate next to measurement\n\n"
                    + estimate_table(xdp_runs, c_runs))
    if args.fit:
        sections.append("### Fitted constants\n\n" + fit_report(xdp_runs, c_runs))
    sections.append(f"Wall time: {time.monotonic() - start:.0f} s")
    print("\n\n".join(sections))


if __name__ == "__main__":
    main()
