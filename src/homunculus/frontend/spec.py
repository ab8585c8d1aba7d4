"""The declarative spec shared by both frontends (pydantic-validated; unknown keys rejected)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from homunculus.search.metrics import METRICS
from homunculus.search.study import RESOURCE_OBJECTIVES

MAX_SEED = 2**32 - 1


def _file_name(value: str) -> str:
    if "\0" in value:
        raise ValueError("a file path cannot contain a NUL character")
    return value


FilePath = Annotated[str, AfterValidator(_file_name)]  # a path a spec names (NUL refused)


class Strict(BaseModel):
    """Unknown keys are errors; so are NaN and infinite numbers (never a meaningful setting)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FeatureSpec(Strict):
    name: str = Field(min_length=1)
    width: int = Field(ge=1, le=32, description="bits, as the data plane sees the field")
    field: str | None = Field(default=None, description="header field, e.g. ipv4.ttl")
    categorical: bool = Field(
        default=False, description="values are categories (ports, protocols, codes): models "
                                   "may map frequent ones through an exact-match table")
    model: str | None = Field(default=None, min_length=1,
                              description="schedules: the class of this upstream model")


class DataSpec(Strict):
    path: FilePath = Field(description="CSV or Parquet file, relative to the spec")
    label: str
    features: list[FeatureSpec] = Field(min_length=1)
    test_path: FilePath | None = None
    test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    group: str | None = Field(
        default=None, min_length=1,
        description="a column naming each row's group (capture, flow, device...): the test "
                    "split and the cross-validation folds keep every group on one side")


class VerdictSpec(Strict):
    kind: Literal["metadata", "dscp", "drop", "forward"] = "metadata"
    default_port: int = Field(default=1, ge=0, le=511)
    dscp: dict[str, int] = Field(default_factory=dict, description="class label -> DSCP 0..63")
    drop: list[str] = Field(default_factory=list, description="class labels to drop")
    ports: dict[str, int] = Field(default_factory=dict, description="class label -> port")

    @field_validator("dscp")
    @classmethod
    def _dscp_range(cls, v: dict[str, int]) -> dict[str, int]:
        for label, value in v.items():
            if not 0 <= value <= 63:
                raise ValueError(f"DSCP for class '{label}' is {value}; it must be 0..63")
        return v

    @field_validator("ports")
    @classmethod
    def _port_range(cls, v: dict[str, int]) -> dict[str, int]:
        for label, value in v.items():
            if not 0 <= value <= 511:
                raise ValueError(f"port for class '{label}' is {value}; it must be 0..511")
        return v


Metric = Literal["f1_macro", "f1_binary", "accuracy", "recall", "precision"]
assert set(Metric.__args__) == set(METRICS)  # type: ignore[attr-defined]
Objective = Literal["metric", "entries", "tables", "stages", "sram_kbit", "tcam_kbit", "phv_bits"]
assert set(Objective.__args__) == {"metric", *RESOURCE_OBJECTIVES}  # type: ignore[attr-defined]


class ModelSpec(Strict):
    name: str = Field(min_length=1)
    metric: Metric = "f1_macro"
    class_of_interest: str | None = None
    algorithms: list[str] | None = None
    objectives: list[Objective] = Field(default_factory=lambda: ["metric"])
    verdict: VerdictSpec = Field(default_factory=VerdictSpec)

    @field_validator("objectives")
    @classmethod
    def _metric_first(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "metric" or len(set(v)) != len(v):
            raise ValueError("objectives must start with 'metric', then distinct resources "
                             f"from {list(RESOURCE_OBJECTIVES)}")
        return v


class Performance(Strict):
    throughput_gpps: float | None = Field(default=None, gt=0)
    latency_ns: float | None = Field(default=None, gt=0)


class Resources(Strict):
    stages: int | None = Field(default=None, ge=1)
    tables: int | None = Field(default=None, ge=1)
    sram_kbit: float | None = Field(default=None, ge=0)
    tcam_kbit: float | None = Field(default=None, ge=0)
    entries: int | None = Field(default=None, ge=1)
    phv_bits: int | None = Field(default=None, ge=1)
    instructions: int | None = Field(default=None, ge=1, description="XDP: per packet")


class Constraints(Strict):
    performance: Performance = Field(default_factory=Performance)
    resources: Resources = Field(default_factory=Resources)


class PlatformSpec(Strict):
    target: Literal["tofino", "bmv2", "xdp", "c"]
    profile: dict[str, Any] = Field(
        default_factory=dict, description="overrides of the target profile's documented defaults")
    constraints: Constraints = Field(default_factory=Constraints)
    toolchain: FilePath | None = Field(
        default=None, min_length=1,
        description="tofino/bmv2: the P4 compiler to run on the generated program (bf-p4c, "
                    "p4c-barefoot or p4c-bm2-ss): a path relative to the spec, or a name on PATH")

    @field_validator("profile")
    @classmethod
    def _profile_values(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not isinstance(value, bool | int | float) or (
                    isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"profile field '{key}' is {value!r}; it must be a finite "
                                 "number or true/false")
        return v


class SearchSpec(Strict):
    trials: int | None = Field(default=30, ge=1)
    seconds: float | None = Field(default=None, gt=0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    sampler: Literal["tpe", "random"] = "tpe"
    validation_fraction: float = Field(default=0.25, gt=0.0, lt=1.0)
    cv_folds: int | None = Field(
        default=None, ge=1, le=20,
        description="folds of the cross-validated trial metric (1: one validation split of "
                    "validation_fraction); default by data size")
    toolchain_feasibility: bool = Field(
        default=False, description="a trial is feasible only if the P4 compiler accepts its "
                                   "program within the stage limit (needs a compiler)")


class TrafficFeature(Strict):
    """A data-plane feature (features/library.py); ``len_hist``/``iat_hist`` expand to bins."""

    name: str = Field(min_length=1)
    kind: str = "header"
    width: int = Field(ge=1, le=32)
    field: str | None = None
    param: int = 0
    bins: int = Field(default=1, ge=1, le=64)
    bin_shift: int = Field(default=0, ge=0, le=31)
    categorical: bool | None = Field(
        default=None, description="values are categories (default: true for server_port and "
                                   "client_port, false otherwise)")
    model: str | None = Field(default=None, min_length=1,
                              description="schedules: the class of this upstream model")


class LabelSpec(Strict):
    kind: Literal["file", "attacks", "ndpi"]
    path: FilePath | None = Field(default=None, description="file: the label CSV")
    default: str = "benign"
    scenario: Literal["anomaly", "botnet"] | None = None
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    first_n: int = Field(default=8, ge=1, description="ndpi: packets per flow")
    max_files: int | None = Field(default=None, ge=1, description="ndpi: captures to use")


class BackgroundSpec(Strict):
    """Background traffic for attack scenarios: one real nDPI capture, or synthetic flows."""

    ndpi_capture: FilePath | None = Field(
        default=None, description="a capture of the nDPI test suite, e.g. netflix.pcap")
    flows: int = Field(default=300, ge=1)
    seconds: float = Field(default=60.0, gt=0)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class FlowSpec(Strict):
    slots: int = 4096
    time_shift: int = Field(default=0, ge=0, le=24)


class TrafficSpec(Strict):
    """Packets in, per-packet features computed as the data plane computes them."""

    pcaps: list[FilePath] = Field(default_factory=list)
    background: BackgroundSpec | None = Field(
        default=None, description="synthetic background traffic when no capture is given")
    labels: LabelSpec
    features: list[TrafficFeature] = Field(min_length=1)
    flow: FlowSpec = Field(default_factory=FlowSpec)
    test_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    split: Literal["flow", "file", "time"] = "flow"
    max_packets: int | None = Field(default=None, ge=1)
    select_features: bool = Field(default=False, description="search the feature set too")


class AdaptSpec(Strict):
    """Life after deployment (``homunculus adapt``): telemetry out of the data plane and, on
    switches, model tables keyed on a version register so installs are atomic."""

    sampling: Literal["rate", "first_k", "first_k_rate"] = Field(
        default="first_k", description="rate: every one_in-th classified packet; first_k: the "
                                       "first first_k packets of each flow; first_k_rate: the "
                                       "first first_k packets of each flow, then every "
                                       "one_in-th of its later packets (XDP only)")
    one_in: int = Field(default=16, ge=1, le=1 << 20)
    first_k: int = Field(default=4, ge=1, le=1 << 16)
    versioned: bool = Field(default=True, description="switches: version-keyed model tables")


class Spec(Strict):
    """A whole YAML spec: one model on one platform (schedules of several come later)."""

    name: str = Field(min_length=1)
    data: DataSpec | None = None
    traffic: TrafficSpec | None = None
    model: ModelSpec
    platform: PlatformSpec
    search: SearchSpec = Field(default_factory=SearchSpec)
    adapt: AdaptSpec | None = Field(
        default=None, description="compile for adaptation: telemetry and atomic installs")

    @model_validator(mode="after")
    def _one_source(self) -> Spec:
        if (self.data is None) == (self.traffic is None):
            raise ValueError("give exactly one of 'data' (a feature table) or 'traffic' "
                             "(packet captures)")
        return self


# ----------------------------------------------------------------------------- schedules


class ScheduledModelSpec(ModelSpec):
    """One model of a schedule: the model with its own data (or traffic) and weight."""

    data: DataSpec | None = None
    traffic: TrafficSpec | None = None
    weight: float = Field(default=1.0, gt=0, description="its metric's weight in the joint "
                                                          "objective")

    @model_validator(mode="after")
    def _one_source(self) -> ScheduledModelSpec:
        if (self.data is None) == (self.traffic is None):
            raise ValueError(f"model '{self.name}': give exactly one of 'data' (a feature "
                             "table) or 'traffic' (packet captures)")
        return self


class PolicySpec(Strict):
    """How the verdicts of the models that ran combine (schedule/policy.py)."""

    kind: Literal["severity", "priority"] = "severity"
    order: list[str] = Field(default_factory=list, description="models, highest priority "
                                                               "first (default: downstream "
                                                               "first, parallel left to right)")
    default_port: int | None = Field(default=None, ge=0, le=511)


class JointSpec(Strict):
    """The joint allocation of a schedule's models on one device (schedule/joint.py)."""

    variants: int = Field(default=8, ge=1, le=64, description="Pareto variants per model")
    max_rounds: int = Field(default=40, ge=1, le=1000,
                            description="integer-program solves (cut and re-solve) at most")


class ScheduleSpec(Strict):
    """Several models on one platform: ``models`` and a ``schedule`` expression."""

    name: str = Field(min_length=1)
    models: list[ScheduledModelSpec] = Field(min_length=1)
    schedule: str | None = Field(default=None, description='e.g. "ad[benign] > (tc | bd)"')
    policy: PolicySpec = Field(default_factory=PolicySpec)
    platform: PlatformSpec
    search: SearchSpec = Field(default_factory=SearchSpec)
    joint: JointSpec = Field(default_factory=JointSpec)


class NamedPlatformSpec(PlatformSpec):
    name: str | None = Field(default=None, min_length=1)


class ChainSpec(Strict):
    """One model split over a chain of devices (``platforms``, in order or as ``chain``)."""

    name: str = Field(min_length=1)
    data: DataSpec | None = None
    traffic: TrafficSpec | None = None
    model: ModelSpec
    platforms: list[NamedPlatformSpec] = Field(min_length=1)
    chain: list[str] | None = Field(default=None, min_length=1,
                                    description="platform names in chain order")
    cuts: list[int] | None = Field(
        default=None, min_length=1,
        description="an MLP split by layers over hosts: the first layer of every device after "
                    "the first (default: the partitioner chooses)")
    search: SearchSpec = Field(default_factory=SearchSpec)

    @model_validator(mode="after")
    def _one_source(self) -> ChainSpec:
        if (self.data is None) == (self.traffic is None):
            raise ValueError("give exactly one of 'data' (a feature table) or 'traffic' "
                             "(packet captures)")
        return self
