"""The C target's cost profile: documented per-operation costs a spec may override.

The defaults were fitted on the development machine (2-vCPU Intel Xeon VM, gcc 12.2, -O3, one
core) by ``python bench/kernel.py --fit``: every benchmark configuration's library is timed in C
(``targets/c/timing.py``, one ``hmn_classify`` call per row, best of 40 runs of at least 2 ms)
and the costs are the non-negative least-squares fit of those times against the operation
counts (``resources.op_counts``). They are orders of magnitude for a server core, not
guarantees: run the fit on the deployment machine and pass the printed values as profile
overrides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from homunculus.targets.base import Limits, with_field_overrides


@dataclass(frozen=True)
class CProfile:
    name: str = "c"
    call_ns: float = 0.0  # per classification: call, verdict row (fitted: below noise)
    feature_ns: float = 0.353  # per feature copied and masked
    branch_ns: float = 0.347  # per if/else tree level
    step_ns: float = 3.0  # per flat-array step of a single tree (not fitted: "auto" never uses it)
    group_step_ns: float = 3.344  # per flat-array step of a group of trees walked side by side
    tree_ns: float = 0.0  # per tree: leaf row load
    add_ns: float = 0.0  # per score added (leaf rows, encoder rows)
    direct_ns: float = 0.579  # per direct-indexed encoder
    search_ns: float = 1.549  # per binary search step (not fitted: the bench has no wide feature)
    mac_ns: float = 0.104  # per multiply-accumulate of a dense layer (inputs padded to 8)
    neuron_ns: float = 1.17  # per dense output: requantisation, activation, store
    argmax_ns: float = 0.309  # per arg-max contender
    cores: int = 1  # classifications run in parallel (throughput scales, latency does not)
    # "auto" (flat arrays for forests of score vectors, bitvector for boosted trees of at most
    # 16 leaves over features of at most 16 bits, else if/else), "arrays", "branches" or
    # "bitvector" (QuickScorer's layout for a batch, flat arrays for one row)
    tree_code: str = "auto"

    def default_limits(self) -> Limits:
        """A CPU imposes no table, stage or memory limits a spec must respect by default."""
        return Limits()

    def with_overrides(self, overrides: dict[str, object]) -> CProfile:
        profile = with_field_overrides(self, overrides, ("name",))
        if profile.tree_code not in ("auto", "arrays", "branches", "bitvector"):
            raise KeyError(f"tree_code must be 'auto', 'arrays', 'branches' or 'bitvector' (got "
                           f"{profile.tree_code!r})")
        return profile

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
