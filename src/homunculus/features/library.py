"""The feature library: data-plane-computable features, each declared once with its integers.

Two sources:
- header fields (`kind: header`): the field's value, 0 when the header is absent;
- per-flow state, kept in register arrays of ``slots`` entries indexed by a hash of the 5-tuple.

Flow state semantics (identical in the Python reference, the twin and the generated P4):
- key: CRC-32 (IEEE, as zlib) of src_ip(4) dst_ip(4) src_port(2) dst_port(2) proto(1), big
  endian; ports are 0 unless TCP/UDP. Flows are directional. ``slot = crc & (slots - 1)``.
- collisions: each slot keeps a 16-bit signature, ``sig = (crc32(same bytes reversed) & 0xFFFF) |
  1`` (never 0, so an empty slot never matches). A packet whose signature differs from the slot's
  starts a new flow there: every state variable of the slot is reset (the new flow evicts the old).
- the packet length is IPv4 total length; time is ``now = (ts_us * 1000 // unit_ns) >> time_shift``
  truncated to 32 bits (unit_ns = 1000 on bmv2, 1024 on Tofino: its 48-bit ns clock >> 10);
  differences of times wrap modulo 2**32.
- each packet updates its flow's state, then reads the features (a packet sees itself counted).
- counters saturate at their declared width; non-IPv4 packets touch no state (features 0).

Per-packet kinds besides header fields (read as the header fields ``l4.server_port`` and
``l4.client_port``, 16 bits, categorical unless declared otherwise):
  server_port                           the smaller of the TCP/UDP ports (the service's side of
                                        the conversation in either direction), 0 without TCP/UDP
  client_port                           the larger of the two ports

Kinds (``param`` in brackets):
  pkt_count, byte_count                 saturating counters
  min_len, max_len                      extremes of the packet length (16 bits)
  ewma_len [k]                          e = len on a new flow, else e - (e >> k) + (len >> k)
  iat                                   now - previous packet's time (0 on a new flow), saturated
  flow_age                              now - first packet's time, saturated
  len_bin [b] (+ bin_shift)             packets with min(len >> bin_shift, bins - 1) == b
  iat_bin [b] (+ bin_shift)             packets (after the first) with min(iat >> bin_shift,
                                        bins - 1) == b

Per-flow decisions (the ``flow_decide`` knob N >= 1; 0 classifies every packet on its own):
each eligible packet counts its flow (``n``: the packets of the flow since it took its slot,
itself included, saturating at 255). A packet with n <= N is classified by the model; the packet
with n == N also stores its class in the flow's slot; a packet with n > N takes the stored class
and its verdict, whatever the model says of it. Flow state is directional, so each direction of a
conversation decides on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = "header"
PORT_KINDS = {"server_port": "l4.server_port", "client_port": "l4.client_port"}
"""Per-packet port features (categorical by default): the header field each kind reads."""
FLOW_KINDS = ("pkt_count", "byte_count", "min_len", "max_len", "ewma_len", "iat", "flow_age",
              "len_bin", "iat_bin")
LEN_BITS = 16
DECISION_COUNT_BITS = 8  # the per-flow decision's packet counter (saturating at 255)
DECIDE_AT = (0, 1, 2, 3, 4, 6, 8)  # the design space of N (0: per packet)


@dataclass(frozen=True)
class FlowConfig:
    """Register array geometry and the time base of the flow state."""

    slots: int = 4096
    time_shift: int = 0
    unit_ns: int = 1000

    def __post_init__(self) -> None:
        if self.slots < 2 or self.slots & (self.slots - 1) or self.slots > 65536:
            raise ValueError(f"flow slots must be a power of two in 2..65536, not {self.slots}")
        if not 0 <= self.time_shift <= 24:
            raise ValueError("time_shift must be 0..24")


@dataclass(frozen=True)
class FeatureDef:
    """One feature: a header field or a flow-state quantity, with its width in bits."""

    name: str
    kind: str
    width: int
    field: str | None = None  # header kind: e.g. "ipv4.ttl"
    param: int = 0  # ewma_len: k; len_bin/iat_bin: the bin index
    bin_shift: int = 0  # len_bin/iat_bin: value >> bin_shift selects the bin
    bins: int = 1  # len_bin/iat_bin: number of bins (the last one takes the rest)
    categorical: bool = False  # values are categories (exact-match tables may map them)

    @property
    def is_flow(self) -> bool:
        return self.kind in FLOW_KINDS

    @property
    def max_value(self) -> int:
        return (1 << self.width) - 1


def validate(feature: FeatureDef) -> None:
    """Raise ValueError describing what is wrong with a declaration."""
    from homunculus.features.headers import lookup_header_field

    if feature.kind == HEADER:
        if feature.field is None:
            raise ValueError("a header feature needs 'field'")
        hf = lookup_header_field(feature.field)
        if hf.width != feature.width:
            raise ValueError(f"declared width {feature.width} but header field {feature.field} "
                             f"has {hf.width} bits")
        return
    if feature.kind not in FLOW_KINDS:
        raise ValueError(f"unknown feature kind '{feature.kind}'; known: "
                         f"{[HEADER, *FLOW_KINDS]}")
    if not 1 <= feature.width <= 32:
        raise ValueError("a flow feature's width must be 1..32 bits")
    if feature.kind in ("min_len", "max_len", "ewma_len") and feature.width != LEN_BITS:
        raise ValueError(f"{feature.kind} is a packet length: width must be {LEN_BITS}")
    if feature.kind == "ewma_len" and not 1 <= feature.param <= 8:
        raise ValueError("ewma_len needs param (the shift k) in 1..8")
    if feature.kind in ("len_bin", "iat_bin"):
        if feature.bins < 1 or not 0 <= feature.param < feature.bins:
            raise ValueError(f"bin index {feature.param} outside 0..{feature.bins - 1}")
        if not 0 <= feature.bin_shift <= 31:
            raise ValueError("bin_shift must be 0..31")


def histogram(name: str, kind: str, bins: int, bin_shift: int, width: int) -> list[FeatureDef]:
    """Expand a histogram into one feature per bin: ``<name>0 .. <name><bins-1>``."""
    return [FeatureDef(f"{name}{b}", kind, width, param=b, bin_shift=bin_shift, bins=bins)
            for b in range(bins)]
