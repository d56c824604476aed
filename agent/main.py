"""``coop-agent``: the donor's command line. Commands stay thin; the work is in agent modules."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent import control, sandbox, service, state
from agent.calibrate import CalibrationResult, calibrate
from agent.config import AgentSettings, default_state_dir, load_agent_settings
from agent.hardware import HostReport, UnrecognisedOutput, detect, parse_any, report_from_parsed
from agent.runner import JoinError, run_forever
from agent.state import is_paused, set_paused
from agent.state import load as load_state

app = typer.Typer(
    name="coop-agent",
    help="Share this machine's GPUs with a Coop cooperative.",
    no_args_is_help=True,
    add_completion=False,
)


def _gpu_label(index: int, mig_device: int | None) -> str:
    return str(index) if mig_device is None else f"{index} MIG {mig_device}"


def print_report(report: HostReport, console: Console) -> None:
    """The node as a two-column table, then one row per GPU (or MIG instance)."""
    node = Table(title="Node", show_header=False)
    node.add_column("field", style="bold")
    node.add_column("value")
    for field, value in [
        ("hostname", report.hostname),
        ("os", report.os),
        ("cpus", str(report.cpus)),
        ("memory", f"{report.memory_gb:.2f} GB"),
        ("free disk", f"{report.disk_gb:.1f} GB"),
        ("python", report.python_version),
        ("ray", report.ray_version or "not installed"),
        ("GPUs found by", report.source),
    ]:
        node.add_row(field, value)
    console.print(node)
    if not report.gpus:
        console.print("No GPU found: this node offers its CPUs only.")
        return
    gpus = Table(title="GPUs")
    gpus.add_column("#", justify="right", no_wrap=True)
    gpus.add_column("name", ratio=3)
    for column in ("GiB", "CC"):
        gpus.add_column(column, justify="right", no_wrap=True)
    for column in ("driver", "CUDA", "MIG"):
        gpus.add_column(column, no_wrap=True)
    gpus.add_column("UUID", ratio=2, overflow="fold")
    for gpu in report.gpus:
        gpus.add_row(
            _gpu_label(gpu.index, gpu.mig_device_index),
            gpu.name,
            f"{gpu.memory_gb:.1f}",
            f"{gpu.compute_capability:.1f}" if gpu.compute_capability is not None else "-",
            gpu.driver_version or "-",
            gpu.cuda_version or "-",
            gpu.mig_mode or "-",
            gpu.uuid or "-",
        )
    console.print(gpus)


@app.command()
def inspect(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from",
            exists=True,
            dir_okay=False,
            readable=True,
            help="read GPUs from a saved tool output (nvidia-smi, rocm-smi, system_profiler ...) "
            "instead of this machine's; the node facts stay this machine's",
        ),
    ] = None,
) -> None:
    """Print the hardware this agent would offer: node facts and one row per GPU."""
    err = Console(stderr=True)
    failed = False
    if from_file is None:
        report = detect()
    else:
        try:
            parsed = parse_any(from_file.read_text(errors="replace"))
        except UnrecognisedOutput as exc:
            failed = True
            err.print(f"[bold red]Cannot read {from_file}:[/] {exc}", highlight=False)
            err.print("Showing a CPU-only report instead.")
            report = report_from_parsed(None, [f"{from_file}: {exc}"])
        else:
            err.print(
                f"GPUs read from {from_file} ({parsed.format}); node facts are this machine's.",
                style="dim",
                highlight=False,
            )
            report = report_from_parsed(parsed)
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        print_report(report, Console())
        print_sandbox(Console())
        for warning in report.warnings:
            err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if failed:
        raise typer.Exit(1)


def print_sandbox(console: Console) -> None:
    """What a guest job here would be kept from (agent/sandbox.py), as ``coop-agent join`` would set it up."""
    settings = _settings()
    policy = sandbox.preview(settings.sandbox, settings.state_dir / "guest", settings.sandbox_hide)
    table = Table(title="Guest sandbox (coop-agent join" + ("" if settings.sandbox else " --no-sandbox") + ")")
    for column in ("what", "enforced", "how"):
        table.add_column(column, overflow="fold")
    for item in sandbox.enforcement(policy):
        table.add_row(item.what, "[green]yes[/]" if item.enforced else "[bold red]no[/]", item.how)
    console.print(table)


def print_calibration(result: CalibrationResult, console: Console) -> None:
    table = Table(title=f"Calibration: dense {result.dtype} matmul, {result.matrix_size}x{result.matrix_size}")
    for column in ("device", "name", "TFLOP/s", "iterations"):
        table.add_column(column, justify="right" if column in ("TFLOP/s", "iterations") else "left")
    devices = result.device.removeprefix("cuda:").split(",") if result.device != "cpu" else ["cpu"]
    for position, figure in enumerate(result.tflops):
        device = devices[position] if position < len(devices) else "?"
        name = result.gpu_names[position] if position < len(result.gpu_names) else "CPU"
        table.add_row(
            device if device == "cpu" else f"cuda:{device}", name, f"{figure:.4g}", str(result.iterations[position])
        )
    console.print(table)
    console.print(
        f"method {result.method}, torch {result.torch_version or 'not installed'}, "
        f"{result.seconds:.1f} s. One credit is one hour of 100 measured TFLOP/s."
    )


@app.command(name="calibrate")
def calibrate_command(
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.5, max=600, help="upper bound on the time the measurement takes")
    ] = 20.0,
) -> None:
    """Measure dense matmul TFLOP/s per GPU (bf16, torch) or on the CPU (fp32)."""
    result = calibrate(max_seconds=seconds)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    print_calibration(result, Console())
    for warning in result.warnings:
        warn(warning)


def warn(message: str) -> None:
    Console(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False)


def setup_logging(level: str) -> None:
    """The agent's log (journald under the service): its own lines at ``level``; httpx's line per
    request (one a heartbeat) only with DEBUG."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _settings(**overrides: object) -> AgentSettings:
    return load_agent_settings(**overrides)


StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="where the agent keeps its node id and token "
        "[default: COOP_AGENT_STATE_DIR, /var/lib/coop-agent as root, "
        "else ~/.local/state/coop-agent]",
    ),
]


@app.command()
def join(
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", help="coordinator URL [COOP_AGENT_COORDINATOR]")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="agent token; visible in ps: prefer --token-file or COOP_AGENT_TOKEN")
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", exists=True, dir_okay=False, help="read the agent token from this file"),
    ] = None,
    state_dir: StateDir = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file", help="PEM file of the CA that signed the coordinator's certificate [COOP_AGENT_CA_FILE]"
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="node name [default: short hostname]")] = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray head host:port, if the coordinator does not say")
    ] = None,
    node_ip_address: Annotated[
        str | None, typer.Option("--node-ip-address", help="this node's overlay IP (WireGuard/Tailscale) for Ray")
    ] = None,
    network: Annotated[
        str | None,
        typer.Option("--network", help="a label for this machine's network (e.g. lab-a): multi-node jobs keep to one"),
    ] = None,
    hardware_from: Annotated[
        Path | None,
        typer.Option(
            "--hardware-from",
            exists=True,
            dir_okay=False,
            help=("offer the GPUs described in a saved tool output instead of detecting them (support and tests)"),
        ),
    ] = None,
    no_calibrate: Annotated[bool, typer.Option("--no-calibrate", help="skip the first-join calibration")] = False,
    no_sandbox: Annotated[
        bool,
        typer.Option(
            "--no-sandbox",
            help="run guest jobs unconfined, as the agent's user: only for a machine that runs your own jobs",
        ),
    ] = False,
) -> None:
    """Join the cooperative: register, run a Ray worker, heartbeat until stopped (SIGTERM leaves cleanly)."""
    if token is not None:
        warn(
            "--token shows the agent token to every user of this machine (ps) for as long as the agent runs: "
            "use --token-file PATH or COOP_AGENT_TOKEN"
        )
    elif token_file is not None:
        token = token_file.read_text().strip()
    settings = _settings(
        coordinator=coordinator,
        token=token,
        state_dir=state_dir,
        ca_file=ca_file,
        node_name=name,
        ray_address=ray_address,
        node_ip_address=node_ip_address,
        network=network,
        sandbox=False if no_sandbox else None,
    )
    setup_logging(settings.log_level)
    if not settings.sandbox:
        warn(
            "NO SANDBOX: guest jobs will run as this agent's user and can read its token, your files and your "
            "processes. Use --no-sandbox only on a machine that runs nobody's jobs but your own."
        )
    report = None
    if hardware_from is not None:
        try:
            report = report_from_parsed(
                parse_any(hardware_from.read_text(errors="replace")), state_dir=settings.state_dir
            )
        except UnrecognisedOutput as exc:
            Console(stderr=True).print(f"[bold red]Cannot read {hardware_from}:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    try:
        code = run_forever(settings, report, calibrate=not no_calibrate)
    except JoinError as exc:
        Console(stderr=True).print(f"[bold red]Cannot join:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def _flag(paused: bool, state_dir: Path | None, force: bool, wait_s: float) -> None:
    """Pause or resume the running agent: write the flag where it reads it, then say what the
    coordinator saw in the heartbeat that carried it."""
    err = Console(stderr=True)
    verb = "pause" if paused else "resume"
    from_env = os.environ.get("COOP_AGENT_STATE_DIR")
    explicit = state_dir or (Path(from_env) if from_env else None)
    try:
        running: control.RunningAgent | None = control.locate(explicit, default_state_dir())
    except control.NotFound as exc:
        if not (force and explicit is not None):
            err.print(f"[bold red]Cannot {verb}:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        running = None
    target = running.state_dir if running is not None and running.state_dir is not None else explicit
    assert target is not None
    since = time.time()
    try:
        set_paused(target, paused)
    except PermissionError:
        who = f"the running agent (pid {running.pid}, user {running.user})" if running else "that agent"
        err.print(
            f"[bold red]Cannot {verb}:[/] {who} keeps its state in {target}, which you cannot write: "
            f"run 'sudo coop-agent {verb}', or 'coop node {verb} NODE_ID' with your own coop login (or an admin's).",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    if running is None:
        typer.echo(f"{verb}d ({target}); no agent runs with this state dir: one started with it joins {verb}d.")
        return
    typer.echo(f"{verb}d: the running agent (pid {running.pid}, state dir {target}) reads the flag within a second.")
    seen = control.wait_reported(target, paused, since, wait_s)
    if seen is None:
        err.print(
            f"[yellow]warning:[/] the agent has not reported the {verb} to the coordinator within {wait_s:g} s "
            "(still starting or calibrating?); it does at its next heartbeat. 'coop-agent status' shows when.",
            highlight=False,
            soft_wrap=True,
        )
        return
    typer.echo(control.describe(seen))
    if paused and seen.get("node"):
        typer.echo("'coop-agent resume' lends the machine again.")


FORCE = typer.Option("--force", help="with --state-dir: write the flag even though no running agent uses that dir")
WAIT = typer.Option("--wait", min=0, max=600, help="seconds to wait for the coordinator to see it")


@app.command()
def pause(
    state_dir: StateDir = None, force: Annotated[bool, FORCE] = False, wait: Annotated[float, WAIT] = 15.0
) -> None:
    """Take the machine back now: the running agent tells the coordinator within a second, and its
    guest jobs are stopped and requeued. Fails when no running agent would read the flag."""
    _flag(True, state_dir, force, wait)


@app.command()
def resume(
    state_dir: StateDir = None, force: Annotated[bool, FORCE] = False, wait: Annotated[float, WAIT] = 15.0
) -> None:
    """Lend the machine to the cooperative again."""
    _flag(False, state_dir, force, wait)


@app.command()
def status(
    state_dir: StateDir = None, as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False
) -> None:
    """What this agent remembers: coordinator, node id, calibration, whether it is paused, whether an
    agent runs with this state dir, and what the coordinator said at its last heartbeat."""
    settings = _settings(state_dir=state_dir)
    saved = load_state(settings.state_dir)
    running = control.agent_in(settings.state_dir)
    seen = state.last_seen(settings.state_dir) if running else None
    info = {
        "state_dir": str(settings.state_dir),
        "coordinator": saved.coordinator,
        "node_id": saved.node_id,
        "node_name": saved.node_name,
        "tflops_per_gpu": saved.tflops_per_gpu,
        "cpu_tflops": saved.cpu_tflops,
        "paused": is_paused(settings.state_dir),
        "agent_pid": running.pid if running else None,
        "coordinator_sees": control.describe(seen) if seen else None,
        "last_heartbeat_age_s": round(time.time() - float(seen["at"]), 1) if seen else None,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    if saved.node_id is None:
        typer.echo(
            f"not joined yet (state dir {settings.state_dir}): "
            "run 'coop-agent join --coordinator URL --token-file FILE'"
        )
    for key, value in info.items():
        typer.echo(f"{key:20} {value}")


@app.command("install-service")
def install_service(
    coordinator: Annotated[str | None, typer.Option("--coordinator", help="coordinator URL")] = None,
    token: Annotated[str | None, typer.Option("--token", help="agent token")] = None,
    user: Annotated[str, typer.Option("--user", help="dedicated system user the agent runs as")] = "coop-agent",
    prefix: Annotated[
        Path, typer.Option("--prefix", help="where the service's own Python environment goes")
    ] = service.PREFIX,
    service_state_dir: Annotated[
        Path, typer.Option("--state-dir", help="the service's state dir (its node id and token)")
    ] = service.STATE_DIR,
    root: Annotated[Path, typer.Option("--root", help="write /etc below this directory (packaging, tests)")] = Path(
        "/"
    ),
    no_env: Annotated[
        bool, typer.Option("--no-env", help="do not create the user nor build the environment (packaging)")
    ] = False,
    no_enable: Annotated[bool, typer.Option("--no-enable", help="do not enable nor start the unit")] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            exists=True,
            dir_okay=False,
            help="PEM file of the cooperative's CA, copied to /etc/coop-agent/ca.pem for the service "
            "[COOP_AGENT_CA_FILE]",
        ),
    ] = None,
) -> None:
    """Install the agent as a systemd service: its own user, its own Python environment (checked as that
    user), the unit (restart on failure, checked by systemd-analyze) and the token in a 0640 env file."""
    err = Console(stderr=True)
    settings = _settings(coordinator=coordinator, token=token, ca_file=ca_file)
    saved = load_state(settings.state_dir)
    url, secret = settings.coordinator or saved.coordinator, settings.token or saved.token
    if not url or not secret:
        err.print("[bold red]Need --coordinator and --token[/] (or a previous 'coop-agent join')")
        raise typer.Exit(1)
    if not (no_env and no_enable) and os.geteuid() != 0:
        err.print(
            "[bold red]Run as root[/] (sudo coop-agent install-service …), or use --no-env --no-enable "
            "--root DIR to only write the files.",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if not prefix.is_absolute() or not service_state_dir.is_absolute():
        err.print("[bold red]--prefix and --state-dir must be absolute paths[/]")
        raise typer.Exit(1)
    try:
        plan = service.plan(
            url, secret, user=user, root=root, prefix=prefix, state_dir=service_state_dir, ca_file=settings.ca_file
        )
        if not no_env:
            typer.echo(f"building {prefix} for user {user} (a copy of this environment's packages) ...")
        done = service.install(plan, build=not no_env, enable=not no_enable)
    except (service.InstallError, OSError, subprocess.CalledProcessError) as exc:
        err.print(f"[bold red]Install failed:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for line in done:
        typer.echo(f"  {line}")
    typer.echo(
        "'journalctl -u coop-agent -f' shows its log; 'sudo coop-agent pause' takes the machine back"
        if not no_enable
        else "not enabled (--no-enable): 'systemctl enable --now coop-agent' starts it"
    )


if __name__ == "__main__":
    app()
