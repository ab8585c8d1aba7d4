"""The P4_16 backend: v1model (bmv2) and TNA (Tofino) programs plus their control-plane entries."""

from homunculus.targets.p4.check import check_program
from homunculus.targets.p4.codegen import INGRESS_CONTROL, emit_p4
from homunculus.targets.p4.entries import (
    bfrt_loader,
    read_runtime_entries,
    runtime_entries,
    simple_switch_commands,
)

__all__ = [
    "INGRESS_CONTROL",
    "bfrt_loader",
    "check_program",
    "emit_p4",
    "read_runtime_entries",
    "runtime_entries",
    "simple_switch_commands",
]
