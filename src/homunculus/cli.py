"""Command line: ``homunculus compile SPEC -o OUT`` and friends."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from homunculus.errors import HomunculusError, SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Homunculus: a compiler for in-network machine learning.")
err = Console(stderr=True)
out = Console()


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def compile_spec(spec: Path, out_dir: Path, trials: int | None, seconds: float | None,
                 resume: bool, seed: int | None, progress: bool, p4c: str | None = None,
                 p4c_timeout: float | None = None,
                 toolchain_feasibility: bool = False):  # noqa: ANN201
    """Compile a YAML spec or run a Python (Alchemy) script with these options."""
    from homunculus.compile import CompileOptions
    from homunculus.frontend.alchemy import cli_overrides
    from homunculus.frontend.yaml_spec import plan_from_yaml
    from homunculus.schedule.driver import compile_any

    if not spec.exists():
        raise SpecError("no such spec file", file=str(spec))
    if spec.suffix in (".yaml", ".yml"):
        options = CompileOptions(out_dir, trials, seconds, resume, seed, progress, p4c,
                                 p4c_timeout, toolchain_feasibility)
        return compile_any(plan_from_yaml(spec), options)
    if spec.suffix == ".py":
        with cli_overrides(out_dir, trials, seconds, resume, seed, progress, p4c, p4c_timeout,
                           toolchain_feasibility) as calls:
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
) -> None:
    """Search, train, quantise, generate and verify a data-plane program."""
    if trials is not None and trials < 1:
        _fail(SpecError("--trials must be at least 1"))
    if seconds is not None and seconds <= 0:
        _fail(SpecError("--seconds must be positive"))
    if p4c_timeout is not None and p4c_timeout <= 0:
        _fail(SpecError("--p4c-timeout must be positive"))
    try:
        result = compile_spec(spec, out_dir, trials, seconds, resume, seed, progress, p4c,
                              p4c_timeout, toolchain_feasibility)
    except HomunculusError as exc:
        _fail(exc)
        return
    if hasattr(result, "summary"):  # a schedule or a chain
        out.print(f"[bold green]compiled[/] {result.report['name']} -> {result.out_dir}")
        for line in result.summary():
            out.print(line, highlight=False, markup=False)
        return
    m = result.metrics
    res = result.report["resources"]
    out.print(f"[bold green]compiled[/] {result.report['name']} -> {result.out_dir}")
    out.print(f"  family {result.family}; {result.report['metric']}: float {m['float']:.4f}, "
              f"quantised {m['quantised']:.4f}, pipeline {m['pipeline']:.4f} "
              f"(agreement {m['agreement']:.2%} on {m['test_samples']} test samples)")
    from homunculus.report.summary import resource_line

    line = resource_line(result.report["target"], res["totals"], res["binding"])
    switch = result.report["target"] in ("tofino", "bmv2")
    out.print("  " + ("estimated: " + line if switch else line), highlight=False)
    if switch:
        out.print(f"  {toolchain_line(result.report.get('toolchain') or {})}", highlight=False)


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

    try:
        table, stats = ingest(pcap)
        if labels is not None:
            table = label_from_file(table, labels, default=default_label)
        report = simulate_capture(out_dir, table)
    except HomunculusError as exc:
        _fail(exc)
        return
    if stats.skipped or stats.truncated_files:
        err.print(f"warning: skipped {stats.skipped} bad records; "
                  f"{stats.truncated_files} truncated capture(s)")
    table_view = Table("class", "packets")
    for label, count in report.counts.items():
        table_view.add_row(label, str(count))
    out.print(table_view)
    f1 = f"{report.f1_macro:.4f} on {report.labelled} labelled packets" if (
        report.f1_macro is not None) else "n/a (no labels)"
    out.print(f"{report.packets} packets, {report.classified} classified; agreement with the "
              f"model {report.agreement:.2%}; F1 (macro) {f1}")
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=1) + "\n")


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
    try:
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
    except HomunculusError as exc:
        _fail(exc)
        return
    counts = table["label"].value_counts().to_dict()
    out.print(f"wrote {len(table)} packets to {pcap} and labels to {labels}: {counts}")


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

    write_example(path, rows, seed)
    out.print(f"wrote {rows} rows to {path}")


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

    try:
        dep = deploy(out_dir, iface, netns=netns, mode=mode, name=name)
    except HomunculusError as exc:
        _fail(exc)
        return
    where = f" in netns {dep.netns}" if dep.netns else ""
    out.print(f"[bold green]deployed[/] {dep.name} on {dep.iface}{where} ({dep.mode} mode, "
              f"program id {dep.prog_id}); pinned under /sys/fs/bpf/homunculus/{dep.name}")


@app.command("stats")
def stats_command(
    name: Annotated[str | None, typer.Argument(help="deployment (default: the only one)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Per-class packet counters of a deployed XDP program (root)."""
    import json

    from homunculus.deploy import read_stats

    try:
        stats = read_stats(name)
    except HomunculusError as exc:
        _fail(exc)
        return
    if json_out:
        out.print_json(json.dumps(stats.as_dict()))
        return
    classes = Table("class", "label", "packets", title=f"{stats.name}: classes")
    for i, (label, count) in enumerate(stats.counts.items()):
        classes.add_row(str(i), label, str(count))
    classes.add_row("-", "(unclassified)", str(stats.unclassified))
    out.print(classes)
    totals = Table("counter", "packets", title=f"{stats.name}: stats")
    for key, value in stats.stats.items():
        totals.add_row(key, str(value))
    out.print(totals)
    state = "attached" if stats.attached else "[bold red]not attached[/]"
    out.print(f"active slot {stats.active_slot}; {state}")


@app.command("push")
def push_command(
    out_dir: Annotated[Path, typer.Argument(help="a newer compile (same program shape)")],
    name: Annotated[str | None, typer.Option("--name", help="deployment")] = None,
) -> None:
    """Install a newer compile's parameters into the standby slot and flip to it (root)."""
    from homunculus.deploy import push

    try:
        dep = push(out_dir, name)
    except HomunculusError as exc:
        _fail(exc)
        return
    out.print(f"[bold green]pushed[/] {out_dir} into {dep.name} (push {dep.pushes})")


@app.command("undeploy")
def undeploy_command(
    name: Annotated[str | None, typer.Argument(help="deployment (default: the only one)")] = None,
) -> None:
    """Detach and unpin a deployed XDP program and forget it (root)."""
    from homunculus.deploy import load_state, undeploy

    try:
        dep = load_state(name)
        warnings = undeploy(dep.name)
    except HomunculusError as exc:
        _fail(exc)
        return
    for warning in warnings:
        err.print(f"warning: {warning}")
    out.print(f"[bold green]undeployed[/] {dep.name} from {dep.iface}")


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
) -> None:
    """Adapt a deployed model: agents label sampled traffic, the accuracy proxy triggers
    retraining, the gate decides, installs are atomic; every decision is logged."""
    from homunculus.adapt.run import AdaptOptions, run_adapt

    options = AdaptOptions(out_dir, replay, labels, iface, netns, name, agents, rules, combine,
                           window, policy, threshold, cooldown, min_per_class, margin,
                           min_fidelity, detector, duration, windows, max_installs, report,
                           seed)
    try:
        summary, html_path = run_adapt(options, echo=lambda m: out.print(m, highlight=False))
    except (HomunculusError, ValueError) as exc:
        _fail(exc)
        return
    out.print(f"[bold green]adapted[/] {summary['windows']} windows: {summary['retrains']} "
              f"retrains, {summary['installs']} installs, {summary['cpu_seconds']:.2f} CPU s "
              f"retraining; report {html_path}")
