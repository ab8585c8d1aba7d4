"""Kernel and C targets: XDP ns/packet and the C library against the float models' predict.

For every model configuration (family and size), trained once on the bundled IoT data
(``examples/iot/spec.yaml``, seed 0):

1. **XDP**: the generated program is built and loaded (the verifier's instructions processed are
   recorded) and real frames, whose IPv4 header fields and UDP feature header carry a test row's
   features, run through ``hmn_xdp`` with ``BPF_PROG_TEST_RUN`` (``repeat`` runs per call, best of
   three calls per frame, mean over the frames). A parse-only XDP program (Ethernet/VLAN/IPv4/
   TCP/UDP parse, then XDP_PASS; same clang flags) runs on the same frames, interleaved, and the
   model's added cost is the difference.
2. **C**: the generated library (``hmn_classify`` per sample through ctypes, and
   ``hmn_classify_batch`` over a batch) against ``float_model.predict`` of the same trained model
   (scikit-learn / xgboost; for the MLP a PyTorch network with the same weights, and the numpy
   ``FloatMLP``), one sample per call and batched, medians of several runs.

    python bench/kernel.py [--repeat 100000] [--sizes dt-d3 rf-t4 ...] [--frames 8]
                           [--batch 10000] [--runs 5] [--skip-xdp] [--skip-c]

Needs root (BPF programs), clang and libbpf. Build outputs go to a temporary directory.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import DEFAULT_SPEC, STDERR, markdown_table, source_note, source_state

from homunculus.compile import verdict_plan
from homunculus.data.dataset import Dataset
from homunculus.frontend.yaml_spec import plan_from_yaml
from homunculus.ir.dense import QMLP
from homunculus.ir.pipeline import Pipeline, VerdictPlan
from homunculus.models.base import TrainedModel, get_family
from homunculus.passes.lower import lower
from homunculus.passes.lower_mlp import lower_mlp
from homunculus.targets.c.target import CTarget
from homunculus.targets.xdp.build import CLANG_FLAGS, build_source, find_clang
from homunculus.targets.xdp.codegen import FEATURE_UDP_PORT
from homunculus.targets.xdp.layout import layout_of
from homunculus.targets.xdp.loader import BpfObject, load_object, prog_test_run
from homunculus.targets.xdp.runner import (
    load_built,
    packet_frame,
    pinned_to_one_cpu,
    reference,
)
from homunculus.targets.xdp.target import XdpTarget

SEED = 0
UDP = 17
STAT_CLASSIFIED = 2  # hmn_stats index of classified packets

# label -> (family, parameters overriding default_params())
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "dt-d3": ("dt", {"dt_max_depth": 3}),
    "dt-d6": ("dt", {"dt_max_depth": 6}),
    "dt-d10": ("dt", {"dt_max_depth": 10}),
    "rf-t4": ("rf", {"rf_n_estimators": 4}),
    "rf-t16": ("rf", {"rf_n_estimators": 16}),
    "xgb-r4": ("xgb", {"xgb_n_estimators": 4}),
    "xgb-r16": ("xgb", {"xgb_n_estimators": 16}),
    "gnb-b8": ("gnb", {"gnb_bins": 8}),
    "gnb-b32": ("gnb", {"gnb_bins": 32}),
    "cnb-b8": ("cnb", {"cnb_bins": 8}),
    "cnb-b32": ("cnb", {"cnb_bins": 32}),
    "svm-b8": ("svm", {"svm_bins": 8}),
    "svm-b32": ("svm", {"svm_bins": 32}),
    "kmeans-b8": ("kmeans", {"kmeans_bins": 8}),
    "kmeans-b32": ("kmeans", {"kmeans_bins": 32}),
    "mlp-1x8": ("mlp", {"mlp_layers": 1, "mlp_width_0": 8}),
    "mlp-2x32": ("mlp", {"mlp_layers": 2, "mlp_width_0": 32, "mlp_width_1": 32}),
}

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
    trained: TrainedModel
    dataset: Dataset
    verdict: VerdictPlan

    def pipeline(self) -> Pipeline:
        """A fresh lowered (not yet prepared) pipeline: prepare is not idempotent."""
        ds, q = self.dataset, self.trained.quantised
        if isinstance(q, QMLP):
            return lower_mlp(q, ds.features, ds.class_labels, self.verdict,
                             self.trained.winner_to_class)
        return lower(q, ds.features, ds.class_labels, self.verdict, self.trained.winner_to_class)


def load_data(spec: Path) -> tuple[Dataset, VerdictPlan]:
    plan = plan_from_yaml(spec)
    dataset = plan.load_data()
    return dataset, verdict_plan(plan, dataset)


def train(label: str, dataset: Dataset, verdict: VerdictPlan) -> Model:
    family_name, overrides = CONFIGS[label]
    family = get_family(family_name)
    params = family.default_params() | overrides
    trained = family.train(params, dataset.x_train, dataset.y_train, dataset.n_classes,
                           dataset.widths, SEED)
    return Model(label, trained, dataset, verdict)


# ----------------------------------------------------------------------------- frames


def feature_header(values: np.ndarray, pipeline: Pipeline) -> bytes:
    """The carried features (bound to no header), bit-packed MSB first and padded to a byte."""
    bits, width = 0, 0
    for value, feat in zip(values, pipeline.features, strict=True):
        if feat.flow or feat.header_field is not None:
            continue
        bits = (bits << feat.field.width) | (int(value) & feat.field.max_value)
        width += feat.field.width
    pad = -width % 8
    return (bits << pad).to_bytes((width + pad) // 8, "big")


def frame_values(row: np.ndarray, pipeline: Pipeline) -> np.ndarray:
    """The features as the program sees them: ipv4.protocol is UDP (the feature header rides on
    UDP); everything else is the row's value."""
    values = np.asarray(row, dtype=np.int64).copy()
    for j, feat in enumerate(pipeline.features):
        if feat.header_field == "ipv4.protocol":
            values[j] = UDP
    return values


def feature_frame(values: np.ndarray, pipeline: Pipeline) -> bytes:
    """An Ethernet/IPv4/UDP frame to the feature-header port carrying ``values``."""
    header = {"ip_total_len": 64, "ip_ttl": 64, "ip_proto": UDP, "ip_diffserv": 0}
    for value, feat in zip(values, pipeline.features, strict=True):
        if feat.header_field is not None:
            if feat.header_field not in HEADER_COLUMNS:
                raise ValueError(f"no frame builder for header field {feat.header_field}")
            header[HEADER_COLUMNS[feat.header_field]] = int(value)
    fh = feature_header(values, pipeline)
    total = max(header["ip_total_len"], 28 + len(fh))
    row = {"ip_src": 0x0A000001, "ip_dst": 0x0A000002, "eth_type": 0x0800, "has_ipv4": True,
           "ip_ihl": 5, "ip_id": 1, "ip_frag_offset": 0, "has_tcp": False, "has_udp": True,
           "src_port": 40000, "dst_port": FEATURE_UDP_PORT, "udp_len": total - 20,
           "wire_len": 0, **header}
    frame = packet_frame(row)
    return frame[:42] + fh + frame[42 + len(fh):]


def bench_rows(dataset: Dataset, n: int) -> np.ndarray:
    """``n`` test rows, drawn once with a fixed seed."""
    rng = np.random.default_rng(SEED)
    return dataset.x_test[rng.choice(len(dataset.x_test), size=n, replace=False)]


# ----------------------------------------------------------------------------- XDP


def size_of(pipeline: Pipeline) -> str:
    """Table entries of the pipeline (and the MLP's weights, which live in one map)."""
    entries = sum(len(t.entries) for t in pipeline.tables())
    if pipeline.mlp is None:
        return f"{entries} entries"
    weights = sum(len(row) for layer in pipeline.mlp.layers for row in layer.weights)
    return f"{weights} weights + {entries} entries"


@dataclass(frozen=True)
class XdpRow:
    label: str
    size: str = ""
    insns: int | None = None
    vec_insns: int | None = None
    model_ns: float | None = None
    base_ns: float | None = None
    classified: str = ""
    error: str = ""


def build_parse_only(work: Path) -> BpfObject:
    _, obj = build_source(PARSE_ONLY_C, work / "parse_only", "parse_only")
    return load_object(obj)


def percpu_u64(obj: BpfObject, map_name: str, key: int, cpu: int, index: int = 0) -> int:
    values = obj.map(map_name).lookup(key)
    assert isinstance(values, list)
    return struct.unpack_from("<Q", values[cpu], 8 * index)[0]


def check_frames(obj: BpfObject, pipeline: Pipeline, frames: list[bytes], values: np.ndarray,
                 cpu: int) -> str:
    """Run each frame once: is it classified, and as the reference twin says?"""
    layout = layout_of(pipeline)
    expected = reference(pipeline, values).class_index
    fd = obj.prog_fd("hmn_xdp")
    classified = agree = 0
    for frame, want in zip(frames, expected, strict=True):
        before = percpu_u64(obj, "hmn_stats", STAT_CLASSIFIED, cpu)
        prog_test_run(fd, frame)
        if percpu_u64(obj, "hmn_stats", STAT_CLASSIFIED, cpu) != before:
            classified += 1
            agree += percpu_u64(obj, "hmn_env", 0, cpu, layout.class_index) == want
    return f"{classified}/{len(frames)} classified, {agree} as the twin"


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


def xdp_row(model: Model, base: BpfObject, rows: np.ndarray, repeat: int, work: Path,
            cpu: int) -> XdpRow:
    pipeline = XdpTarget().prepare(model.pipeline())
    out = work / f"xdp_{model.label}"
    XdpTarget().emit(pipeline, out, model.label.replace("-", "_"))
    obj, _ = load_built(out)
    with obj:
        stats = obj.verifier_stats
        values = np.stack([frame_values(r, pipeline) for r in rows])
        frames = [feature_frame(v, pipeline) for v in values]
        check = check_frames(obj, pipeline, frames, values, cpu)
        model_ns, base_ns = time_pair(obj.prog_fd("hmn_xdp"), base.prog_fd("parse_only"),
                                      frames, repeat)
    return XdpRow(model.label, size_of(pipeline), stats["hmn_xdp"].insns_processed,
                  stats["hmn_xdp_vec"].insns_processed, model_ns, base_ns, check)


def xdp_row_or_error(model: Model, base: BpfObject, rows: np.ndarray, repeat: int, work: Path,
                     cpu: int) -> XdpRow:
    try:
        return xdp_row(model, base, rows, repeat, work, cpu)
    except Exception as exc:  # noqa: BLE001  (a failed row is reported, the run goes on)
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        what = "not available yet" if model.trained.family == "mlp" else "FAILED"
        STDERR.print(f"[yellow]{model.label}: XDP {what}: {type(exc).__name__}: {first}")
        return XdpRow(model.label, "-", error=f"{what} ({type(exc).__name__}: {first})")


def xdp_table(rows: Sequence[XdpRow], base_insns: int) -> str:
    headers = ["model", "size", "verifier insns (hmn_xdp / hmn_xdp_vec)", "model program ns/pkt",
               "parse-only ns/pkt", "added ns/pkt", "frames check"]
    body: list[list[object]] = [["parse-only baseline", "-", f"{base_insns}", "-", "-", "-", "-"]]
    for r in rows:
        if r.error:
            body.append([r.label, "-", r.error, "-", "-", "-", "-"])
            continue
        assert r.model_ns is not None and r.base_ns is not None
        body.append([r.label, r.size, f"{r.insns} / {r.vec_insns}", f"{r.model_ns:.1f}",
                     f"{r.base_ns:.1f}", f"{r.model_ns - r.base_ns:+.1f}", r.classified])
    return markdown_table(headers, body)


def run_xdp(models: Sequence[Model], rows: np.ndarray, repeat: int, work: Path) -> str:
    results = []
    with build_parse_only(work) as base, pinned_to_one_cpu() as cpu:
        base_insns = base.verifier_stats["parse_only"].insns_processed
        for model in models:
            STDERR.print(f"xdp: {model.label}")
            results.append(xdp_row_or_error(model, base, rows, repeat, work, cpu))
    return xdp_table(results, base_insns)


# ----------------------------------------------------------------------------- C vs float


@dataclass(frozen=True)
class CRow:
    label: str
    reference: str
    c_single: float
    ref_single: float
    c_batch: float
    ref_batch: float
    twin_ok: bool
    agreement: float


class CLib:
    """The generated library through ctypes, with pre-converted rows (no per-call numpy)."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        u32p = ctypes.POINTER(ctypes.c_uint32)
        self.lib.hmn_classify.restype = ctypes.c_int32
        self.lib.hmn_classify.argtypes = [u32p]
        self.lib.hmn_classify_batch.restype = None
        self.lib.hmn_classify_batch.argtypes = [u32p, ctypes.c_size_t,
                                                ctypes.POINTER(ctypes.c_int32)]
        self.u32p = u32p

    def pointers(self, rows: np.ndarray) -> list[Any]:
        return [row.ctypes.data_as(self.u32p) for row in rows]

    def batch(self, rows: np.ndarray, out: np.ndarray) -> None:
        self.lib.hmn_classify_batch(rows.ctypes.data_as(self.u32p), len(rows),
                                    out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))


def median_ns(fn: Callable[[], object], n_items: int, runs: int) -> float:
    """Median over ``runs`` (after one warm-up) of the ns per item of ``fn()``."""
    fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / n_items)
    return statistics.median(samples)


def torch_predictor(model: Any) -> Callable[[Any], Any] | None:
    """A PyTorch network with the FloatMLP's weights (input preprocessing included)."""
    try:
        import torch
    except ImportError:
        return None
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
        a = torch.clamp(torch.bitwise_right_shift(x, shifts), max=127).float() / 127.0
        return net(a).argmax(dim=1)

    return predict


@dataclass(frozen=True)
class Reference:
    name: str
    single: Callable[[int], object]  # predict row i of the single-sample set
    batch: Callable[[], object]
    predict: Callable[[], np.ndarray]  # predictions on the batch (for agreement)


def float_name(float_model: Any) -> str:
    kind = type(float_model)
    if kind.__module__.startswith("homunculus"):
        return f"numpy {kind.__name__}"
    return f"{kind.__module__.split('.')[0]} {kind.__name__}"


def sklearn_reference(model: Model, single_rows: np.ndarray, batch_rows: np.ndarray
                      ) -> Reference:
    """``float_model.predict`` on float64 rows (as ``TrainedModel.predict_float`` calls it)."""
    float_model = model.trained.float_model
    singles = [r[None, :].astype(np.float64) for r in single_rows]
    xb = batch_rows.astype(np.float64)
    name = float_name(float_model)
    return Reference(name, lambda i: float_model.predict(singles[i]),
                     lambda: float_model.predict(xb),
                     lambda: np.asarray(float_model.predict(xb), dtype=np.int64))


def torch_reference(model: Model, single_rows: np.ndarray, batch_rows: np.ndarray
                    ) -> Reference | None:
    predict = torch_predictor(model.trained.float_model)
    if predict is None:
        return None
    import torch

    singles = [torch.as_tensor(r[None, :].astype(np.int64)) for r in single_rows]
    xb = torch.as_tensor(batch_rows.astype(np.int64))

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return fn()
        return run

    return Reference("torch (same weights, 1 thread)",
                     lambda i: no_grad(lambda: predict(singles[i]))(),
                     no_grad(lambda: predict(xb)),
                     lambda: no_grad(lambda: predict(xb))().numpy().astype(np.int64))


def references(model: Model, single_rows: np.ndarray, batch_rows: np.ndarray
               ) -> list[Reference]:
    refs = [sklearn_reference(model, single_rows, batch_rows)]
    if model.trained.family == "mlp":
        torch_ref = torch_reference(model, single_rows, batch_rows)
        if torch_ref is not None:
            refs.insert(0, torch_ref)
    return refs


def c_rows(model: Model, rows: np.ndarray, batch: int, n_single: tuple[int, int], runs: int,
           work: Path) -> list[CRow]:
    pipeline = CTarget().prepare(model.pipeline())
    files = CTarget().emit(pipeline, work / f"c_{model.label}", model.label.replace("-", "_"))
    lib = CLib(files["c_library"])
    xb = np.resize(rows, (batch, rows.shape[1]))
    xb_u32 = np.ascontiguousarray(xb.astype(np.uint32))
    out = np.zeros(batch, dtype=np.int32)
    lib.batch(xb_u32, out)
    twin_ok = bool(np.array_equal(out, model.trained.predict_quantised(xb)))
    c_n, ref_n = n_single
    c_ptrs = lib.pointers(xb_u32[:c_n])
    fn = lib.lib.hmn_classify

    def c_single() -> None:
        for p in c_ptrs:
            fn(p)

    c1 = median_ns(c_single, c_n, runs)
    cb = median_ns(lambda: lib.batch(xb_u32, out), batch, runs)
    result = []
    for ref in references(model, xb[:ref_n], xb):
        r1 = median_ns(lambda ref=ref: [ref.single(i) for i in range(ref_n)], ref_n, runs)
        rb = median_ns(ref.batch, batch, runs)
        agreement = float(np.mean(ref.predict() == out))
        result.append(CRow(model.label, ref.name, c1, r1, cb, rb, twin_ok, agreement))
    return result


def ratio(slow: float, fast: float) -> str:
    r = slow / fast
    return f"{r:.1f}x" if r < 10 else f"{r:,.0f}x"


def c_table(rows: Sequence[CRow]) -> str:
    headers = ["model", "float model", "C ns/call (1 sample)", "float ns/call (1 sample)",
               "C faster (1 sample)", "C ns/row (batch)", "float ns/row (batch)",
               "C faster (batch)", "C = quantised twin", "C vs float agreement"]
    body = [[r.label, r.reference, f"{r.c_single:,.0f}", f"{r.ref_single:,.0f}",
             ratio(r.ref_single, r.c_single), f"{r.c_batch:,.1f}", f"{r.ref_batch:,.1f}",
             ratio(r.ref_batch, r.c_batch), "yes" if r.twin_ok else "NO",
             f"{100 * r.agreement:.1f}%"] for r in rows]
    return markdown_table(headers, body)


def run_c(models: Sequence[Model], rows: np.ndarray, batch: int, runs: int, work: Path) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # C, sklearn (n_jobs=1) and xgboost (n_jobs=1) use one thread
    results: list[CRow] = []
    try:
        for model in models:
            STDERR.print(f"c: {model.label}")
            results += c_rows(model, rows, batch, (2000, 200), runs, work)
    finally:
        torch.set_num_threads(threads)
    return c_table(results)


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
    import xgboost

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "absent"
    return (f"{cpu_model()}, nproc {len(os.sched_getaffinity(0))}, kernel {platform.release()}, "
            f"{command_output([find_clang(), '--version'])} ({' '.join(CLANG_FLAGS)}); Python "
            f"{platform.python_version()}, numpy {np.__version__}, scikit-learn "
            f"{sklearn.__version__}, xgboost {xgboost.__version__}, torch {torch_version}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=100_000,
                        help="BPF_PROG_TEST_RUN repeat count per call")
    parser.add_argument("--sizes", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        metavar="CONFIG", help=f"configurations (default all: {list(CONFIGS)})")
    parser.add_argument("--frames", type=int, default=8, help="distinct test frames per program")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per batched call")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per C measurement")
    parser.add_argument("--skip-xdp", action="store_true")
    parser.add_argument("--skip-c", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start, source = time.monotonic(), source_state()
    dataset, verdict = load_data(DEFAULT_SPEC)
    models = [train(label, dataset, verdict) for label in args.sizes]
    sections = []
    with tempfile.TemporaryDirectory(prefix="hmn_bench_kernel_") as tmp:
        if not args.skip_xdp:
            rows = bench_rows(dataset, args.frames)
            sections.append("### XDP: ns per packet (BPF_PROG_TEST_RUN, repeat "
                            f"{args.repeat:,}, {args.frames} frames, best of 3)\n\n"
                            + run_xdp(models, rows, args.repeat, Path(tmp)))
        if not args.skip_c:
            sections.append(f"### C library vs float model (batch {args.batch:,} rows, "
                            f"median of {args.runs} runs)\n\n"
                            + run_c(models, dataset.x_test, args.batch, args.runs, Path(tmp)))
    seconds = time.monotonic() - start
    print("\n\n".join([f"Machine: {machine()}", f"Source: {source_note(source)}", *sections,
                       f"Wall time: {seconds:.0f} s"]))


if __name__ == "__main__":
    main()
