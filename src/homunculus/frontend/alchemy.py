"""The Alchemy-style Python frontend (after the Homunculus paper).

    @DataLoader(features=[Feature("ttl", 8, field="ipv4.ttl"), ...])
    def load():
        return x_train, y_train, x_test, y_test

    model = Model("iot", data=load, metric="f1_macro", algorithms=["dt", "rf"])
    tofino = Platforms.Tofino()
    tofino.constrain(performance={"throughput_gpps": 1}, resources={"stages": 12})
    tofino.schedule(model)
    generate(tofino, "out/")

Errors name the script and the line of the call that caused them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from homunculus.data.dataset import (
    Dataset,
    FeatureDecl,
    FeatureDeclError,
    check_feature_decls,
    make_dataset,
)
from homunculus.errors import DataError, NotSupportedError, SpecError
from homunculus.frontend.plan import Plan
from homunculus.frontend.spec import Constraints, ModelSpec, PlatformSpec, SearchSpec, VerdictSpec

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


def _caller() -> tuple[str, int | None]:
    """File and line of the first frame outside this package (the user's script)."""
    for frame in inspect.stack()[1:]:
        if not str(Path(frame.filename).resolve()).startswith(_PACKAGE_DIR):
            return frame.filename, frame.lineno
    return "<python>", None


def _spec_error(exc: ValidationError, prefix: str, origin: tuple[str, int | None]) -> SpecError:
    err = exc.errors()[0]
    path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    return SpecError(err["msg"], file=origin[0], field=path, line=origin[1])


@dataclass(frozen=True)
class Feature:
    """A feature as the data plane sees it: name, width in bits, optional header field, and
    whether its values are categories (exact-match tables may map them)."""

    name: str
    width: int
    field: str | None = None
    categorical: bool = False


@dataclass
class LoadedData:
    """A decorated data-loading function and the features it returns, in column order."""

    fn: Callable[[], Any]
    features: list[FeatureDecl]
    origin: tuple[str, int | None]

    def dataset(self) -> Dataset:
        result = self.fn()
        source = f"{self.origin[0]}:{self.origin[1]} ({self.fn.__name__})"
        if isinstance(result, dict):
            try:
                result = (result["x_train"], result["y_train"], result["x_test"],
                          result["y_test"])
            except KeyError as exc:
                raise DataError(f"{source}: the loader's dict lacks {exc.args[0]!r}") from None
        if not isinstance(result, tuple | list) or len(result) not in (4, 5):
            raise DataError(f"{source}: a @DataLoader function must return "
                            "(x_train, y_train, x_test, y_test[, groups_train])")
        x_train, y_train, x_test, y_test = (np.asarray(v) for v in result[:4])
        ds = make_dataset(self.features, x_train, y_train, x_test, y_test, source)
        if len(result) == 5:  # each training row's group: the folds keep groups on one side
            groups = np.asarray(result[4])
            if groups.shape != (len(ds.y_train),):
                raise DataError(f"{source}: groups_train holds {groups.size} values for "
                                f"{len(ds.y_train)} training rows")
            ds = replace(ds, groups_train=pd.factorize(groups.astype(str))[0],
                         group_name="group")
        return ds


class DataLoader:
    """Decorator declaring the features a loader returns: ``@DataLoader(features=[...])``."""

    def __init__(self, features: list[Feature] | dict[str, int]) -> None:
        self.origin = _caller()
        items = ([Feature(k, v) for k, v in features.items()] if isinstance(features, dict)
                 else list(features))
        self.features = [FeatureDecl(f.name, f.width, f.field, categorical=f.categorical)
                         for f in items]
        try:
            check_feature_decls(self.features, self.origin[0])
        except FeatureDeclError as exc:
            raise SpecError(str(exc), file=self.origin[0], field=f"features[{exc.index}]",
                            line=self.origin[1]) from None

    def __call__(self, fn: Callable[[], Any]) -> LoadedData:
        return LoadedData(fn, self.features, self.origin)


class Verdict:
    """What the switch does with each class."""

    @staticmethod
    def metadata(default_port: int = 1) -> VerdictSpec:
        return VerdictSpec(kind="metadata", default_port=default_port)

    @staticmethod
    def dscp(marks: dict[str, int], default_port: int = 1) -> VerdictSpec:
        return VerdictSpec(kind="dscp", dscp=marks, default_port=default_port)

    @staticmethod
    def drop(classes: list[str], default_port: int = 1) -> VerdictSpec:
        return VerdictSpec(kind="drop", drop=classes, default_port=default_port)

    @staticmethod
    def forward(ports: dict[str, int], default_port: int = 1) -> VerdictSpec:
        return VerdictSpec(kind="forward", ports=ports, default_port=default_port)


class _Schedulable:
    def __gt__(self, other: _Schedulable) -> Schedule:
        return Schedule(">", [self, other])

    def __or__(self, other: _Schedulable) -> Schedule:
        return Schedule("|", [self, other])


@dataclass(eq=False)
class Schedule(_Schedulable):
    """``m1 > m2`` runs m2 after m1 (sequential); ``m1 | m2`` runs them side by side."""

    op: str
    parts: list[Any]

    def models(self) -> Iterator[Model]:
        for part in self.parts:
            yield from part.models() if isinstance(part, Schedule) else [part]


class Model(_Schedulable):
    """An ML need: the data, the metric that matters, the families allowed, the verdict."""

    def __init__(self, name: str, *, data: LoadedData, metric: str = "f1_macro",
                 algorithms: list[str] | None = None, class_of_interest: str | None = None,
                 objectives: list[str] | tuple[str, ...] = ("metric",),
                 verdict: VerdictSpec | None = None) -> None:
        self.origin = _caller()
        if not isinstance(data, LoadedData):
            raise SpecError("data must be a function decorated with @DataLoader(...)",
                            file=self.origin[0], field="data", line=self.origin[1])
        self.data = data
        try:
            self.spec = ModelSpec(name=name, metric=metric, algorithms=algorithms,
                                  class_of_interest=class_of_interest,
                                  objectives=list(objectives), verdict=verdict or VerdictSpec())
        except ValidationError as exc:
            raise _spec_error(exc, "", self.origin) from None

    def models(self) -> Iterator[Model]:
        yield self


@dataclass
class Platform:
    """A target device with its profile overrides, constraints and scheduled models."""

    target: str
    profile: dict[str, Any] = field(default_factory=dict)
    constraints: Constraints = field(default_factory=Constraints)
    scheduled: Model | Schedule | None = None
    origin: tuple[str, int | None] = ("<python>", None)
    toolchain: str | None = None  # P4 compiler (path relative to the script, or name on PATH)

    def constrain(self, performance: dict[str, float] | None = None,
                  resources: dict[str, float] | None = None) -> Platform:
        origin = _caller()
        try:
            self.constraints = Constraints(performance=performance or {},
                                           resources=resources or {})
        except ValidationError as exc:
            raise _spec_error(exc, "constrain", origin) from None
        return self

    def schedule(self, what: Model | Schedule) -> Platform:
        if not isinstance(what, Model | Schedule):
            origin = _caller()
            raise SpecError("schedule() takes a Model or a schedule built with > or |",
                            file=origin[0], field="schedule", line=origin[1])
        self.scheduled = what
        return self


class Platforms:
    """The targets: ``Tofino()`` (TNA), ``BMv2()`` (v1model), ``XDP()`` (eBPF) and ``C()``."""

    @staticmethod
    def Tofino(toolchain: str | None = None, **profile: Any) -> Platform:  # noqa: N802
        """Tofino 1 (TNA); ``toolchain``: bf-p4c or p4c-barefoot to run on the program."""
        return Platform("tofino", dict(profile), origin=_caller(), toolchain=toolchain)

    @staticmethod
    def BMv2(toolchain: str | None = None, **profile: Any) -> Platform:  # noqa: N802
        """bmv2 (v1model); ``toolchain``: p4c-bm2-ss to run on the program."""
        return Platform("bmv2", dict(profile), origin=_caller(), toolchain=toolchain)

    @staticmethod
    def XDP(**profile: Any) -> Platform:  # noqa: N802
        """eBPF/XDP in the Linux kernel datapath."""
        return Platform("xdp", dict(profile), origin=_caller())

    @staticmethod
    def C(**profile: Any) -> Platform:  # noqa: N802
        """A C shared library (SmartNIC, DPDK or host use)."""
        return Platform("c", dict(profile), origin=_caller())


@dataclass(frozen=True)
class _Overrides:
    out_dir: Path
    trials: int | None
    seconds: float | None
    resume: bool
    seed: int | None
    progress: bool
    p4c: str | None = None
    p4c_timeout: float | None = None
    toolchain_feasibility: bool = False
    shared: Any = None  # Shared: a study shared with workers (--storage, --study)
    worker: Any = None  # WorkerOptions: run as a worker of a shared study instead of compiling


_CLI: ContextVar[_Overrides | None] = ContextVar("homunculus_cli", default=None)
_CALLS: ContextVar[list[Any] | None] = ContextVar("homunculus_calls", default=None)


@contextmanager
def cli_overrides(out_dir: Path, trials: int | None, seconds: float | None, resume: bool,
                  seed: int | None, progress: bool, p4c: str | None = None,
                  p4c_timeout: float | None = None,
                  toolchain_feasibility: bool = False, shared: Any = None,
                  worker: Any = None) -> Iterator[list[Any]]:
    """While active, generate() uses these options and records its results in the list (with
    ``worker``, generate() runs trials of that shared study instead of compiling)."""
    calls: list[Any] = []
    t1 = _CLI.set(_Overrides(out_dir, trials, seconds, resume, seed, progress, p4c, p4c_timeout,
                             toolchain_feasibility, shared, worker))
    t2 = _CALLS.set(calls)
    try:
        yield calls
    finally:
        _CLI.reset(t1)
        _CALLS.reset(t2)


def plan_of(platform: Platform, *, trials: int | None, seconds: float | None, seed: int,
            sampler: str, toolchain_feasibility: bool = False) -> Plan:
    origin = _caller()
    if platform.scheduled is None:
        raise SpecError("nothing is scheduled: call platform.schedule(model) before generate()",
                        file=origin[0], field="schedule", line=origin[1])
    models = list(platform.scheduled.models())
    if len(models) > 1:
        raise NotSupportedError(
            f"{origin[0]}:{origin[1]}: scheduling {len(models)} models "
            f"({' '.join(m.spec.name for m in models)}) with > or | is not supported yet; "
            "schedule one model")
    model = models[0]
    try:
        search = SearchSpec(trials=trials, seconds=seconds, seed=seed, sampler=sampler,
                            toolchain_feasibility=toolchain_feasibility)
    except ValidationError as exc:
        raise _spec_error(exc, "", origin) from None
    try:
        platform_spec = PlatformSpec(target=platform.target, profile=platform.profile,
                                     constraints=platform.constraints,
                                     toolchain=platform.toolchain)
    except ValidationError as exc:
        raise _spec_error(exc, "platform", platform.origin) from None
    origins = {"model": model.origin, "platform": platform.origin, "data": model.data.origin,
               "search": origin}
    scripts = sorted({Path(f) for f, _ in origins.values() if Path(f).is_file()})
    return Plan(model.spec.name, model.spec, platform_spec, search, model.data.dataset,
                model.origin[0], origins, n_models=len(models), inputs=scripts)


def generate(platform: Platform, out_dir: str | Path = "out", *, trials: int | None = 30,
             seconds: float | None = None, seed: int = 0, sampler: str = "tpe",
             resume: bool = False, progress: bool = True,
             toolchain_feasibility: bool = False) -> Any:
    """Search, train, quantise and emit the scheduled model for ``platform`` into ``out_dir``.

    ``toolchain_feasibility``: the P4 compiler (``platform.toolchain`` or one on PATH) decides
    each trial's feasibility. Under ``homunculus compile SCRIPT -o OUT`` the command line's
    options win.
    """
    from homunculus.compile import CompileOptions, compile_plan, work_plan

    cli = _CLI.get()
    wanted = toolchain_feasibility or (cli is not None and cli.toolchain_feasibility)
    plan = plan_of(platform, trials=trials, seconds=seconds, seed=seed, sampler=sampler,
                   toolchain_feasibility=wanted)
    options = CompileOptions(out_dir=Path(out_dir), trials=None, seconds=None, resume=resume,
                             seed=None, progress=progress)
    if cli is not None:
        options = CompileOptions(out_dir=cli.out_dir, trials=cli.trials, seconds=cli.seconds,
                                 resume=cli.resume, seed=cli.seed, progress=cli.progress,
                                 p4c=cli.p4c, p4c_timeout=cli.p4c_timeout, shared=cli.shared)
    result = work_plan(plan, cli.worker) if cli is not None and cli.worker is not None else \
        compile_plan(plan, options)
    calls = _CALLS.get()
    if calls is not None:
        calls.append(result)
    return result
