"""Command line: ``homunculus compile SPEC -o OUT`` and friends.

Every error a user can cause (bad spec, data, capture, path or option) is printed as one
``error:`` message and exits with status 2; user strings (names, labels, paths) are printed as
plain text, control characters escaped and long strings shortened (display.py).
"""

from __future__ import annotations

import math
import runpy
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from homunculus.display import message, shown
from homunculus.errors import HomunculusError, SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Homunculus: a compiler for in-network machine learning.")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

MAX_SEED = 2**32 - 1
MAX_TRIALS = 1_000_000
MAX_SECONDS = 30 * 86400.0
MAX_FLOWS = 100_000
MAX_ROWS = 10_000_000


def say(console: Console, *parts: str | tuple[str, str]) -> None:
    """Print plain text (never markup); (text, style) pairs are styled."""
    console.print(Text.assemble(*parts), soft_wrap=True)


def _fail(exc: Exception | str) -> NoReturn:
    say(err, ("error: ", "bold red"), message(exc))
    raise typer.Exit(2)


def os_error_text(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def _show_warning(msg: Warning | str, category: type[Warning], *_args: object,
                  **_kwargs: object) -> None:
    say(err, ("warning: ", "yellow"), message(msg, 1000))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into ``error: ...`` and exit status 2."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning  # type: ignore[assignment]
    try:
        yield
    except HomunculusError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(os_error_text(exc))
    finally:
        warnings.showwarning = previous


def check_count(name: str, value: int | None, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        _fail(f"{name} must be in {low}..{high} (got {shown(value, 40)})")


def check_number(name: str, value: float | None, high: float) -> None:
    if value is not None and not (math.isfinite(value) and 0 < value <= high):
        _fail(f"{name} must be a positive number of at most {high:g} (got {value})")


def shared_of(storage: str | None, study: str | None, heartbeat: int):  # noqa: ANN201
    """The shared study of --storage and --study (None without --storage)."""
    from homunculus.search.distributed import Shared
    from homunculus.search.storage import parse_storage

    if storage is None:
        if study is not None:
            raise SpecError("--study names a study in --storage: give --storage too")
        return None
    if not study or not study.strip() or len(study) > 512:
        raise SpecError("--storage needs --study NAME (the shared study's name, at most 512 "
                        "characters)")
    return Shared(parse_storage(storage), study, heartbeat)


def compile_spec(spec: Path, out_dir: Path, trials: int | None, seconds: float | None,
                 resume: bool, seed: int | None, progress: bool, p4c: str | None = None,
                 p4c_timeout: float | None = None,
                 toolchain_feasibility: bool = False, shared=None, worker=None):  # noqa: ANN001,ANN201
    """Compile a YAML spec or run a Python (Alchemy) script with these options (with
    ``worker``: run trials of a shared study instead)."""
    from homunculus.compile import CompileOptions, work_plan
    from homunculus.frontend.alchemy import cli_overrides
    from homunculus.frontend.yaml_spec import plan_from_yaml
    from homunculus.schedule.driver import compile_any

    if not spec.exists():
        raise SpecError("no such spec file", file=str(spec))
    if spec.suffix in (".yaml", ".yml"):
        if worker is not None:
            return work_plan(plan_from_yaml(spec), worker)
        options = CompileOptions(out_dir, trials, seconds, resume, seed, progress, p4c,
                                 p4c_timeout, toolchain_feasibility, (spec,), shared)
        return compile_any(plan_from_yaml(spec), options)
    if spec.suffix == ".py":
        if not spec.is_file():
            raise SpecError("the spec is not a regular file", file=str(spec))
        with cli_overrides(out_dir, trials, seconds, resume, seed, progress, p4c, p4c_timeout,
                           toolchain_feasibility, shared, worker) as calls:
            sys.path.insert(0, str(spec.parent.resolve()))
            try:
                runpy.run_path(str(spec), run_name="__main__")
            finally:
                sys.path.pop(0)
        if not calls:
            raise SpecError("the script never called generate(platform, ...)", file=str(spec))
        return calls[-1]
    raise SpecError("a spec is a .yaml/.yml file or a .py script", file=str(spec))


@app.command("compile")
def compile_command(
    spec: Annotated[Path, typer.Argument(help="YAML spec or Python (Alchemy) script")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="output directory")] = Path("out"),
    trials: Annotated[int | None, typer.Option(help="trial budget (overrides the spec)")] = None,
    seconds: Annotated[float | None, typer.Option(help="time budget in seconds")] = None,
    resume: Annotated[bool, typer.Option(help="continue the search stored in OUT")] = False,
    seed: Annotated[int | None, typer.Option(help="random seed (overrides the spec)")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    p4c: Annotated[str | None, typer.Option(
        "--p4c", help="P4 compiler to run on the program (bf-p4c, p4c-barefoot, p4c-bm2-ss); "
                      "default: platform.toolchain, else one found on PATH")] = None,
    p4c_timeout: Annotated[float | None, typer.Option(
        help="seconds one P4 compiler run may take (default 900)")] = None,
    toolchain_feasibility: Annotated[bool, typer.Option(
        "--toolchain-feasibility", help="a trial is feasible only if the P4 compiler accepts "
                                        "its program within the stage limit")] = False,
    storage: Annotated[str | None, typer.Option(
        help="share the search with workers: a PostgreSQL DSN (postgresql://user:pw@host/db), "
             "sqlite:////path.db or journal:PATH (docs/distributed.md)")] = None,
    study: Annotated[str | None, typer.Option(
        help="name of the shared study in --storage")] = None,
    heartbeat: Annotated[int, typer.Option(
        help="seconds between a running trial's heartbeats in a shared study; a trial silent "
             "for 3 heartbeats is declared dead and run again")] = 10,
) -> None:
    """Search, train, quantise, generate and verify a data-plane program."""
    check_count("--trials", trials, 1, MAX_TRIALS)
    check_number("--seconds", seconds, MAX_SECONDS)
    check_count("--seed", seed, 0, MAX_SEED)
    check_number("--p4c-timeout", p4c_timeout, MAX_SECONDS)
    check_count("--heartbeat", heartbeat, 1, 3600)
    try:
        with user_errors():
            shared = shared_of(storage, study, heartbeat)
            result = compile_spec(spec, out_dir, trials, seconds, resume, seed, progress, p4c,
                                  p4c_timeout, toolchain_feasibility, shared)
    except KeyboardInterrupt:
        say(err, ("interrupted: ", "bold red"), f"{shown(out_dir)} is unchanged; "
            "compile again with --resume to continue the search")
        raise typer.Exit(130) from None
    if hasattr(result, "summary"):  # a schedule or a chain
        say(out, ("compiled", "bold green"), f" {shown(result.report['name'])} -> "
            f"{shown(result.out_dir, 400)}")
        for line in result.summary():
            say(out, line)
        return
    m = result.metrics
    res = result.report["resources"]
    say(out, ("compiled", "bold green"), f" {shown(result.report['name'])} -> "
        f"{shown(result.out_dir, 400)}")
    cv = m.get("cv") or {}
    if cv:
        say(out, f"  search: {result.report['metric']} {cv['metric']:.4f} cross-validated "
            f"({cv['scheme']}); the shipped model is refit on all training data")
    say(out, f"  family {result.family}; test {result.report['metric']}: float "
        f"{m['float']:.4f}, quantised {m['quantised']:.4f}, pipeline {m['pipeline']:.4f} "
        f"(agreement {m['agreement']:.2%} on {m['test_samples']} test samples)")
    table = result.report.get("category_table")
    if table:
        say(out, f"  category table: {table['entries']} values of '{shown(table['feature'])}' "
            f"decide {table['test_rows_decided']:.1%} of the test samples; the model the rest")
    if m.get("decide_at"):
        say(out, f"  per-flow decision: packet {m['decide_at']} of each flow decides its "
            "later packets (test metrics include it)")
    from homunculus.report.summary import resource_line

    line = resource_line(result.report["target"], res["totals"], res["binding"])
    switch = result.report["target"] in ("tofino", "bmv2")
    say(out, "  " + ("estimated: " + line if switch else line))
    if switch:
        say(out, f"  {message(toolchain_line(result.report.get('toolchain') or {}), 1000)}")
    for warning in result.warnings:
        say(err, ("warning: ", "yellow"), message(warning))


@app.command("worker")
def worker_command(
    spec: Annotated[Path, typer.Argument(help="the coordinator's spec (same data)")],
    storage: Annotated[str, typer.Option(help="the shared study's storage (as the coordinator's "
                                              "--storage)")],
    study: Annotated[str, typer.Option(help="the shared study's name")],
    wait: Annotated[float, typer.Option(
        help="seconds to wait for the coordinator to create the study")] = 60.0,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    p4c: Annotated[str | None, typer.Option(
        "--p4c", help="P4 compiler to judge trials with, when the study asks for it")] = None,
) -> None:
    """Run trials of a shared search (homunculus compile --storage ... --study ...) until its
    budget is spent."""
    from homunculus.compile import WorkerOptions

    if not (math.isfinite(wait) and 0 <= wait <= 86400):
        _fail("--wait must be in 0..86400 seconds")
    with user_errors():
        shared = shared_of(storage, study, 10)
        work = compile_spec(spec, Path("out"), None, None, False, None, progress, p4c,
                            worker=WorkerOptions(shared, wait, progress, p4c))
    say(out, f"worker done: ran {work.ran} trial(s) of study '{shown(study)}'; the study counts "
        f"{work.counted}")


def toolchain_line(section: dict) -> str:
    """The CLI summary of the report's toolchain section."""
    if not section.get("ran"):
        return f"no P4 compiler ran ({section.get('reason')}): the figures above are estimates"
    version = section.get("version") or ""
    head = version if version.startswith(section["tool"]) else (
        section["tool"] + (f" ({version})" if version else ""))
    real = section.get("resources")
    if real is None:
        return f"{head}: accepted, {section['warnings']} warning(s)"
    return (f"{head}: accepted; real: {real['stages']} stages, {real['tables']} tables, "
            f"{real['sram_blocks']} SRAM and {real['tcam_blocks']} TCAM blocks "
            f"({section['warnings']} warning(s))")


@app.command("evaluate")
def evaluate_command(
    spec: Annotated[Path, typer.Argument(help="YAML spec")],
    splits: Annotated[int, typer.Option(help="seeded train/test splits to compile")] = 8,
    seed: Annotated[int | None, typer.Option(help="first split seed (default: search.seed)")
                    ] = None,
    trials: Annotated[int | None, typer.Option(help="trial budget (overrides the spec)")] = None,
    seconds: Annotated[float | None, typer.Option(help="time budget per split")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results here")
                        ] = None,
) -> None:
    """Compile the spec over several seeded splits: mean, spread and per-class F1."""
    import json

    from homunculus.evaluate import MAX_SPLITS, evaluate_spec, split_line

    check_count("--splits", splits, 1, MAX_SPLITS)
    check_count("--seed", seed, 0, MAX_SEED - splits + 1)
    check_count("--trials", trials, 1, MAX_TRIALS)
    check_number("--seconds", seconds, MAX_SECONDS)
    if json_out is not None and json_out.exists() and not json_out.is_file():
        _fail(SpecError("--json must name a file", file=str(json_out)))
    target: list[str] = []

    def show(row) -> None:  # noqa: ANN001
        say(out, "  " + split_line(row, target[0] if target else "tofino"))

    with user_errors():
        from homunculus.frontend.yaml_spec import load_yaml_spec

        if spec.suffix in (".yaml", ".yml") and spec.is_file():
            target.append(load_yaml_spec(spec)[0].platform.target)
        result = evaluate_spec(spec, splits, first_seed=seed, trials=trials, seconds=seconds,
                               on_split=show)
        summary = result.summary()
        p = summary["pipeline"]
        say(out, (shown(result.name), "bold"),
            f": {result.metric} of the generated pipeline over {summary['splits']} splits "
            f"(seeds {summary['seeds'][0]}..{summary['seeds'][-1]}): mean {p['mean']:.4f} ± "
            f"{p['std']:.4f} (min {p['min']:.4f}, max {p['max']:.4f}); cross-validated "
            f"{summary['cv']['mean']:.4f}")
        table_view = Table("class", "F1 mean", "± std", "min", "max")
        for label, st in summary["per_class_f1"].items():
            table_view.add_row(Text(shown(label)), f"{st['mean']:.4f}", f"{st['std']:.4f}",
                               f"{st['min']:.4f}", f"{st['max']:.4f}")
        out.print(table_view)
        if json_out is not None:
            json_out.write_text(json.dumps(result.as_json(), indent=1) + "\n")


@app.command("simulate")
def simulate_command(
    out_dir: Annotated[Path, typer.Argument(help="a compiled output directory")],
    pcap: Annotated[list[Path], typer.Option("--pcap", help="capture(s): pcap or pcapng")],
    labels: Annotated[Path | None, typer.Option(help="label CSV (measures F1)")] = None,
    default_label: Annotated[str, typer.Option(help="label of unmatched packets")] = "benign",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
) -> None:
    """Run the generated data plane over a capture; compare with the model (must agree 100%)."""
    import json

    from homunculus.data.labels import label_from_file
    from homunculus.data.pcap import ingest
    from homunculus.simulate import simulate_capture

    with user_errors():
        table, stats = ingest(pcap)
        if labels is not None:
            table = label_from_file(table, labels, default=default_label)
        report = simulate_capture(out_dir, table)
        if json_out is not None:
            json_out.write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    if stats.skipped or stats.truncated_files:
        say(err, f"warning: skipped {stats.skipped} bad records; "
            f"{stats.truncated_files} truncated capture(s)")
    table_view = Table("class", "packets")
    for label, count in report.counts.items():
        table_view.add_row(Text(shown(label)), str(count))
    out.print(table_view)
    f1 = f"{report.f1_macro:.4f} on {report.labelled} labelled packets" if (
        report.f1_macro is not None) else "n/a (no labels)"
    say(out, f"{report.packets} packets, {report.classified} classified; agreement with the "
        f"model {report.agreement:.2%}; F1 (macro) {f1}")


@app.command("scenario")
def scenario_command(
    name: Annotated[str, typer.Argument(help="anomaly, botnet or drift")],
    pcap: Annotated[Path, typer.Option("--pcap", help="capture to write")],
    labels: Annotated[Path, typer.Option("--labels", help="label CSV to write")],
    flows: Annotated[int, typer.Option(help="background flows (anomaly, botnet)")] = 300,
    seconds: Annotated[float, typer.Option(
        help="duration of the background (drift: of each phase)")] = 60.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    phases: Annotated[int, typer.Option(help="drift: phases (1-3)")] = 3,
    benign_packets: Annotated[int, typer.Option(
        help="drift: benign packets per phase (from nDPI captures)")] = 12_000,
    attack_scale: Annotated[float, typer.Option(help="drift: attack rates times this")] = 1.0,
    attack_label: Annotated[str | None, typer.Option(
        help="drift: label every attack with this (a binary task) instead of its kind")] = None,
    train: Annotated[bool, typer.Option(
        "--train", help="drift: phase 0 only, from another seed (to compile from)")] = False,
) -> None:
    """Write a seeded scenario with its labels: attacks in synthetic background (anomaly,
    botnet), or the drifting scenario over real nDPI captures (drift)."""
    check_count("--flows", flows, 1, MAX_FLOWS)
    check_number("--seconds", seconds, MAX_SECONDS)
    check_count("--seed", seed, 0, MAX_SEED)
    check_count("--phases", phases, 1, 3)
    check_count("--benign-packets", benign_packets, 1, MAX_ROWS)
    if not (math.isfinite(attack_scale) and 0 <= attack_scale <= 1000):
        _fail(f"--attack-scale must be a number in 0..1000 (got {attack_scale})")
    with user_errors():
        if name == "drift":
            from homunculus.data.drift import drift_scenario, write_drift

            scenario = drift_scenario(seed, phases=phases, phase_s=seconds,
                                      benign_packets=benign_packets, attack_scale=attack_scale,
                                      train=train)
            table = write_drift(scenario, pcap, labels, attack_label)
        else:
            from homunculus.data.scenarios import scenario_table, write_scenario

            table = scenario_table(name, flows, seconds, seed)
            write_scenario(table, pcap, labels)
    counts = {shown(k, 40): v for k, v in table["label"].value_counts().to_dict().items()}
    say(out, f"wrote {len(table)} packets to {shown(pcap, 400)} and labels to "
        f"{shown(labels, 400)}: {counts}")


@app.command("families")
def families_command() -> None:
    """List the model families and how each maps to tables."""
    from homunculus.models.base import all_families, requires_dense

    table = Table("family", "lowering", "targets")
    for name, fam in sorted(all_families().items()):
        targets = "xdp, c" if requires_dense(fam) else "tofino, bmv2, xdp, c"
        table.add_row(name, fam.description, targets)
    out.print(table)


@app.command("targets")
def targets_command() -> None:
    """List the target profiles and their documented defaults."""
    from homunculus.targets.c.profiles import CProfile
    from homunculus.targets.p4.profiles import PROFILES
    from homunculus.targets.xdp.target import XdpProfile

    profiles = [(f"{p.name} ({p.arch})", p.as_dict()) for p in PROFILES.values()]
    profiles += [("xdp (eBPF/XDP: capacity of the model maps)", XdpProfile().as_dict()),
                 ("c (C library: cost model)", CProfile().as_dict())]
    for title, fields in profiles:
        table = Table(title=title)
        table.add_column("field")
        table.add_column("default")
        for key, value in fields.items():
            table.add_row(key, str(value))
        out.print(table)


@app.command("example-data")
def example_data_command(
    path: Annotated[Path, typer.Argument(help="CSV file to write")],
    rows: Annotated[int, typer.Option(help="number of rows")] = 6000,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
) -> None:
    """Regenerate the bundled example feature table (seeded: same seed, same bytes)."""
    from homunculus.data.example import write_example

    check_count("--rows", rows, 1, MAX_ROWS)
    check_count("--seed", seed, 0, MAX_SEED)
    with user_errors():
        write_example(path, rows, seed)
    say(out, f"wrote {rows} rows to {shown(path, 400)}")


def main() -> None:  # pragma: no cover
    app()


@app.command("deploy")
def deploy_command(
    out_dir: Annotated[Path, typer.Argument(help="an output directory compiled for xdp")],
    iface: Annotated[str, typer.Option("--iface", help="interface to attach to")],
    netns: Annotated[str | None, typer.Option("--netns", help="its network namespace")] = None,
    mode: Annotated[str, typer.Option("--mode", help="skb (generic) or native")] = "skb",
    name: Annotated[str | None, typer.Option("--name", help="deployment name")] = None,
) -> None:
    """Load, pin and attach a compiled XDP program (root)."""
    from homunculus.deploy import deploy

    with user_errors():
        dep = deploy(out_dir, iface, netns=netns, mode=mode, name=name)
    where = f" in netns {shown(dep.netns)}" if dep.netns else ""
    say(out, ("deployed", "bold green"), f" {dep.name} on {shown(dep.iface)}{where} ({dep.mode} "
        f"mode, program id {dep.prog_id}); pinned under /sys/fs/bpf/homunculus/{dep.name}")


@app.command("stats")
def stats_command(
    name: Annotated[str | None, typer.Argument(help="deployment (default: the only one)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-class packet counters of a deployed XDP program (root)."""
    import json

    from homunculus.deploy import read_stats

    with user_errors():
        stats = read_stats(name)
    if json_out:
        out.print_json(json.dumps(stats.as_dict()))
        return
    classes = Table("class", "label", "packets", title=Text(f"{stats.name}: classes"))
    for i, (label, count) in enumerate(stats.counts.items()):
        classes.add_row(str(i), Text(shown(label)), str(count))
    classes.add_row("-", "(unclassified)", str(stats.unclassified))
    out.print(classes)
    totals = Table("counter", "packets", title=Text(f"{stats.name}: stats"))
    for key, value in stats.stats.items():
        totals.add_row(key, str(value))
    out.print(totals)
    state = ("attached", "") if stats.attached else ("not attached", "bold red")
    say(out, f"active slot {stats.active_slot}; ", state)


@app.command("push")
def push_command(
    out_dir: Annotated[Path, typer.Argument(help="a newer compile (same program shape)")],
    name: Annotated[str | None, typer.Option("--name", help="deployment")] = None,
) -> None:
    """Install a newer compile's parameters into the standby slot and flip to it (root)."""
    from homunculus.deploy import push

    with user_errors():
        dep = push(out_dir, name)
    say(out, ("pushed", "bold green"), f" {shown(out_dir, 400)} into {dep.name} "
        f"(push {dep.pushes})")


@app.command("undeploy")
def undeploy_command(
    name: Annotated[str | None, typer.Argument(help="deployment (default: the only one)")] = None,
) -> None:
    """Detach and unpin a deployed XDP program and forget it (root)."""
    from homunculus.deploy import load_state, undeploy

    with user_errors():
        dep = load_state(name)
        warnings_ = undeploy(dep.name)
    for warning in warnings_:
        say(err, f"warning: {message(warning)}")
    say(out, ("undeployed", "bold green"), f" {dep.name} from {shown(dep.iface)}")


@app.command("adapt")
def adapt_command(
    out_dir: Annotated[Path, typer.Argument(help="the compiled OUT (with an 'adapt:' section)")],
    replay: Annotated[Path | None, typer.Option(
        "--replay", help="run over this capture in simulated time (else live)")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="ground-truth label CSV: F1 per window and each agent's precision")] = None,
    iface: Annotated[str | None, typer.Option(
        "--iface", help="live: the interface of the XDP deployment")] = None,
    netns: Annotated[str | None, typer.Option("--netns", help="live: its namespace")] = None,
    name: Annotated[str | None, typer.Option("--name", help="live: the deployment")] = None,
    agents: Annotated[str, typer.Option(
        help="comma-separated: syn_flood, port_scan, dns_amplification, beacon, rules, dpi, "
             "oracle (evaluation only)")] = "syn_flood,port_scan,dns_amplification,beacon,dpi",
    rules: Annotated[Path | None, typer.Option(help="the rules agent's label CSV")] = None,
    combine: Annotated[str, typer.Option(help="priority or vote")] = "priority",
    window: Annotated[float, typer.Option(help="window length in seconds")] = 5.0,
    policy: Annotated[str, typer.Option(help="proxy, every or never")] = "proxy",
    threshold: Annotated[float, typer.Option(help="retrain when the proxy is below")] = 0.8,
    cooldown: Annotated[int, typer.Option(help="windows between retrains")] = 3,
    min_per_class: Annotated[int, typer.Option(help="labelled samples per class needed")] = 20,
    margin: Annotated[float, typer.Option(help="gate: allowed held-out F1 loss")] = 0.02,
    min_fidelity: Annotated[float, typer.Option(
        help="gate: verdicts must differ on more than this share of recent samples")] = 0.01,
    detector: Annotated[str, typer.Option(help="adwin or page_hinkley")] = "adwin",
    duration: Annotated[float | None, typer.Option(help="live: seconds to run")] = None,
    windows: Annotated[int | None, typer.Option(help="live: windows to run")] = None,
    max_installs: Annotated[int | None, typer.Option(help="install at most this many")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="where the log and report go (default OUT/adapt)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    proxy: Annotated[str, typer.Option(
        help="accuracy proxy: macro_f1, or min_recall / mean_recall (per class with "
             "min-per-class labelled samples in the window)")] = "macro_f1",
    sag: Annotated[float, typer.Option(
        help="also retrain when the proxy stays more than this below the active model's "
             "level at install (its held-out macro-F1) for --patience windows; 0: off")] = 0.02,
    patience: Annotated[int, typer.Option(
        help="windows in a row the proxy must sag before --sag retrains")] = 2,
    cooldown_from: Annotated[str, typer.Option(
        help="the cool-down counts from the last installed retrain (install) or from the "
             "last retrain (retrain)")] = "install",
    label_shift: Annotated[int, typer.Option(
        help="retrain at once, cool-down or not, when an agent's label that no retrain has "
             "learned from (a new attack kind), or that labelled fewer in each of the 3 "
             "windows before (one coming back), labels at least this many of a window's "
             "samples; 0: off")] = 20,
    research_after: Annotated[int, typer.Option(
        help="when the proxy stays low (below --threshold, or sagging) this many windows "
             "after a retrain, the next retrain re-searches the model family's "
             "hyperparameters within the deployed program's capacity; 0: off")] = 1,
    research_trials: Annotated[int, typer.Option(
        help="trials of a re-search (seeded Optuna TPE, the active hyperparameters "
             "first)")] = 4,
) -> None:
    """Adapt a deployed model: agents label sampled traffic, the accuracy proxy triggers
    retraining, the gate decides, installs are atomic; every decision is logged."""
    from homunculus.adapt.run import AdaptOptions, run_adapt

    options = AdaptOptions(out_dir, replay, labels, iface, netns, name, agents, rules, combine,
                           window, policy, threshold, cooldown, min_per_class, margin,
                           min_fidelity, detector, duration, windows, max_installs, report,
                           seed, proxy, sag, patience, cooldown_from, label_shift,
                           research_after, research_trials)
    with user_errors():
        try:
            summary, html_path = run_adapt(options, echo=lambda m: say(out, message(m)))
        except ValueError as exc:
            _fail(str(exc))
    say(out, ("adapted", "bold green"), f" {summary['windows']} windows: "
        f"{summary['retrains']} retrains, {summary['installs']} installs, "
        f"{summary['cpu_seconds']:.2f} CPU s retraining; report {shown(html_path, 400)}")
