"""A chain of one Tofino and an XDP host: how the host's latency limit moves the split.

Trains one fixed boosted-tree model (the ``xgb`` family's defaults) on the iot example's feature
table (examples/split/spec.yaml), lowers it, and partitions it (schedule/split.py) over a Tofino
limited to ``--stages`` stages, then an XDP host whose latency limit (the XDP cost model's
estimate, targets/xdp/cost.py) is each of ``--limits`` (0: none). The host's part is costed with
its own cost model inside the partition, so a tighter limit hands the switch more tables (and
the header more class columns); too tight, nothing fits and the reason names the host and the
limit. For each split the host's program is built with clang and loaded; the switch's twin
carries the partial scores of the test set to it (BPF_PROG_TEST_RUN of ``hmn_xdp_vec``).
Printed per limit: the switch's and the host's tables, the header bytes, the host's estimated and
measured latency (``--repeat`` runs of one vector) and the chain's agreement with the quantised
model.

    python bench/split_host.py [--stages 12] [--limits 0 300 200 120] [--repeat 2000]
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
from homunculus.models.base import get_family  # noqa: E402
from homunculus.passes.lower import lower  # noqa: E402
from homunculus.schedule.host import HostSource, partial_scores  # noqa: E402
from homunculus.schedule.split import Device, partition, run_switches  # noqa: E402
from homunculus.targets.base import Limits  # noqa: E402
from homunculus.targets.p4.profiles import TOFINO  # noqa: E402
from homunculus.targets.p4.target import SwitchTarget  # noqa: E402
from homunculus.targets.p4.twin import simulate  # noqa: E402
from homunculus.targets.xdp.loader import prog_test_run  # noqa: E402
from homunculus.targets.xdp.runner import VEC_PROG, load_built, run_vectors, vector_frame  # noqa: E402
from homunculus.targets.xdp.target import XdpTarget  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=12)
    ap.add_argument("--limits", type=float, nargs="+", default=[0, 300, 200, 120])
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    ds = plan_from_yaml(REPO / "examples" / "split" / "spec.yaml").plan.load_data()
    family = get_family("xgb")
    model = family.train(family.default_params(), ds.x_train, ds.y_train, ds.n_classes,
                         ds.widths, 0)
    verdict = VerdictPlan(VerdictKind.DSCP, dscp={1: 34, 2: 26})
    pipeline = lower(model.quantised, ds.features, ds.class_labels, verdict,
                     model.winner_to_class)
    source = HostSource(model.quantised, ds.features, verdict, model.winner_to_class)
    switch = Device("tor", SwitchTarget(TOFINO),
                    TOFINO.default_limits().merged({"stages": args.stages}))
    expected = model.predict_quantised(ds.x_test)
    print(f"xgb, {len(pipeline.lookups)} trees; Tofino limited to {args.stages} stages, then "
          "an XDP host")
    for limit in args.limits:
        host = Device("srv", XdpTarget(), Limits(latency_ns=limit or None))
        split = partition(pipeline, [switch, host], source=source)
        name = f"{limit:.0f} ns" if limit else "none"
        if not split.feasible:
            print(f"  host limit {name}: does not fit: {split.reason}")
            continue
        if not split.host_tables:
            print(f"  host limit {name}: the switch takes every table; the host is not used")
            continue
        _, carried = run_switches(split, ds.x_test,
                                  lambda p, d, x, c: simulate(p, x, carried=c))
        program = split.host_program
        partial = partial_scores(carried, program, len(ds.x_test))
        with tempfile.TemporaryDirectory() as tmp:
            XdpTarget().emit(program, Path(tmp), "host")
            obj, _ = load_built(Path(tmp))
            with obj:
                got, _ = run_vectors(obj, program, ds.x_test, partial)
                row = np.concatenate([ds.x_test[0], partial[0]])
                ns = float(prog_test_run(obj.prog_fd(VEC_PROG), vector_frame(row, 5),
                                         repeat=args.repeat).duration_ns)
        agree = float(np.mean(got.class_index == expected))
        print(f"  host limit {name}: switch {len(split.tables[0])} trees "
              f"({split.usages[0].stages} stages), host {len(split.host_tables)} trees; "
              f"carry header {split.header_bytes} bytes ({len(split.host_carry_in)} class "
              f"column(s)); host {split.host_usage.latency_ns:.0f} ns estimated, {ns:.0f} ns "
              f"measured; agreement {agree:.2%} of {len(expected)} test rows")


if __name__ == "__main__":
    main()
