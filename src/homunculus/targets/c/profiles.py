"""The C target's cost profile: documented per-operation costs a spec may override.

The defaults were calibrated once, on the development machine (2-vCPU Intel Xeon VM, gcc 12.2,
-O2, one core; medians of five runs of ``python -m homunculus.targets.c.calibrate``), by timing
generated libraries through ``hmn_classify_batch`` (synthetic pipelines isolating each operation;
the least-squares slope of time per classification against the operation count; mispredict_ns
from the families' pipelines, see below). They are orders of magnitude for a modern server core,
not guarantees: re-run the calibration on the deployment machine and pass the results as profile
overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from homunculus.targets.base import Limits, with_field_overrides


@dataclass(frozen=True)
class CProfile:
    name: str = "c"
    call_ns: float = 2.2  # per classification: call, feature loads, slot zeroing, result
    table_ns: float = 0.8  # per table applied (inlined: loop set-up, parameter writes)
    # per table: its data-dependent scan exit mispredicts. The median over the eight families'
    # default pipelines of (time on random rows - time on all-zero rows) / tables
    mispredict_ns: float = 9.6
    compare_ns: float = 0.27  # per key constant compared while scanning entries (worst case)
    score_op_ns: float = 0.30  # per score-sum term and per arg-max contender
    mac_ns: float = 0.25  # per multiply-accumulate of a dense layer
    neuron_ns: float = 2.95  # per dense output: loop overhead, requantisation, activation
    cores: int = 1  # classifications run in parallel (throughput scales, latency does not)

    def default_limits(self) -> Limits:
        """A CPU imposes no table, stage or memory limits a spec must respect by default."""
        return Limits()

    def with_overrides(self, overrides: dict[str, object]) -> CProfile:
        return with_field_overrides(self, overrides, ("name",))

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
