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
from homunculus.errors import DataError, SpecError
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
    whether its values are categories (exact-match tables may map them).

    ``model``: in a schedule, the class of that upstream model (computed by the compiler, so the
    loader returns no column for it; the model's loader must return the upstream model's
    features, by the same names, among its own)."""

    name: str
    width: int
    field: str | None = None
    categorical: bool = False
    model: str | None = None


@dataclass
class LoadedData:
    """A decorated data-loading function and the features it returns, in column order."""

    fn: Callable[[], Any]
    features: list[FeatureDecl]
    origin: tuple[str, int | None]
    class_features: list[Feature] = field(default_factory=list)  # upstream models' classes

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
        self.class_features = [f for f in items if f.model is not None]
        self.features = [FeatureDecl(f.name, f.width, f.field, categorical=f.categorical)
                         for f in items if f.model is None]
        try:
            check_feature_decls(self.features, self.origin[0])
        except FeatureDeclError as exc:
            raise SpecError(str(exc), file=self.origin[0], field=f"features[{exc.index}]",
                            line=self.origin[1]) from None

    def __call__(self, fn: Callable[[], Any]) -> LoadedData:
        return LoadedData(fn, self.features, self.origin, self.class_features)


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
    def __gt__(self, other: Any) -> Schedule:
        if not isinstance(other, _Schedulable):
            return NotImplemented
        return Schedule(">", [self, other])

    def __or__(self, other: Any) -> Schedule:
        if not isinstance(other, _Schedulable):
            return NotImplemented
        return Schedule("|", [self, other])

    def __bool__(self) -> bool:
        origin = _caller()
        raise SpecError("a schedule has no truth value: 'a > b > c' is Python's chained "
                        "comparison ('a > b and b > c'); write (a > b) > c",
                        file=origin[0], field="schedule", line=origin[1])


@dataclass(eq=False)
class Schedule(_Schedulable):
    """``m1 > m2`` runs m2 on the packets m1 passes (sequential); ``m1 | m2`` runs them side by
    side. ``m1["benign"] > m2``: m2 runs on the packets m1 puts in class ``benign``."""

    op: str
    parts: list[Any]

    def models(self) -> Iterator[Model]:
        for part in self.parts:
            yield from part.models()

    def node(self) -> Any:
        """The schedule expression (schedule/expr.py)."""
        from homunculus.schedule.expr import Seq, par_of

        nodes = [part.node() for part in self.parts]
        return Seq(nodes[0], nodes[1]) if self.op == ">" else par_of(nodes)


@dataclass(eq=False)
class Gated(_Schedulable):
    """A model whose listed classes let the packet on to the right side of ``>``."""

    model: Model
    classes: tuple[str, ...]

    def models(self) -> Iterator[Model]:
        yield self.model

    def node(self) -> Any:
        from homunculus.schedule.expr import Ref

        return Ref(self.model.spec.name, self.classes)


class Model(_Schedulable):
    """An ML need: the data, the metric that matters, the families allowed, the verdict."""

    def __init__(self, name: str, *, data: LoadedData, metric: str = "f1_macro",
                 algorithms: list[str] | None = None, class_of_interest: str | None = None,
                 objectives: list[str] | tuple[str, ...] = ("metric",),
                 verdict: VerdictSpec | None = None, weight: float = 1.0) -> None:
        self.origin = _caller()
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise SpecError("weight must be a positive number", file=self.origin[0],
                            field="weight", line=self.origin[1])
        self.weight = float(weight)
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

    def node(self) -> Any:
        from homunculus.schedule.expr import Ref

        return Ref(self.spec.name)

    def __getitem__(self, classes: str | tuple[str, ...]) -> Gated:
        """``model["benign", "web"] > other``: other runs on the packets put in these
        classes."""
        chosen = (classes,) if isinstance(classes, str) else tuple(classes)
        if not chosen or not all(isinstance(c, str) for c in chosen):
            origin = _caller()
            raise SpecError("a gate lists class labels: model['benign'] or "
                            "model['benign', 'web']", file=origin[0], field="schedule",
                            line=origin[1])
        return Gated(self, chosen)


@dataclass
class Platform:
    """A target device with its profile overrides, constraints and scheduled models."""

    target: str
    profile: dict[str, Any] = field(default_factory=dict)
    constraints: Constraints = field(default_factory=Constraints)
    scheduled: Model | Schedule | None = None
    origin: tuple[str, int | None] = ("<python>", None)
    toolchain: str | None = None  # P4 compiler (path relative to the script, or name on PATH)
    policy: dict[str, Any] = field(default_factory=dict)  # how the models' verdicts combine
    schedule_origin: tuple[str, int | None] = ("<python>", None)

    def constrain(self, performance: dict[str, float] | None = None,
                  resources: dict[str, float] | None = None) -> Platform:
        origin = _caller()
        try:
            self.constraints = Constraints(performance=performance or {},
                                           resources=resources or {})
        except ValidationError as exc:
            raise _spec_error(exc, "constrain", origin) from None
        return self

    def schedule(self, what: Model | Schedule, *, policy: str | dict[str, Any] | None = None
                 ) -> Platform:
        """What runs here: a Model, or a schedule of several built with ``>``, ``|`` and gates
        (``ad["benign"] > tc | bd``). ``policy``: ``"severity"`` (default), ``"priority"`` or
        ``{"kind": ..., "order": [...], "default_port": n}`` (schedule/policy.py)."""
        origin = _caller()
        if isinstance(what, Gated):
            raise SpecError("a gate (model[...]) only acts on the left of '>'",
                            file=origin[0], field="schedule", line=origin[1])
        if not isinstance(what, Model | Schedule):
            raise SpecError("schedule() takes a Model or a schedule built with > or |",
                            file=origin[0], field="schedule", line=origin[1])
        if policy is not None and not isinstance(policy, str | dict):
            raise SpecError("policy is a name ('severity', 'priority') or a dict",
                            file=origin[0], field="policy", line=origin[1])
        self.policy = {"kind": policy} if isinstance(policy, str) else dict(policy or {})
        self.scheduled = what
        self.schedule_origin = origin
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

    @staticmethod
    def chain(*platforms: Platform, cuts: list[int] | None = None) -> Chain:
        """Devices in packet order, over which one model too large for one device is split
        (NetNN-style: partial results travel in a header between them). A chain of hosts
        (``XDP``, ``C``) splits an MLP by layers; ``cuts`` then fixes the first layer of every
        device after the first (default: the partitioner chooses)."""
        origin = _caller()
        if not platforms:
            raise SpecError("a chain needs at least one platform", file=origin[0],
                            field="chain", line=origin[1])
        for i, p in enumerate(platforms):
            if not isinstance(p, Platform):
                raise SpecError(f"chain argument {i + 1} is not a platform (got "
                                f"{type(p).__name__}); use Platforms.Tofino() and friends",
                                file=origin[0], field=f"chain[{i}]", line=origin[1])
            if p.target in ("xdp", "c") and any(q.target not in ("xdp", "c")
                                                for q in platforms[i + 1:]
                                                if isinstance(q, Platform)):
                raise SpecError(f"a {p.target} host can only end a chain (or be followed by "
                                "hosts only: an MLP split by layers)", file=origin[0],
                                field=f"chain[{i}]", line=origin[1])
        if len({id(p) for p in platforms}) != len(platforms):
            raise SpecError("a platform is twice in the chain", file=origin[0], field="chain",
                            line=origin[1])
        return Chain(list(platforms), origin, cuts=None if cuts is None else list(cuts))


@dataclass
class Chain:
    """Devices in packet order running one model split over them."""

    platforms: list[Platform]
    origin: tuple[str, int | None]
    scheduled: Model | None = None
    cuts: list[int] | None = None  # an MLP over hosts: each later device's first layer

    def schedule(self, model: Model) -> Chain:
        if not isinstance(model, Model):
            origin = _caller()
            raise SpecError("a chain runs one model split over its devices; schedules of "
                            "several models run on one device", file=origin[0],
                            field="schedule", line=origin[1])
        self.scheduled = model
        return self


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


def plan_of(platform: Platform | Chain, *, trials: int | None, seconds: float | None,
            seed: int, sampler: str, toolchain_feasibility: bool = False) -> Any:
    """The Plan of one model on one platform; a SchedulePlan for several models, a ChainPlan
    for a chain (frontend/schedule_plan.py)."""
    origin = _caller()
    if platform.scheduled is None:
        raise SpecError("nothing is scheduled: call platform.schedule(model) before generate()",
                        file=origin[0], field="schedule", line=origin[1])
    if isinstance(platform, Chain):
        from homunculus.frontend.schedule_plan import ChainPlan

        plans = [plan_of(_single(p, platform.scheduled), trials=trials, seconds=seconds,
                         seed=seed, sampler=sampler,
                         toolchain_feasibility=toolchain_feasibility)
                 for p in platform.platforms]
        return ChainPlan(plans[0], [p.platform for p in plans],
                         [f"device{i}" for i in range(len(plans))], platform.origin[0],
                         platform.cuts)
    models = list(platform.scheduled.models())
    if isinstance(platform.scheduled, Schedule):
        return schedule_plan_of(platform, models, trials=trials, seconds=seconds, seed=seed,
                                sampler=sampler, toolchain_feasibility=toolchain_feasibility)
    model = models[0]
    if model.data.class_features:
        f = model.data.class_features[0]
        raise SpecError(f"feature '{f.name}' is the class of '{f.model}': a model's class is "
                        "a feature only in a schedule of several models",
                        file=model.data.origin[0], field="features", line=model.data.origin[1])
    search, platform_spec = _search_and_platform(platform, origin, trials=trials,
                                                 seconds=seconds, seed=seed, sampler=sampler,
                                                 toolchain_feasibility=toolchain_feasibility)
    origins = {"model": model.origin, "platform": platform.origin, "data": model.data.origin,
               "search": origin}
    scripts = sorted({Path(f) for f, _ in origins.values() if Path(f).is_file()})
    return Plan(model.spec.name, model.spec, platform_spec, search, model.data.dataset,
                model.origin[0], origins, n_models=len(models), inputs=scripts)


def _single(platform: Platform, model: Model) -> Platform:
    """A copy of ``platform`` running ``model`` alone."""
    from dataclasses import replace

    return replace(platform, scheduled=model)


def _search_and_platform(platform: Platform, origin: tuple[str, int | None] | None, *,
                         trials: int | None,
                         seconds: float | None, seed: int, sampler: str,
                         toolchain_feasibility: bool) -> tuple[SearchSpec, PlatformSpec]:
    """The search and platform specs of a generate() call (errors at the script's lines;
    ``origin``: where the search settings come from; None: the script's calling line, looked
    up only on an error)."""
    try:
        search = SearchSpec(trials=trials, seconds=seconds, seed=seed, sampler=sampler,
                            toolchain_feasibility=toolchain_feasibility)
    except ValidationError as exc:
        raise _spec_error(exc, "", origin or _caller()) from None
    try:
        platform_spec = PlatformSpec(target=platform.target, profile=platform.profile,
                                     constraints=platform.constraints,
                                     toolchain=platform.toolchain)
    except ValidationError as exc:
        raise _spec_error(exc, "platform", platform.origin) from None
    return search, platform_spec


def schedule_plan_of(platform: Platform, models: list[Model], *, trials: int | None,
                     seconds: float | None, seed: int, sampler: str,
                     toolchain_feasibility: bool) -> Any:
    """The SchedulePlan of several models on ``platform`` (errors at the script's lines)."""
    from homunculus.frontend.schedule_plan import (
        ClassFeature,
        ModelPlan,
        SchedulePlan,
        check_schedule_plan,
    )
    from homunculus.frontend.spec import JointSpec, PolicySpec

    origin = platform.schedule_origin
    search, platform_spec = _search_and_platform(platform, None, trials=trials,
                                                 seconds=seconds, seed=seed, sampler=sampler,
                                                 toolchain_feasibility=toolchain_feasibility)
    try:
        policy = PolicySpec(**platform.policy)
    except ValidationError as exc:
        raise _spec_error(exc, "policy", origin) from None
    plans = []
    models = list({id(m): m for m in models}.values())  # a model used twice: the schedule says
    for m in models:
        origins = {"model": m.origin, "platform": platform.origin, "data": m.data.origin,
                   "search": origin}
        mp = ModelPlan(m.spec.name, m.spec, platform_spec, search, m.data.dataset,
                       m.origin[0], origins, weight=m.weight)
        mp.inputs = sorted({Path(f) for f, _ in origins.values() if Path(f).is_file()})
        mp.class_features = [ClassFeature(f.name, f.width, f.model, "data.features")
                             for f in m.data.class_features]
        mp.upstream_values = _columns_by_name(mp)
        plans.append(mp)
    name = "-".join(m.spec.name for m in models)
    plan = SchedulePlan(name, plans, platform.scheduled.node(), policy, platform_spec, search,
                        JointSpec(), origin[0], {"schedule": origin, "policy": origin,
                                                 "platform": platform.origin,
                                                 "search": origin})
    check_schedule_plan(plan)
    return plan


def _columns_by_name(plan: Any) -> Callable[[Dataset, Dataset], tuple[np.ndarray, np.ndarray]]:
    """Python models find an upstream model's features among their own, by name."""

    def upstream(own: Dataset, up: Dataset) -> tuple[np.ndarray, np.ndarray]:
        names = [f.name for f in own.features]
        missing = [f.name for f in up.features if f.name not in names]
        if missing:
            raise plan.error("data", f"it reads an upstream model's class, computed from that "
                                     f"model's features; its @DataLoader must return them too "
                                     f"(missing: {missing})")
        cols = [names.index(f.name) for f in up.features]
        return own.x_train[:, cols], own.x_test[:, cols]

    return upstream


def generate(platform: Platform, out_dir: str | Path = "out", *, trials: int | None = 30,
             seconds: float | None = None, seed: int = 0, sampler: str = "tpe",
             resume: bool = False, progress: bool = True,
             toolchain_feasibility: bool = False) -> Any:
    """Search, train, quantise and emit the scheduled model for ``platform`` into ``out_dir``.

    ``toolchain_feasibility``: the P4 compiler (``platform.toolchain`` or one on PATH) decides
    each trial's feasibility. Under ``homunculus compile SCRIPT -o OUT`` the command line's
    options win.
    """
    from homunculus.compile import CompileOptions, work_plan

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
    from homunculus.schedule.driver import compile_any

    result = work_plan(plan, cli.worker) if cli is not None and cli.worker is not None else \
        compile_any(plan, options)
    calls = _CALLS.get()
    if calls is not None:
        calls.append(result)
    return result
