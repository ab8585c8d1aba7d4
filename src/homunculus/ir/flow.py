"""Flow state in the IR: register arrays indexed by the flow hash, each with one update op.

Per packet (eligible: IPv4 without options): compute ``slot`` and ``sig`` (features/library.py),
then, in dependency order:
  1. ``sig``  (16 bit): old = reg; reg = sig; ``new_flow = old != sig``
  2. ``last`` (32 bit): old = reg; reg = now; ``iat = new_flow ? 0 : now - old``
     ``first`` (32 bit): reg = new_flow ? now : reg; ``age = now - reg``
     counters and length registers (below), which need only new_flow and the length
  3. ``iat_bin`` registers, which need ``iat``
Each feature then reads its register (or iat/age, saturated to its width).
Register ops, with v the stored value, ``sat`` saturating at the register width:
  count      new ? 1 : sat(v + 1)
  add_len    new ? sat(len) : sat(v + len)
  min_len    new ? len : min(v, len)
  max_len    new ? len : max(v, len)
  ewma       new ? len : v - (v >> k) + (len >> k)
  len_bin    hit = min(len >> s, bins - 1) == b;   new ? hit : (hit ? sat(v + 1) : v)
  iat_bin    hit = min(iat >> s, bins - 1) == b;   new ? 0 : (hit ? sat(v + 1) : v)
"""

from __future__ import annotations

from dataclasses import dataclass

from homunculus.features.library import DECISION_COUNT_BITS, FeatureDef, FlowConfig

REGISTER_OPS = ("sig", "last", "first", "count", "add_len", "min_len", "max_len", "ewma",
                "len_bin", "iat_bin")
OP_OF_KIND = {"pkt_count": "count", "byte_count": "add_len", "min_len": "min_len",
              "max_len": "max_len", "ewma_len": "ewma", "len_bin": "len_bin",
              "iat_bin": "iat_bin"}


@dataclass(frozen=True)
class Register:
    name: str
    width: int
    op: str
    param: int = 0  # ewma: k; bins: the bin index
    bin_shift: int = 0
    bins: int = 1

    @property
    def max_value(self) -> int:
        return (1 << self.width) - 1

    @property
    def stage(self) -> int:
        """Dependency level: 0 signature, 1 most state, 2 inter-arrival bins."""
        return 0 if self.op == "sig" else 2 if self.op == "iat_bin" else 1


@dataclass(frozen=True)
class FlowOutput:
    """Feature ``feature`` (index into the pipeline features) reads ``source`` saturated."""

    feature: int
    source: str  # a register name, "iat" or "age"
    width: int


@dataclass(frozen=True)
class FlowDecision:
    """The per-flow decision (features/library.py): register ``count`` (an 8-bit ``count``
    register of the program) gives n; after the model, the decision register stores the class
    at n == ``at`` and gives it back (the class to apply) at n > ``at``."""

    at: int
    count: str
    register: str = "r_decision"
    width: int = DECISION_COUNT_BITS  # of the stored class, too


@dataclass(frozen=True)
class FlowProgram:
    config: FlowConfig
    registers: tuple[Register, ...]
    outputs: tuple[FlowOutput, ...]
    decision: FlowDecision | None = None

    def register(self, name: str) -> Register:
        return next(r for r in self.registers if r.name == name)


def _register_for(f: FeatureDef) -> Register:
    op = OP_OF_KIND[f.kind]
    if op in ("len_bin", "iat_bin"):
        name = f"r_{op}{f.bins}_{f.bin_shift}_{f.param}_w{f.width}"
    else:
        name = f"r_{op}_{f.param}_w{f.width}" if op == "ewma" else f"r_{op}_w{f.width}"
    return Register(name, f.width, op, f.param, f.bin_shift, f.bins)


def lower_flow_features(features: list[FeatureDef], config: FlowConfig,
                        decide_at: int = 0) -> FlowProgram | None:
    """The register program computing every flow feature of ``features`` and, with
    ``decide_at`` N > 0, the per-flow decision's counter (None if there is nothing to keep).

    Features with identical semantics share one register.
    """
    if not 0 <= decide_at < (1 << DECISION_COUNT_BITS) - 1:
        raise ValueError(f"a per-flow decision at packet {decide_at} is outside 0..254")
    flow = [(i, f) for i, f in enumerate(features) if f.is_flow]
    if not flow and not decide_at:
        return None
    registers: dict[str, Register] = {"r_sig": Register("r_sig", 16, "sig")}
    outputs = []
    for i, f in flow:
        if f.kind == "iat" or f.kind == "iat_bin":
            registers.setdefault("r_last", Register("r_last", 32, "last"))
        if f.kind == "flow_age":
            registers.setdefault("r_first", Register("r_first", 32, "first"))
            outputs.append(FlowOutput(i, "age", f.width))
            continue
        if f.kind == "iat":
            outputs.append(FlowOutput(i, "iat", f.width))
            continue
        reg = _register_for(f)
        registers.setdefault(reg.name, reg)
        outputs.append(FlowOutput(i, reg.name, f.width))
    decision = None
    if decide_at:
        count = _register_for(FeatureDef("n", "pkt_count", DECISION_COUNT_BITS))
        registers.setdefault(count.name, count)
        decision = FlowDecision(decide_at, count.name)
    ordered = tuple(sorted(registers.values(), key=lambda r: (r.stage, r.name)))
    return FlowProgram(config, ordered, tuple(outputs), decision)
