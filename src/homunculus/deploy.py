"""Deploy a compiled XDP program on a live interface, read its counters, push newer parameters
into it, and take it down again (the ``deploy``, ``stats``, ``push`` and ``undeploy`` commands).

A deployment named NAME (by default the compiled program's name) is:

* the program and its maps pinned under ``/sys/fs/bpf/homunculus/NAME/{progs,maps}/``,
* ``hmn_xdp`` attached to one interface (optionally inside a network namespace, in ``skb``
  (generic) or ``native`` (driver) mode),
* a state file ``/run/homunculus/NAME.json`` (bpffs holds only BPF objects) recording the
  interface, namespace, mode, the compiled output directory, the class labels, and the program's
  model interface and capacity (targets/xdp/layout.py): a pushed compile must have the same
  interface and fit the capacity. A schedule's program (schedule/xdp.py) records every model's
  and the compiled verdict table; its counters are per verdict-table index.

Every failure is a :class:`DeployError` (a HomunculusError: the CLI prints it and exits 2).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from homunculus.errors import HomunculusError
from homunculus.targets.xdp import snapshot as snap
from homunculus.targets.xdp.layout import Capacity, CapacityError, check_fits, interface_of
from homunculus.targets.xdp.loader import (
    PIN_ROOT,
    BpfError,
    Pinned,
    attach_xdp,
    attached_prog_id,
    detach_xdp,
    ifindex_of,
    in_netns,
    load_object,
    pin_dir,
    unpin,
)

STATE_DIR = Path("/run/homunculus")
MODES = ("skb", "native")
MAIN_PROG = "hmn_xdp"
STAT_NAMES = ("packets", "eligible", "classified", "dropped", "marked")


class DeployError(HomunculusError):
    """A deployment could not be made, found, changed or removed."""


@dataclass
class Deployment:
    """What ``/run/homunculus/NAME.json`` records."""

    name: str
    iface: str
    netns: str | None
    mode: str
    out_dir: str
    object: str
    interface: dict[str, Any]
    capacity: dict[str, Any]
    labels: list[str]
    ifindex: int
    prog_id: int
    pushes: int = 0
    deployed_at: float = field(default_factory=time.time)
    version: int = 0  # the model version active (adapt installs count up from the compile's 0)
    # a schedule's program (schedule/xdp.py): per model, in schedule order, its name, prefix,
    # interface, capacity and labels; and the compiled verdict table (labels: its indices)
    models: list[dict[str, Any]] = field(default_factory=list)
    verdict: list[list[int]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Stats:
    """Counters of a deployment: per class (by label), unclassified packets, and hmn_stats."""

    name: str
    counts: dict[str, int]
    unclassified: int
    stats: dict[str, int]
    active_slot: int
    attached: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# checks and state


def require_root() -> None:
    if os.geteuid() != 0:
        raise DeployError("deploying XDP programs needs root (CAP_BPF and CAP_NET_ADMIN): "
                          "run this command as root")


def check_name(name: str) -> str:
    try:
        pin_dir(name)
    except ValueError:
        raise DeployError(f"deployment name {name!r} must be letters, digits, '_', '.' or '-' "
                          "(at most 64)") from None
    return name


def compiled_snapshot(out_dir: Path) -> dict[str, Any]:
    """OUT/xdp/snapshot.json, checked: a clear DeployError for anything missing or corrupt."""
    path = Path(out_dir) / "xdp" / "snapshot.json"
    if not path.is_file():
        raise DeployError(f"{out_dir}: not compiled for xdp (no {path}); compile with "
                          "'target: xdp'")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "object" not in data or "program" not in data:
        raise DeployError(f"{path}: not an XDP compile's snapshot (no object/program)")
    try:
        program, capacity = snap.read_snapshot(data)
        snap.slot_values(program, capacity)  # every number must encode into its map's type
    except snap.SnapshotError as exc:
        raise DeployError(f"{path}: {exc}") from None
    except (OverflowError, ValueError, TypeError, IndexError, AssertionError) as exc:
        raise DeployError(f"{path}: not a valid snapshot: a value does not fit the program's "
                          f"maps ({type(exc).__name__}: {exc})") from None
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise DeployError(f"{path}: not a valid snapshot: 'labels' must be a non-empty list of "
                          "class labels")
    obj = path.parent / str(data["object"])
    if not obj.is_file():
        raise DeployError(f"{out_dir}: the compiled program {obj} is missing")
    return data


def compiled_schedule(out_dir: Path) -> dict[str, Any] | None:
    """OUT/xdp/schedule.json (a schedule's program), checked; None when OUT has none."""
    from homunculus.schedule import xdp as sched

    path = Path(out_dir) / "xdp" / "schedule.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != sched.FORMAT:
        raise DeployError(f"{path}: not a schedule's XDP program of this version: recompile")
    try:
        for entry in data["models"]:
            program, capacity = snap.read_snapshot(entry["snapshot"])
            snap.slot_values(program, capacity)
            if list(entry["labels"]) != list(program.class_labels):
                raise ValueError(f"model '{entry['name']}': its labels differ from its model's")
        verdict = [[int(v) for v in row] for row in data["verdict"]]
        if len(verdict) != len(verdict_labels(data["models"])):
            raise ValueError("the verdict table does not match the models' classes")
    except snap.SnapshotError as exc:
        raise DeployError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, OverflowError, IndexError, AssertionError) as exc:
        raise DeployError(f"{path}: not a valid schedule ({type(exc).__name__}: {exc})") from None
    obj = path.parent / str(data.get("object"))
    if not obj.is_file():
        raise DeployError(f"{out_dir}: the compiled program {obj} is missing")
    return data


def verdict_labels(models: list[dict[str, Any]]) -> list[str]:
    """A schedule's ``hmn_counts`` labels: per verdict-table index, every model's class or
    "-" (not run), in the table's order (the last model varies fastest)."""
    choices = [[*entry["labels"], "-"] for entry in models]
    names = [entry["name"] for entry in models]
    return [" ".join(f"{n}={c}" for n, c in zip(names, combo, strict=True))
            for combo in itertools.product(*choices)]


def schedule_models(data: dict[str, Any]) -> list[dict[str, Any]]:
    """What a deployment records of a schedule's models."""
    return [{"name": e["name"], "prefix": e["prefix"], "labels": list(e["labels"]),
             "interface": e["snapshot"]["interface"], "capacity": e["snapshot"]["capacity"]}
            for e in data["models"]]


def state_path(name: str, state_dir: Path = STATE_DIR) -> Path:
    return state_dir / f"{check_name(name)}.json"


def write_state(dep: Deployment, state_dir: Path = STATE_DIR) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(dep.name, state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(dep), indent=1) + "\n")
    tmp.replace(path)


def deployments(state_dir: Path = STATE_DIR) -> list[str]:
    return sorted(p.stem for p in state_dir.glob("*.json")) if state_dir.is_dir() else []


def load_state(name: str | None, state_dir: Path = STATE_DIR) -> Deployment:
    """The named deployment, or the only one when no name is given."""
    if name is None:
        names = deployments(state_dir)
        if not names:
            raise DeployError(f"nothing is deployed (no state in {state_dir})")
        if len(names) > 1:
            raise DeployError(f"several deployments ({', '.join(names)}): name one")
        name = names[0]
    path = state_path(name, state_dir)
    if not path.is_file():
        known = ", ".join(deployments(state_dir)) or "none"
        raise DeployError(f"no deployment named '{name}' (deployed: {known})")
    try:
        return Deployment.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise DeployError(f"{path}: unreadable deployment state ({exc}); remove it") from None


# ---------------------------------------------------------------------------------------------
# interfaces


def resolve_ifindex(iface: str, netns: str | None) -> int:
    where = f" in network namespace '{netns}'" if netns else ""
    try:
        return in_netns(netns, lambda: ifindex_of(iface))
    except BpfError as exc:
        if exc.errno == errno.ENODEV:
            raise DeployError(f"no interface '{iface}'{where}") from None
        raise DeployError(f"network namespace: {exc}") from None


def attach(dep: Deployment, prog_fd: int) -> int:
    """Attach in the deployment's namespace and mode; the attached program's id."""
    try:
        in_netns(dep.netns, lambda: attach_xdp(dep.ifindex, prog_fd, mode=dep.mode,
                                               replace=False))
    except BpfError as exc:
        if exc.errno == errno.EBUSY or exc.errno == errno.EEXIST:
            raise DeployError(f"an XDP program is already attached to {dep.iface}: remove it "
                              "first") from None
        hint = "; try --mode skb" if dep.mode == "native" else ""
        raise DeployError(f"cannot attach XDP in {dep.mode} mode to {dep.iface}: {exc}{hint}"
                          ) from None
    return in_netns(dep.netns, lambda: attached_prog_id(dep.ifindex, mode=dep.mode))


def attached(dep: Deployment) -> tuple[int, int] | None:
    """The interface's index and the program id attached in the deployment's mode (0: none),
    or None if the interface (or its namespace) is gone."""
    try:
        ifindex = in_netns(dep.netns, lambda: ifindex_of(dep.iface))
        return ifindex, in_netns(dep.netns, lambda: attached_prog_id(ifindex, mode=dep.mode))
    except BpfError:
        return None


# ---------------------------------------------------------------------------------------------
# the four operations


def deploy(out_dir: Path, iface: str, *, netns: str | None = None, mode: str = "skb",
           name: str | None = None, state_dir: Path = STATE_DIR) -> Deployment:
    """Load OUT/xdp/<name>.bpf.o, pin it, install its snapshot (slot 0) and attach it."""
    require_root()
    if mode not in MODES:
        raise DeployError(f"--mode must be one of {', '.join(MODES)} (got '{mode}')")
    schedule = compiled_schedule(out_dir)
    snapshot = schedule if schedule is not None else compiled_snapshot(out_dir)
    name = check_name(name or snapshot["program"])
    if state_path(name, state_dir).exists():
        raise DeployError(f"'{name}' is already deployed: undeploy it first (or pass --name)")
    if pin_dir(name).exists():
        raise DeployError(f"{pin_dir(name)} exists but no deployment records it (a stale pin?): "
                          "remove that directory or pass another --name")
    ifindex = resolve_ifindex(iface, netns)
    if schedule is None:
        dep = Deployment(name, iface, netns, mode, str(Path(out_dir).resolve()),
                         snapshot["object"], snapshot["interface"], snapshot["capacity"],
                         list(snapshot.get("labels", [])), ifindex, 0)
    else:
        dep = Deployment(name, iface, netns, mode, str(Path(out_dir).resolve()),
                         snapshot["object"], {}, {}, verdict_labels(schedule["models"]),
                         ifindex, 0, models=schedule_models(schedule),
                         verdict=schedule["verdict"])
    pinned = pin_program(Path(out_dir) / "xdp" / snapshot["object"], snapshot, name)
    try:
        dep.prog_id = attach(dep, pinned.prog_fd(MAIN_PROG))
        write_state(dep, state_dir)
    except BaseException:
        pinned.close()
        unpin(name)
        raise
    pinned.close()
    return dep


def pin_program(path: Path, snapshot: dict[str, Any], name: str) -> Pinned:
    """Load (verify) the object, install the snapshot and pin programs and maps."""
    try:
        obj = load_object(path)
    except BpfError as exc:
        raise DeployError(f"cannot load {path}: {exc}") from None
    try:
        if "models" in snapshot:  # a schedule's: every model's slot 0, then the one selector
            from homunculus.schedule import xdp as sched

            sched.install(obj, snapshot)
        else:
            snap.install(obj, snapshot)
        return obj.pin(name)
    except snap.SnapshotError as exc:
        raise DeployError(f"{path}: {exc}") from None
    except BpfError as exc:
        unpin(name)  # nothing half-pinned stays behind
        raise DeployError(f"cannot pin {name} under {PIN_ROOT}: {exc}") from None
    finally:
        obj.close()


def open_pins(name: str) -> Pinned:
    try:
        return Pinned.open(name)
    except BpfError:
        raise DeployError(f"'{name}' has a state file but nothing pinned under "
                          f"{PIN_ROOT / name}: undeploy it and deploy again") from None


def read_stats(name: str | None = None, state_dir: Path = STATE_DIR) -> Stats:
    """Per-class counters (summed over CPUs) with their labels, and the stats map."""
    require_root()
    dep = load_state(name, state_dir)
    pinned = open_pins(dep.name)
    try:
        counts_map, stats_map = pinned.map("hmn_counts"), pinned.map("hmn_stats")
        n = counts_map.max_entries - 1
        labels = dep.labels if len(dep.labels) == n else [f"class {i}" for i in range(n)]
        counts = {label: counts_map.lookup_u64(i) for i, label in enumerate(labels)}
        stats = {key: stats_map.lookup_u64(i) for i, key in enumerate(STAT_NAMES)}
        unclassified = counts_map.lookup_u64(n)
        slot = snap.active_slot(pinned)
    finally:
        pinned.close()
    now = attached(dep)
    return Stats(dep.name, counts, unclassified, stats, slot,
                 now is not None and now[1] == dep.prog_id)


def push(out_dir: Path, name: str | None = None, *, state_dir: Path = STATE_DIR,
         grace_s: float = snap.GRACE_S) -> Deployment:
    """Write a newer compile's model into the standby slot and flip to it. Refused (nothing
    written, the active model untouched) when its interface differs from the deployed
    program's or it does not fit the program's compiled capacity."""
    require_root()
    dep = load_state(name, state_dir)
    schedule = compiled_schedule(out_dir)
    if schedule is not None or dep.models:
        return push_schedule(out_dir, dep, schedule, state_dir=state_dir, grace_s=grace_s)
    snapshot = compiled_snapshot(out_dir)
    program, _ = snap.read_snapshot(snapshot)
    try:
        capacity = Capacity.from_json(dep.capacity)
    except (KeyError, TypeError) as exc:
        raise DeployError(f"the state of '{dep.name}' has no valid capacity ({exc}): undeploy "
                          "and deploy again") from None
    check_pushable(out_dir, dep, program, capacity)
    if dep.labels and snapshot["labels"] != dep.labels:
        raise DeployError(f"{out_dir}: its classes {snapshot['labels'][:8]} differ from those "
                          f"deployed as '{dep.name}' {dep.labels[:8]}; the counters would be "
                          "mislabelled: undeploy and deploy it instead")
    dep.labels = list(snapshot.get("labels", dep.labels))
    return pushed(dep, out_dir, lambda pinned: snap.push(pinned, program, capacity,
                                                         grace_s=grace_s), state_dir)


def pushed(dep: Deployment, out_dir: Path, write: Callable[[Pinned], int],
           state_dir: Path) -> Deployment:
    """``write`` (a push: standby slots, then the flip) into the deployment's pinned maps while
    its program is attached, then record the push."""
    check_attached(dep, "nothing was pushed")
    pinned = open_pins(dep.name)
    try:
        write(pinned)
    except snap.SnapshotError as exc:
        raise DeployError(f"{out_dir}: {exc}") from None
    finally:
        pinned.close()
    check_attached(dep, "the new parameters were written, but no packet is classified")
    dep.out_dir = str(Path(out_dir).resolve())
    dep.pushes += 1
    write_state(dep, state_dir)
    return dep


def push_schedule(out_dir: Path, dep: Deployment, schedule: dict[str, Any] | None, *,
                  state_dir: Path, grace_s: float) -> Deployment:
    """A schedule's push: every model of a newer compile of the same schedule (the same
    models, classes and verdict table) into its standby slot, then one flip for all
    (schedule/xdp.py). Refused, nothing written, when anything differs or does not fit."""
    from homunculus.schedule import xdp as sched

    if schedule is None:
        raise DeployError(f"{out_dir}: one model's compile; '{dep.name}' runs a schedule of "
                          f"{', '.join(m['name'] for m in dep.models)}: push a compile of that "
                          "schedule, or undeploy and deploy this one")
    if not dep.models:
        raise DeployError(f"{out_dir}: a schedule's compile; '{dep.name}' runs one model: "
                          "undeploy it and deploy the schedule instead")
    names = [e["name"] for e in schedule["models"]]
    if names != [m["name"] for m in dep.models]:
        raise DeployError(f"{out_dir}: its models {names} differ from those deployed as "
                          f"'{dep.name}' {[m['name'] for m in dep.models]}: undeploy and deploy "
                          "it instead")
    if schedule["verdict"] != dep.verdict:
        raise DeployError(f"{out_dir}: its schedule's verdicts (gates, policy or the models' "
                          f"verdicts) differ from those deployed as '{dep.name}', which are "
                          "compiled into the program: undeploy and deploy it instead")
    programs, capacities = [], []
    for entry, deployed in zip(schedule["models"], dep.models, strict=True):
        program, _ = snap.read_snapshot(entry["snapshot"])
        capacity = Capacity.from_json(deployed["capacity"])
        if list(entry["labels"]) != deployed["labels"]:
            raise DeployError(f"{out_dir}: model '{entry['name']}': its classes differ from "
                              f"those deployed as '{dep.name}': undeploy and deploy it instead")
        check_pushable(out_dir, dep, program, capacity, deployed["interface"])
        programs.append(program)
        capacities.append(capacity)
    return pushed(dep, out_dir, lambda pinned: sched.push(pinned, programs, capacities,
                                                          grace_s=grace_s), state_dir)


def check_attached(dep: Deployment, consequence: str) -> None:
    """DeployError unless the deployment's program is still attached to its interface."""
    now = attached(dep)
    where = f"{dep.iface}" + (f" in network namespace {dep.netns}" if dep.netns else "")
    if now is None:
        raise DeployError(f"'{dep.name}': interface {where} is gone; {consequence}. Undeploy "
                          "it")
    if now[1] != dep.prog_id:
        raise DeployError(f"'{dep.name}': its program is no longer attached to {where}; "
                          f"{consequence}. Undeploy and deploy again")


def push_program(program: Any, name: str | None = None, *, version: int,
                 state_dir: Path = STATE_DIR, grace_s: float = snap.GRACE_S,
                 source: str = "adapt") -> Deployment:
    """Install a CPU program (a retrain of the deployed model, ``homunculus adapt``) into the
    standby slot with its model ``version`` and flip to it; refused (nothing written) unless it
    has the deployed interface and fits the deployed capacity."""
    require_root()
    dep = load_state(name, state_dir)
    if dep.models:
        raise DeployError(f"'{dep.name}' runs a schedule of "
                          f"{', '.join(m['name'] for m in dep.models)}; {source} installs one "
                          "model: push a compile of the whole schedule instead")
    capacity = Capacity.from_json(dep.capacity)
    check_pushable(Path(source), dep, program, capacity)
    pinned = open_pins(dep.name)
    try:
        snap.push(pinned, program, capacity, grace_s=grace_s, version=version)
    except snap.SnapshotError as exc:
        raise DeployError(f"{source}: {exc}") from None
    finally:
        pinned.close()
    dep.pushes += 1
    dep.version = version
    write_state(dep, state_dir)
    return dep


def check_pushable(out_dir: Path, dep: Deployment, program: Any, capacity: Capacity,
                   interface: dict[str, Any] | None = None) -> None:
    """DeployError naming what of OUT's model does not fit the deployed program (``interface``:
    the deployed model's, by default the deployment's one model's)."""
    deployed = dep.interface if interface is None else interface
    try:
        check_fits(program, capacity)
    except CapacityError as exc:
        raise DeployError(f"{out_dir}: does not fit the program deployed as '{dep.name}': {exc}; "
                          "compile with more headroom and deploy it instead") from None
    ours = interface_of(program)
    for key, what in (("features", "features (widths, header fields, flow state)"),
                      ("flow", "flow state"), ("kind", "model family"),
                      ("n_scores", "number of scores"), ("n_winners", "number of outcomes")):
        if ours.get(key) != deployed.get(key):
            raise DeployError(f"{out_dir}: its {what} differ from the program deployed as "
                              f"'{dep.name}': undeploy and deploy it instead")


def undeploy(name: str | None = None, *, state_dir: Path = STATE_DIR) -> list[str]:
    """Detach (if our program is still the one attached), unpin and forget the deployment;
    returns warnings about what was already gone."""
    require_root()
    dep = load_state(name, state_dir)
    warnings = []
    now = attached(dep)
    current = now[1] if now else None
    if now is None:
        warnings.append(f"interface {dep.iface} is gone; nothing to detach")
    elif current == dep.prog_id:
        ifindex = now[0]
        in_netns(dep.netns, lambda: detach_xdp(ifindex, mode=dep.mode))
    elif current:
        warnings.append(f"another XDP program (id {current}) is attached to {dep.iface}; "
                        "left in place")
    else:
        warnings.append(f"no XDP program was attached to {dep.iface}")
    unpin(dep.name)
    state_path(dep.name, state_dir).unlink(missing_ok=True)
    return warnings
