"""An MLP too slow for one XDP host's latency limit, split by layers over a chain of XDP hosts.

Trains one fixed MLP (hidden layers 32, 16, 8; relu) on the iot example's feature table, lowers
it to the CPU program, and partitions it (schedule/split_mlp.py) over ``--devices`` XDP hosts
whose latency limit (the XDP cost model's estimate, targets/xdp/cost.py) is ``--latency-ns``.
Each part is built with clang and loaded; the test set runs through the chain in the kernel
(BPF_PROG_TEST_RUN of ``hmn_xdp_vec``, each part fed the previous part's int8 activations as the
carry header's bytes). Printed: the whole model's estimated and measured latency on one host,
then per device its layers, activations carried in and out, header bytes, estimated and
measured latency (``--repeat`` runs of one vector), and the chain's agreement with the
quantised model.

    python bench/split_mlp.py [--devices 2] [--latency-ns 250] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO

sys.path.insert(0, str(REPO / "src"))

from homunculus.frontend.yaml_spec import plan_from_yaml  # noqa: E402
from homunculus.ir.pipeline import VerdictKind, VerdictPlan  # noqa: E402
from homunculus.models.mlp import MLPFamily  # noqa: E402
from homunculus.passes.lower_cpu import lower_cpu  # noqa: E402
from homunculus.schedule.split import Device  # noqa: E402
from homunculus.schedule.split_mlp import partition_mlp, run_parts  # noqa: E402
from homunculus.targets.base import Limits  # noqa: E402
from homunculus.targets.xdp.loader import prog_test_run  # noqa: E402
from homunculus.targets.xdp.runner import (  # noqa: E402
    VEC_PROG,
    load_built,
    run_carry_vectors,
    run_vectors,
    vector_frame,
)
from homunculus.targets.xdp.target import XdpTarget  # noqa: E402

PARAMS = {"mlp_layers": 3, "mlp_width_0": 32, "mlp_width_1": 16, "mlp_width_2": 8,
          "mlp_activation": "relu"}


def measured_ns(obj, row: np.ndarray, n_out: int, repeat: int) -> float:  # noqa: ANN001
    """Mean ns per run of ``hmn_xdp_vec`` on one vector (BPF_PROG_TEST_RUN's duration)."""
    return float(prog_test_run(obj.prog_fd(VEC_PROG), vector_frame(row, n_out),
                               repeat=repeat).duration_ns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--latency-ns", type=float, default=250.0)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    plan = plan_from_yaml(REPO / "examples" / "split" / "mlp.yaml")
    ds = plan.plan.load_data()
    family = MLPFamily()
    model = family.train(family.default_params() | PARAMS, ds.x_train, ds.y_train,
                         ds.n_classes, ds.widths, 0)
    verdict = VerdictPlan(VerdictKind.DSCP, dscp={1: 34, 2: 26})
    whole = lower_cpu(model.quantised, ds.features, ds.class_labels, verdict,
                      model.winner_to_class)
    target = XdpTarget()
    expected = model.predict_quantised(ds.x_test)
    with tempfile.TemporaryDirectory() as tmp:
        target.emit(whole, Path(tmp) / "whole", "whole")
        obj, _ = load_built(Path(tmp) / "whole")
        with obj:
            alone = measured_ns(obj, ds.x_test[0], 5, args.repeat)
        print(f"MLP {[la.shape for la in model.quantised.layers]} on one XDP host: "
              f"{target.estimate(whole).latency_ns:.0f} ns estimated, {alone:.0f} ns measured")
        devices = [Device(f"nic{i + 1}", target, Limits(latency_ns=args.latency_ns))
                   for i in range(args.devices)]
        split = partition_mlp(whole, devices, verdict.default_port)
        if not split.feasible:
            print(f"does not split over {args.devices} host(s): {split.reason}")
            return
        objs = {}
        for part in split.parts:
            target.emit(part.program, Path(tmp) / str(part.device), f"p{part.device}")
            objs[part.device] = load_built(Path(tmp) / str(part.device))[0]

        def runner(part, inputs):  # noqa: ANN001, ANN202
            if part.carries:
                return run_carry_vectors(objs[part.device], part.program, inputs)
            return run_vectors(objs[part.device], part.program, inputs)[0].fields

        got = run_parts(split, ds.x_test, runner)
        row = ds.x_test[0]
        print(f"split over {split.devices} of {args.devices} XDP host(s), latency limit "
              f"{args.latency_ns:.0f} ns each; carry header {split.header_bytes} bytes")
        for part in split.parts:
            n_out = max(5, part.carries)
            ns = measured_ns(objs[part.device], row, n_out, args.repeat)
            print(f"  nic{part.device + 1}: layers {part.first}..{part.stop - 1}, activations in "
                  f"{len(part.program.features) if part.model.carried_in else 0}, out "
                  f"{part.carries} ({part.carries + 2 if part.carries else 0} header bytes), "
                  f"{part.usage.latency_ns:.0f} ns estimated, {ns:.0f} ns measured")
            if part.carries:
                row = part.model.scores(row[None, :])[0] & 0xFF
        agree = float(np.mean(got["class_id"] == expected))
        print(f"agreement with the quantised model: {agree:.2%} of {len(expected)} test rows")
        for obj in objs.values():
            obj.close()


if __name__ == "__main__":
    main()
