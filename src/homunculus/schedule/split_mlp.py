"""Split an MLP by layers over a chain of CPU hosts (C, XDP), carrying int8 activations.

Device ``d`` of the chain runs a contiguous run of the network's layers (a *part*, ir/dense.py:
a QMLP with ``carried_in`` / ``carries_out``). The first part reads the features; every part but
the last ends on a hidden layer and carries that layer's int8 activations (after requantisation
and activation, exactly the quantised model's integers) to the next device in the Homunculus
carry header; the last part computes the scores, takes the arg-max and applies the verdict.

The carry header is the switches' (targets/p4 ``carry_layout``, schedule/split.py): EtherType
``0x88B5`` right after Ethernet, then one 8-bit field per carried activation (two's complement,
in neuron order), then the EtherType it displaced: ``activations + 2`` bytes per link.

Flow features (traffic specs) are computed by the first device, which must then be XDP (it
keeps the flow registers, updated by every eligible packet); the later parts read only the
carried activations.

The partitioner tries every way to cut the layers into contiguous non-empty runs over a prefix
of the chain, judges each run's program on its device with that device's own cost model and
limits (XDP: targets/xdp/cost.py latency, verifier instructions and map memory, and its
capacity; C: its profile's estimate), and keeps the split with the fewest devices, then the
fewest header bytes (the activations carried, summed over the links).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations
from typing import Any

import numpy as np

from homunculus.data.dataset import FeatureDecl
from homunculus.errors import NotSupportedError
from homunculus.ir.cpu import CpuProgram
from homunculus.ir.dense import QMLP
from homunculus.ir.pipeline import VerdictKind
from homunculus.passes.lower import feature_inputs
from homunculus.schedule.split import Device
from homunculus.targets.base import Usage, assess

CARRY_ETHER_TYPE = 0x88B5
ACTIVATION_BITS = 8
"""Each carried activation is one int8 field (two's complement) of the carry header."""
CARRY_LABEL = "carry"
"""The one class of a part that carries on (it classifies nothing: it forwards)."""


@dataclass(frozen=True)
class Part:
    """One device's run of layers ``[first, stop)`` and its CPU program."""

    device: int  # index in the chain
    first: int
    stop: int
    program: CpuProgram
    usage: Usage

    @property
    def model(self) -> QMLP:
        assert isinstance(self.program.model, QMLP)
        return self.program.model

    @property
    def carries(self) -> int:
        """Activations this part sends on (0 for the last part)."""
        return self.model.n_classes if self.model.carries_out else 0


@dataclass(frozen=True)
class MlpSplit:
    """An MLP over a chain of hosts, or why it does not fit (``parts`` empty)."""

    parts: tuple[Part, ...]
    layers: int
    reason: str | None = None

    @property
    def feasible(self) -> bool:
        return bool(self.parts)

    @property
    def devices(self) -> int:
        return len(self.parts)

    @property
    def carry_bytes(self) -> tuple[int, ...]:
        """Per link: the carry header's bytes (the activations, then the displaced EtherType)."""
        return tuple(carry_header_bytes(p.carries) for p in self.parts[:-1])

    @property
    def header_bytes(self) -> int:
        return sum(self.carry_bytes)


def carry_header_bytes(activations: int) -> int:
    """Bytes of a carry header holding ``activations`` int8 fields and the displaced EtherType."""
    return activations * ACTIVATION_BITS // 8 + 2


# ----------------------------------------------------------------------------- one part


def part_model(mlp: QMLP, first: int, stop: int) -> QMLP:
    """Layers ``[first, stop)`` of ``mlp`` as a network of their own: it reads carried
    activations unless it starts at layer 0, and carries its activations on unless it ends the
    network."""
    if not 0 <= first < stop <= len(mlp.layers):
        raise ValueError(f"a part needs at least one layer (layers {first}..{stop - 1} of "
                         f"{len(mlp.layers)})")
    carried_in = first > 0
    n_in = mlp.layers[first].shape[1]
    return QMLP(mlp.input_shift if not carried_in else (0,) * n_in, mlp.layers[first:stop],
                carried_in=carried_in, carries_out=stop < len(mlp.layers))


def carried_features(n: int) -> tuple[FeatureDecl, ...]:
    """The inputs of a part starting from carried activations: ``n`` bytes of the header."""
    return tuple(FeatureDecl(f"act{j}", ACTIVATION_BITS) for j in range(n))


def part_program(whole: CpuProgram, first: int, stop: int, default_port: int = 1
                 ) -> CpuProgram:
    """The CPU program of layers ``[first, stop)`` of ``whole``'s MLP: the last part classifies
    and acts on the verdict exactly as ``whole`` does; a part carrying on has one class
    (``CARRY_LABEL``) for every outcome, forwarding to ``default_port``."""
    mlp = whole.model
    assert isinstance(mlp, QMLP)
    model = part_model(mlp, first, stop)
    features = whole.features if first == 0 else feature_inputs(
        carried_features(len(model.input_shift)))
    part = replace(whole, model=model, features=features,
                   flow=whole.flow if first == 0 else None)  # the first device reads the flows
    if not model.carries_out:
        return part
    return replace(part, class_labels=(CARRY_LABEL,), verdict_kind=VerdictKind.METADATA,
                   verdict=((0, default_port, 0, 0, 0),) * model.n_classes, class_rows=())


def check_splittable(whole: CpuProgram) -> str | None:
    """Why ``whole`` cannot be split by layers (None: it can)."""
    if not isinstance(whole.model, QMLP):
        return "only an MLP splits by layers over a chain of hosts"
    if whole.flow is not None and whole.flow.decision is not None:
        return "a per-flow decision does not split (the last device has no flow state)"
    if whole.shortcut is not None:
        return ("an MLP with a category table does not split (the table reads features the "
                "last device does not see)")
    return None


# ----------------------------------------------------------------------------- the partition


def _judge(device: Device, program: CpuProgram) -> tuple[Usage | None, str | None]:
    """The part's usage on ``device``, or why it does not fit (a limit, or the target's
    capacity)."""
    try:
        usage = device.target.estimate(program)
    except (ValueError, NotSupportedError) as exc:  # capacity (layers, widths) exceeded
        return None, str(exc)
    verdict = assess(usage, device.limits)
    return (usage, None) if verdict.feasible else (None, "; ".join(verdict.violations))


def cut_points(layers: int, parts: int) -> list[tuple[int, ...]]:
    """Every way to cut ``layers`` into ``parts`` contiguous non-empty runs: the run
    boundaries (0, ..., layers)."""
    return [(0, *inner, layers) for inner in combinations(range(1, layers), parts - 1)]


def partition_mlp(whole: CpuProgram, devices: list[Device], default_port: int = 1,
                  cuts: tuple[int, ...] | None = None) -> MlpSplit:
    """The split of ``whole``'s MLP over (a prefix of) ``devices`` with the fewest devices, then
    the fewest header bytes; ``cuts`` (the first layer of every device after the first) forces
    one (ValueError if it leaves a device without layers). Infeasible (no parts, ``reason``
    naming the device and the limit) when no split fits."""
    why_not = check_splittable(whole)
    if why_not is None and whole.flow is not None and devices[0].target.name != "xdp":
        why_not = "flow features need an XDP first device (it keeps the flow registers)"
    if why_not is not None:
        return MlpSplit((), 0, why_not)
    assert isinstance(whole.model, QMLP)
    n = len(whole.model.layers)
    if cuts is not None:
        if any(b <= a for a, b in zip((0, *cuts), cuts, strict=False)):
            raise ValueError(f"cuts {list(cuts)} leave a device without layers (each is the "
                             "first layer of the next device: strictly increasing from 1)")
        if len(cuts) + 1 > len(devices):
            raise ValueError(f"cuts {list(cuts)} need {len(cuts) + 1} devices; the chain has "
                             f"{len(devices)}")
        if cuts[-1] >= n:  # a smaller network than the cuts assume: it does not split so
            return MlpSplit((), n, f"cuts {list(cuts)} need at least {cuts[-1] + 1} layers; "
                                   f"this MLP has {n}")
        candidates = [(0, *cuts, n)]
    else:
        candidates = [b for k in range(1, min(n, len(devices)) + 1) for b in cut_points(n, k)]
    cache: dict[tuple[int, int, int], tuple[Part | None, str | None]] = {}
    best: tuple[tuple[int, int], tuple[Part, ...]] | None = None
    reason: str | None = None
    for bounds in candidates:  # by device count: none with more devices beats a fitting one
        if best is not None and len(bounds) - 1 > best[0][0]:
            break
        parts: list[Part] = []
        for d, (first, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
            key = (d, first, stop)
            if key not in cache:
                program = part_program(whole, first, stop, default_port)
                usage, why = _judge(devices[d], program)
                cache[key] = ((Part(d, first, stop, program, usage), None) if usage is not None
                              else (None, f"device {d + 1} ({devices[d].name}), layers "
                                          f"{first}..{stop - 1}: {why}"))
            part, why = cache[key]
            if part is None:
                reason = why  # the candidates with the most devices come last: their reason
                break
            parts.append(part)
        else:
            split = MlpSplit(tuple(parts), n)
            rank = (split.devices, split.header_bytes)
            if best is None or rank < best[0]:
                best = (rank, split.parts)
    if best is None:
        return MlpSplit((), n, reason or "no split fits")
    return MlpSplit(best[1], n)


# ----------------------------------------------------------------------------- the chain


def run_parts(split: MlpSplit, x: np.ndarray, runner: Any) -> Any:
    """The chain on feature rows ``x``: ``runner(part, inputs)`` runs one part on its inputs
    (the features, then the carried activations as bytes) and returns the activations it
    carries on (n, k) or, for the last part, its result; the last part's result."""
    inputs = np.asarray(x, dtype=np.int64)
    result = None
    for part in split.parts:
        result = runner(part, inputs)
        if part.carries:
            inputs = np.asarray(result, dtype=np.int64) & 0xFF  # the header's bytes
    return result


def reference_runner(part: Part, inputs: np.ndarray) -> Any:
    """A part's semantics (ir/dense.py): its activations, or the last part's class and verdict
    fields (ir/cpu.py)."""
    if part.carries:
        return part.model.scores(inputs)
    return part.program.results(inputs)


def carry_header(activations: np.ndarray, ether_type: int) -> bytes:
    """The carry header of one row: its int8 activations as bytes, then ``ether_type``."""
    return bytes(int(a) & 0xFF for a in activations) + ether_type.to_bytes(2, "big")


def describe(split: MlpSplit, devices: list[Device]) -> list[dict[str, Any]]:
    """Per used device: its layers, what it reads and carries, its estimated usage."""
    rows = []
    for part in split.parts:
        u = part.usage
        rows.append({"name": devices[part.device].name,
                     "target": devices[part.device].target.name,
                     "layers": [part.first, part.stop - 1],
                     "carry_in": part.model.layers[0].shape[1] if part.model.carried_in else 0,
                     "carry_out": part.carries,
                     "carry_out_bytes": carry_header_bytes(part.carries) if part.carries else 0,
                     "usage": {"latency_ns": u.latency_ns, "instructions": u.instructions,
                               "sram_kbit": u.sram_kbit, "entries": u.entries},
                     "limits": devices[part.device].limits.as_dict()})
    return rows


def with_device_limits(device: Device, **limits: Any) -> Device:
    """``device`` with some limits replaced (tests, benchmarks)."""
    return replace(device, limits=device.limits.merged(limits))
