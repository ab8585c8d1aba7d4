"""The deployed model as adaptation sees it, and retraining it the same way in a worker process.

:class:`Deployed` reads a compiled OUT: the family, hyperparameters, features, classes and
verdict plan (model/quantised.json), the flow-state program, and the program that runs (XDP: the
CPU program of xdp/snapshot.json and its compiled capacity; switches: pipeline.json with its
installed entries). A retrain keeps all of that: the same family and hyperparameters on new
labelled samples, quantised and lowered for the same target, checked against the deployed
capacity (XDP) and verified 100% against the twin before the gate ever sees it -- XDP: the
deployed object file itself, loaded afresh, with the candidate in a slot, run over the
verification rows with BPF_PROG_TEST_RUN; switches: the P4 twin over the candidate's entries.

A retrain may first re-search the hyperparameters (:func:`research`: a few seeded Optuna TPE
trials of the same family on part of the draw, each fitted to the deployed program); the
choice is trained, lowered and verified like any retrain.

:class:`RetrainWorker` runs retrains in one worker process (spawned once), so training never
blocks telemetry; each result carries the worker's CPU seconds.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from homunculus.data.dataset import FeatureDecl
from homunculus.errors import DataError
from homunculus.features.library import FeatureDef, FlowConfig
from homunculus.ir.flow import FlowProgram, lower_flow_features
from homunculus.ir.pipeline import VerdictPlan
from homunculus.ir.telemetry import TelemetryConfig

SWITCH_TARGETS = ("tofino", "bmv2")


@dataclass(frozen=True)
class Recipe:
    """Everything needed to retrain the deployed model the same way (picklable)."""

    out_dir: str
    target: str  # xdp, tofino or bmv2
    family: str
    params: dict[str, Any]
    decls: tuple[FeatureDecl, ...]
    class_labels: tuple[str, ...]
    verdict: VerdictPlan
    flow: FlowProgram | None
    seed: int
    capacity: dict[str, Any] | None = None  # XDP: the deployed program's
    object_file: str | None = None  # XDP: the deployed program's object
    # switches: the compiled model's switch-lowered pipeline (unversioned): a retrained tree
    # model is fitted into its tables (targets/p4/versioned.py conform)
    switch_compiled: Any = None


@dataclass
class Deployed:
    """A compiled OUT ready for adaptation."""

    recipe: Recipe
    program: Any  # CpuProgram (XDP) or Pipeline with installed entries (switches)
    telemetry: TelemetryConfig | None
    features: tuple[FeatureDef, ...]
    flow_config: FlowConfig | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.recipe.class_labels

    def predict(self, x: np.ndarray, program: Any = None) -> np.ndarray:
        return predict(program if program is not None else self.program, x)


def predict(program: Any, x: np.ndarray) -> np.ndarray:
    """Class indices ``program`` (a CPU program or a switch pipeline) gives feature rows."""
    from homunculus.ir.cpu import CpuProgram

    x = np.asarray(x, dtype=np.int64)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    if isinstance(program, CpuProgram):
        return program.results(x)["class_id"]
    from homunculus.targets.p4.twin import simulate

    return simulate(program, x).class_index


def load_deployed(out_dir: Path) -> Deployed:
    """Read OUT (a traffic compile for xdp, tofino or bmv2); DataError naming what is wrong."""
    from homunculus.compile import verdict_from_json
    from homunculus.simulate import load_compiled

    out_dir = Path(out_dir)
    qpath = out_dir / "model" / "quantised.json"
    try:
        model = json.loads(qpath.read_text())
    except FileNotFoundError:
        raise DataError(f"{out_dir}: not a compiled output directory (no {qpath})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{qpath}: not valid JSON ({exc})") from None
    if model.get("traffic") is None:
        raise DataError(f"{out_dir}: compiled from a feature table; adaptation needs a compile "
                        "from traffic (its features are computed from packets)")
    if model.get("verdict") is None:
        raise DataError(f"{qpath}: no verdict plan (compiled by an older release): recompile")
    features = tuple(FeatureDef(**f) for f in model["traffic"]["features"])
    config = FlowConfig(**model["traffic"]["config"])
    decls = tuple(FeatureDecl(f.name, f.width, f.field, None if f.kind == "header" else f.kind)
                  for f in features)
    flow = lower_flow_features(list(features), config)
    verdict = verdict_from_json(model["verdict"])
    common = dict(out_dir=str(out_dir.resolve()), family=model["family"],
                  params=dict(model["params"]), decls=decls,
                  class_labels=tuple(model["class_labels"]), verdict=verdict, flow=flow,
                  seed=int(model.get("seed", 0)))
    snap_path = out_dir / "xdp" / "snapshot.json"
    if snap_path.is_file():
        from homunculus.targets.xdp.snapshot import SnapshotError, read_snapshot

        snap = json.loads(snap_path.read_text())
        try:
            program, _ = read_snapshot(snap)
        except SnapshotError as exc:
            raise DataError(f"{snap_path}: {exc}") from None
        recipe = Recipe(target="xdp", capacity=snap["capacity"],
                        object_file=str((snap_path.parent / snap["object"]).resolve()), **common)
        return Deployed(recipe, program, TelemetryConfig.from_json(snap.get("telemetry")),
                        features, config, {"snapshot": snap})
    adapt_path = out_dir / "runtime" / "adapt.json"
    if (out_dir / "runtime" / "entries.json").is_file():
        from homunculus.ir.serialize import compiled_from_json
        from homunculus.passes.switch import lower_for_switch

        pipeline, _ = load_compiled(out_dir)
        adapt = json.loads(adapt_path.read_text()) if adapt_path.is_file() else {}
        target = adapt.get("target") or _switch_target(out_dir)
        compiled = lower_for_switch(compiled_from_json(json.loads(
            (out_dir / "pipeline.json").read_text())))
        return Deployed(Recipe(target=target, switch_compiled=compiled, **common), pipeline,
                        TelemetryConfig.from_json(adapt.get("telemetry")), features, config,
                        {"adapt": adapt, "unversioned": compiled})
    raise DataError(f"{out_dir}: adaptation needs an xdp, tofino or bmv2 compile (no "
                    "xdp/snapshot.json or runtime/entries.json)")


def _switch_target(out_dir: Path) -> str:
    report = out_dir / "report.json"
    if report.is_file():
        name = json.loads(report.read_text()).get("target")
        if name in SWITCH_TARGETS:
            return str(name)
    return "bmv2" if (out_dir / "runtime" / "simple_switch_cli.txt").is_file() else "tofino"


# ----------------------------------------------------------------------------- retraining


@dataclass
class RetrainResult:
    ok: bool
    note: str
    program: Any = None  # CpuProgram or switch Pipeline
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    verified_rows: int = 0
    params: dict[str, Any] | None = None  # the hyperparameters trained (before any shrink)
    search: dict[str, Any] | None = None  # a re-search's trials and choice (:func:`research`)


def retrain(recipe: Recipe, x: np.ndarray, y: np.ndarray, x_verify: np.ndarray,
            seed: int, search_trials: int = 0) -> RetrainResult:
    """Train, quantise, lower and verify (runs in the worker process). With
    ``search_trials``, a short re-search (:func:`research`) first chooses the hyperparameters
    among the deployed family's; its CPU seconds count in the result's."""
    from homunculus.targets.xdp.layout import CapacityError

    cpu0, wall0 = time.process_time(), time.perf_counter()
    params: dict[str, Any] = dict(recipe.params)
    search: dict[str, Any] | None = None

    def done(ok: bool, note: str, program: Any = None, rows: int = 0) -> RetrainResult:
        return RetrainResult(ok, note, program, time.process_time() - cpu0,
                             time.perf_counter() - wall0, rows, params, search)

    index = {c: i for i, c in enumerate(recipe.class_labels)}
    y_idx = np.array([index[str(v)] for v in y], dtype=np.int64)
    x = np.asarray(x, np.int64)
    unused = switch_unencoded(recipe)
    if unused:  # the compiled tables encode only these features: train on them alone
        x = x.copy()
        x[:, unused] = 0
    if search_trials:
        try:
            search = research(recipe, x, y_idx, seed, search_trials)
        except Exception as exc:  # a search that cannot run is a failed retrain
            return done(False, f"re-search failed: {type(exc).__name__}: {exc}")
        params = dict(search["params"])
    try:
        trained, program, shrunk = fit_deployed(recipe, params, x, y_idx, seed)
    except CapacityError as exc:
        return done(False, f"does not fit the deployed program: {exc}")
    except Exception as exc:  # a model that cannot be built is a failed retrain
        return done(False, f"training failed: {type(exc).__name__}: {exc}")
    x_verify = np.asarray(x_verify, dtype=np.int64)
    expected = trained.predict_quantised(x_verify)
    try:
        produced = run_twin(recipe, program, x_verify)
    except Exception as exc:
        return done(False, f"verification could not run: {type(exc).__name__}: {exc}", program)
    bad = int((produced != expected).sum())
    if bad:
        return done(False, f"the data plane disagrees with the quantised model on {bad} of "
                           f"{len(x_verify)} rows", program, len(x_verify))
    return done(True, f"verified on {len(x_verify)} rows{shrunk}", program, len(x_verify))


def fit_deployed(recipe: Recipe, params: dict[str, Any], x: np.ndarray, y_idx: np.ndarray,
                 seed: int) -> tuple[Any, Any, str]:
    """``params`` of the deployed family trained on ``x``/``y_idx`` and lowered for the
    deployed target: (trained, program, a note on any shrink). Same family, shallower (its
    ``*_max_depth`` one less at a time) until it fits the deployed program (XDP: its compiled
    capacity; switches: its compiled tables); ``CapacityError`` when even depth 1 does not."""
    from homunculus.models.base import get_family
    from homunculus.targets.xdp.layout import CapacityError

    params, shrunk = dict(params), ""
    widths = tuple(d.width for d in recipe.decls)
    while True:
        try:
            trained = get_family(recipe.family).train(params, x, y_idx,
                                                      len(recipe.class_labels), widths, seed)
            return trained, lower(recipe, trained), shrunk
        except CapacityError:
            depth = next((k for k in params if k.endswith("_max_depth")), None)
            if depth is None or params[depth] <= 1:
                raise
            params[depth] -= 1
            shrunk = f" ({depth} {params[depth]} to fit the deployed capacity)"


SEARCH_VALIDATION = 0.25  # a re-search's share of the training draw held out to score trials
SEARCH_STARTUP = 3  # random trials before TPE models the others


def validation_split(y_idx: np.ndarray, share: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (fit, validation): ``share`` of each class's rows (at least one of a class
    with two or more) held out, seeded."""
    rng = np.random.default_rng(seed)
    fit: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for label in np.unique(y_idx):
        rows = rng.permutation(np.flatnonzero(y_idx == label))
        cut = max(1, int(round(len(rows) * share))) if len(rows) > 1 else 0
        held.append(rows[:cut])
        fit.append(rows[cut:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def research(recipe: Recipe, x: np.ndarray, y_idx: np.ndarray, seed: int,
             trials: int) -> dict[str, Any]:
    """A short seeded re-search over the deployed family's hyperparameters (Optuna TPE, the
    family's own search space; the family stays: the deployed program's code is the
    family's): ``trials`` trials, ``recipe.params`` (the active model's) first, each trained
    on part of the draw (:func:`validation_split`), fitted to the deployed program
    (:func:`fit_deployed`: shallower until it fits; a trial that cannot fit scores 0) and
    scored by the macro-F1 of its quantised model on the rest. The best trial wins; a tie
    keeps the earlier one, so the active hyperparameters stay unless a trial beats them.
    Returns the choice and every trial (params, score, note) as a plain dict."""
    import optuna

    from homunculus.adapt.policy import macro_f1
    from homunculus.models.base import get_family
    from homunculus.targets.xdp.layout import CapacityError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cpu0 = time.process_time()
    family = get_family(recipe.family)
    fit, val = validation_split(y_idx, SEARCH_VALIDATION, seed)
    log: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = {**recipe.params, **family.suggest(trial)}  # keeps non-family ones
        try:
            trained, _, shrunk = fit_deployed(recipe, params, x[fit], y_idx[fit], seed)
        except CapacityError as exc:
            log.append({"params": params, "score": 0.0, "note": f"does not fit: {exc}"})
            return 0.0
        score = macro_f1(y_idx[val], trained.predict_quantised(x[val])) or 0.0
        log.append({"params": params, "score": round(score, 4), "note": shrunk.strip()})
        return score

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=SEARCH_STARTUP)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(dict(recipe.params))
    study.optimize(objective, n_trials=trials)
    best = max(range(len(log)), key=lambda i: (log[i]["score"], -i))
    return {"trials": log, "best": best, "params": log[best]["params"],
            "active_score": log[0]["score"], "score": log[best]["score"],
            "fit_rows": len(fit), "validation_rows": len(val),
            "cpu_seconds": time.process_time() - cpu0}


def lower(recipe: Recipe, trained: Any) -> Any:
    """The retrained model lowered for the deployed target (XDP: fits the capacity)."""
    if recipe.target == "xdp":
        from homunculus.passes.lower_cpu import lower_cpu
        from homunculus.targets.xdp.layout import Capacity, check_fits

        program = lower_cpu(trained.quantised, recipe.decls, recipe.class_labels, recipe.verdict,
                            trained.winner_to_class, recipe.flow)
        check_fits(program, Capacity.from_json(recipe.capacity))
        return program

    from homunculus.passes.lower import lower as lower_tables
    from homunculus.passes.lower import lower_like
    from homunculus.targets.registry import make_target

    target, _ = make_target(recipe.target, {})
    if recipe.switch_compiled is not None:  # the compiled program's code layout
        pipeline = lower_like(recipe.switch_compiled, trained.quantised, recipe.decls,
                              recipe.class_labels, recipe.verdict, trained.winner_to_class)
    else:
        pipeline = lower_tables(trained.quantised, recipe.decls, recipe.class_labels,
                                recipe.verdict, trained.winner_to_class)
    program = target.prepare(replace(pipeline, flow=recipe.flow))
    if recipe.family in TREE_FAMILIES and recipe.switch_compiled is not None:
        from homunculus.targets.p4.versioned import conform

        program = conform(program, recipe.switch_compiled)
    return program


TREE_FAMILIES = ("dt", "rf", "xgb")


def switch_unencoded(recipe: Recipe) -> list[int]:
    """Switches, tree families: the feature columns the compiled program does not encode (a
    retrained tree may not test them: the program has no table for them)."""
    if recipe.family not in TREE_FAMILIES or recipe.switch_compiled is None:
        return []
    keyed = {t.keys[0].name for t in recipe.switch_compiled.encoders if t.keys}
    encoded = {f.name for f in recipe.switch_compiled.features if f.field.name in keyed}
    return [j for j, d in enumerate(recipe.decls) if d.name not in encoded]


def run_twin(recipe: Recipe, program: Any, x: np.ndarray) -> np.ndarray:
    """Class indices the deployed data plane computes with ``program`` installed."""
    if recipe.target == "xdp":
        from homunculus.targets.xdp.layout import Capacity
        from homunculus.targets.xdp.loader import load_object
        from homunculus.targets.xdp.runner import run_vectors
        from homunculus.targets.xdp.snapshot import write_slot

        with load_object(recipe.object_file) as obj:
            write_slot(obj, program, Capacity.from_json(recipe.capacity), 0)
            obj.map("hmn_active").update_u32(0, 0)
            result, _ = run_vectors(obj, program, x)
        return result.class_index
    from homunculus.targets.p4.entries import read_runtime_entries, runtime_entries
    from homunculus.targets.p4.twin import simulate, with_installed_entries

    arch = "v1model" if recipe.target == "bmv2" else "tna"
    written = runtime_entries(program, program_name="retrained", arch=arch)
    installed = read_runtime_entries(written, program)
    return simulate(with_installed_entries(program, installed), x).class_index


def warm_up() -> None:
    """Import what a retrain needs (in the worker, once)."""
    import homunculus.models.base as base
    import homunculus.passes.lower  # noqa: F401
    import homunculus.passes.lower_cpu  # noqa: F401
    import homunculus.targets.p4.twin  # noqa: F401
    import homunculus.targets.xdp.runner  # noqa: F401

    base.all_families()


def timed_retrain(repeats: int, *args: Any) -> RetrainResult:
    """:func:`retrain` run ``repeats`` times (it is deterministic): the first result, with
    the least CPU seconds of the runs (timeit's minimum, for benchmarks on a shared machine)."""
    results = [retrain(*args) for _ in range(repeats)]
    return replace(results[0], cpu_seconds=min(r.cpu_seconds for r in results))


class RetrainWorker:
    """One worker process for retrains (spawned on first use). ``cpu_repeats`` > 1 runs each
    retrain that many times and reports the least CPU (:func:`timed_retrain`)."""

    def __init__(self, cpu_repeats: int = 1) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self.future: Future | None = None
        self.cpu_repeats = cpu_repeats

    @property
    def busy(self) -> bool:
        return self.future is not None and not self.future.done()

    def submit(self, recipe: Recipe, x: np.ndarray, y: np.ndarray, x_verify: np.ndarray,
               seed: int, search_trials: int = 0) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
            self._pool.submit(warm_up).result()  # imports are not retraining compute
        self.future = self._pool.submit(timed_retrain, self.cpu_repeats, recipe, x, y,
                                        x_verify, seed, search_trials)

    def result(self, wait: bool) -> RetrainResult | None:
        """The finished retrain (None while it runs and ``wait`` is False, or none submitted)."""
        if self.future is None or (not wait and not self.future.done()):
            return None
        future, self.future = self.future, None
        try:
            return future.result()
        except Exception as exc:  # the worker died: a failed retrain, reported
            return RetrainResult(False, f"the retrain worker failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
