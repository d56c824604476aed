"""``coop up``: a whole cooperative on this machine, for trying Coop out (and ``make demo``).

A Ray head, a coordinator on SQLite and an agent that donates this machine, all as child
processes with token authentication on loopback; two members ("donor" owns the machine,
"researcher" runs jobs) so the ledger shows credit moving. ``--demo`` submits the LoRA examples,
follows them, prints the status table and the ledger, and shuts everything down.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import psutil
import typer

from agent.ray_loopback import DISABLED as LOOPBACK_ENV
from agent.sandbox import SandboxError, make_policy, outer_command, ray_environment
from coop.cli import output
from coop.cli.output import UserError

app = typer.Typer()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lora"
LOOPBACK_RAY_START = [sys.executable, "-m", "agent.ray_loopback", "start"]
DEMO_OUTPUTS = "demo-outputs"  # under the folder coop up --demo runs in: where it pulls the adapter


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], object], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError, RuntimeError):
            pass
        time.sleep(0.2)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise UserError(f"timed out after {timeout:.0f} s waiting for {what}", fix=f"see the log:\n{tail}")


class Cooperative:
    """The child processes of a one-machine cooperative, stopped in reverse order."""

    def __init__(self, data: Path, sandbox: bool = True, hardware_from: Path | None = None) -> None:
        self.data = data
        self.sandbox = sandbox
        self.hardware_from = hardware_from
        self.bin = Path(sys.executable).parent
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.ray_token = secrets.token_hex(16)
        self.ray_temp = Path(tempfile.mkdtemp(prefix="cooprayup", dir="/tmp"))  # short: socket paths are limited
        # Only the head is given the Ray token directly: the coordinator gets it as COOP_RAY_AUTH_TOKEN
        # and the agent from the coordinator when it registers, as on a real cooperative.
        self.ray_auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.ray_token}
        inherited = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        # every Ray client here (the coordinator's, the agent's Ray node) keeps 127.0.0.1 as it is
        self.env = {**inherited, **LOOPBACK_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
        self.env["COOP_DATA_DIR"] = str(data / "coordinator")
        self.url = ""

    def run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, env=self.env, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.data / f"{name}.log"
        proc = subprocess.Popen(args, env=env or self.env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return log

    def start(self) -> tuple[str, str, str]:
        """Ray head, coordinator, members, agent. Returns (url, admin token, researcher token)."""
        gcs, dash, port, dash_agent, client = _port(), _port(), _port(), _port(), _port()
        output.say(
            "starting a Ray head (token auth, loopback" + (", guests sandboxed" if self.sandbox else "") + ") ..."
        )
        # --block keeps `ray start` in the foreground as our child: stopping it stops this head's
        # processes and nobody else's (`ray stop` would kill every Ray of this user on the machine).
        # The head runs guests too (any Ray task may land there): the same sandbox as a donor's node,
        # hiding this cooperative's data (the coordinator's database, the agent's token) from them.
        try:
            policy = make_policy(self.sandbox, self.data / "head-guest", hide=[str(self.data)])
        except SandboxError as exc:
            raise UserError(str(exc), fix="install bubblewrap, or try Coop with 'coop up --no-sandbox'") from None
        if policy.uid is not None:
            os.chown(self.ray_temp, policy.uid, policy.gid or -1)
        log = self.spawn(
            "ray-head",
            outer_command(
                policy,
                [
                    # Ray's own CLI, its ports kept on 127.0.0.1 (a plain `ray start` turns a loopback
                    # --node-ip-address into the interface address, and then listens on every interface)
                    *LOOPBACK_RAY_START,
                    "--head",
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    f"--port={gcs}",
                    f"--dashboard-port={dash}",
                    "--dashboard-host=127.0.0.1",
                    # the Jobs API submits through the head's own dashboard agent: Ray's default port for
                    # it (52365) may belong to another Ray on this machine, and then no job can start
                    f"--dashboard-agent-listen-port={dash_agent}",
                    f"--ray-client-server-port={client}",  # 10001 may be another Ray's too
                    "--num-cpus=1",
                    "--num-gpus=0",
                    f"--temp-dir={self.ray_temp}",
                    "--disable-usage-stats",
                ],
                writable=[self.ray_temp],
            ),
            ray_environment(policy, {**self.ray_auth, **LOOPBACK_ENV, "RAY_USAGE_STATS_ENABLED": "0"}),
        )
        cluster_file = self.ray_temp / "ray_current_cluster"
        _wait(cluster_file.exists, 90, "the Ray head", log)
        address = cluster_file.read_text().strip()
        self.env.update(
            COOP_PORT=str(port),
            COOP_RAY_ADDRESS=address,
            COOP_RAY_DASHBOARD_URL=f"http://127.0.0.1:{dash}",
            COOP_RAY_AUTH_TOKEN=self.ray_token,  # as the README says: the coordinator needs nothing else
            COOP_LEDGER_INTERVAL_S="5",
            COOP_HEARTBEAT_INTERVAL_S="2",
            COOP_PREEMPT_GRACE_S="10",
        )
        coop = [sys.executable, "-m", "coop.cli.main"]
        admin = json.loads(self.run([*coop, "admin", "bootstrap", "--json"]).stdout)["token"]
        output.say("starting the coordinator (SQLite) ...")
        log = self.spawn("coordinator", [*coop, "server"])
        self.url = f"http://127.0.0.1:{port}"
        _wait(lambda: httpx.get(self.url + "/v1/health").status_code == 200, 60, "the coordinator", log)
        headers = {"Authorization": f"Bearer {admin}"}
        for name in ("donor", "researcher"):
            httpx.post(self.url + "/v1/members", json={"name": name}, headers=headers).raise_for_status()
        researcher = httpx.post(self.url + "/v1/tokens", json={"member": "researcher"}, headers=headers).json()["token"]
        agent_token = httpx.post(
            self.url + "/v1/tokens", json={"kind": "agent", "member": "donor"}, headers=headers
        ).json()["token"]
        output.say("starting an agent that donates this machine (calibrating, at most 20 s) ...")
        agent_env = {k: v for k, v in self.env.items() if not k.startswith("COOP_")}
        agent_env["COOP_AGENT_RAY_TEMP_DIR"] = str(self.ray_temp)
        agent_env["COOP_AGENT_TOKEN"] = agent_token  # not --token: argv is visible to everyone in ps
        agent_env["COOP_AGENT_SANDBOX"] = "true" if self.sandbox else "false"
        agent_env["COOP_AGENT_SANDBOX_HIDE"] = json.dumps([str(self.data)])  # the coordinator's data, all of it
        log = self.spawn(
            "agent",
            [
                *coop[:2],
                "agent.main",
                "join",
                "--coordinator",
                self.url,
                "--state-dir",
                str(self.data / "agent"),
                "--name",
                "this-machine",
                "--node-ip-address",  # its Ray node on loopback too (agent/ray_loopback.py)
                "127.0.0.1",
                *(["--hardware-from", str(self.hardware_from), "--no-calibrate"] if self.hardware_from else []),
            ],
            agent_env,
        )

        node_ids: list[int] = []

        def node_registered() -> bool:
            nodes = httpx.get(self.url + "/v1/nodes", headers=headers).json()
            node_ids[:] = [n["id"] for n in nodes if n["name"] == "this-machine"]
            return bool(node_ids)

        _wait(node_registered, 90, "the agent to register", log)
        # a new node waits for an admin: here the admin admits its own machine, as 'coop admin node approve' does
        output.say(f"approving node {node_ids[0]} (this machine), as an admin does with 'coop admin node approve' ...")
        httpx.post(f"{self.url}/v1/nodes/{node_ids[0]}/approve", headers=headers).raise_for_status()

        def node_up() -> bool:
            node = httpx.get(f"{self.url}/v1/nodes/{node_ids[0]}", headers=headers).json()
            return bool(node["approved"]) and node["state"] == "online"

        _wait(node_up, 90, "the agent to join", log)
        return self.url, admin, researcher

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    output.say(f"{name} did not stop in 60 s; killing it")
                    proc.kill()
        kill_ray_under(self.ray_temp)
        shutil.rmtree(self.ray_temp, ignore_errors=True)


def kill_ray_under(temp_dir: Path) -> None:
    """Kill what is left of one Ray cluster: only the processes that name its own temp dir (never
    ``ray stop``, which kills every Ray of the user on the machine)."""
    mine = str(temp_dir)
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(mine in arg for arg in proc.info["cmdline"] or ()):
                leftovers.append(proc)
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=10)


def _demo(url: str, admin: str, researcher: str) -> int:
    """Submit both examples as the researcher, follow them, then show the table and the ledger."""
    env = {**os.environ, "COOP_URL": url, "COOP_TOKEN": researcher}
    coop = [sys.executable, "-m", "coop.cli.main"]
    for job in ("finetune.yaml", "eval.yaml"):
        output.say(f"\n== coop submit examples/lora/{job} --follow")
        if subprocess.run([*coop, "submit", str(EXAMPLES / job), "--follow"], env=env).returncode != 0:
            return 1
    output.say("\n== coop status")
    subprocess.run([*coop, "status"], env=env)
    finetune = _job_id(url, researcher, "lora-tiny-finetune")
    adapter = Path.cwd() / DEMO_OUTPUTS / "lora-tiny-finetune"
    output.say(f"\n== coop pull {finetune} --to {adapter.relative_to(Path.cwd())}   (the fine-tune's outputs)")
    if subprocess.run([*coop, "pull", str(finetune), "--to", str(adapter)], env=env).returncode != 0:
        return 1
    output.say(f"   the LoRA adapter is in {adapter / 'adapter'}/ (adapter.pt, base.pt, meta.json)")
    admin_env = {**env, "COOP_TOKEN": admin}
    output.say(
        "\n== the ledger, per job: what each job cost the researcher, the donor earned\n"
        f"   (1 credit = 1 hour of 100 measured TFLOP/s; {_rate(url, admin)})"
    )
    for member in ("researcher", "donor"):
        subprocess.run([*coop, "balance", "--member", member, "--by-job"], env=admin_env)
    output.say(_idle_credit(url, admin))
    return 0


def _idle_credit(url: str, admin: str) -> str:
    """The donor's idle credit as the ledger has it, or why there is none: only idle GPUs earn it."""
    headers = {"Authorization": f"Bearer {admin}"}
    rows = httpx.get(url + "/v1/members/donor/ledger/jobs", headers=headers).json()
    amount = sum(r["amount"] for r in rows if r["kind"] == "idle")
    hours = sum(r["gpu_hours"] for r in rows if r["kind"] == "idle")
    (node,) = httpx.get(url + "/v1/nodes", headers=headers).json()
    if amount > 0:
        return (
            f"\n   the donor's idle credit: {output.credits(amount)} credits for {hours * 60:.1f} idle GPU-minutes "
            "(the 'idle donated capacity' row): a GPU on offer and unused earns COOP_IDLE_CREDIT_RATE "
            "(0.25 by default) of the full rate"
        )
    if not node["gpus"]:
        return (
            "\n   the donor's idle credit: none, honestly: only idle GPUs earn it, and this machine donates no GPU. "
            "A CPU-only donor earns when jobs run on it (the 'earned hosting it' rows above)"
        )
    return "\n   the donor's idle credit: none yet: its GPUs were busy or not yet on offer long enough to be credited"


def _job_id(url: str, token: str, name: str) -> int:
    """The researcher's latest job of that name."""
    jobs = httpx.get(url + "/v1/jobs", params={"name": name}, headers={"Authorization": f"Bearer {token}"}).json()
    return int(jobs[0]["id"])


def _rate(url: str, admin: str) -> str:
    """What the donated machine measured, so the small CPU-only amounts make sense."""
    (node,) = httpx.get(url + "/v1/nodes", headers={"Authorization": f"Bearer {admin}"}).json()
    if node["gpus"] and node["tflops_per_gpu"]:
        return f"this machine measured {node['tflops_per_gpu']:.3g} TFLOP/s per GPU, and its idle GPUs earn credit too"
    return f"this CPU-only machine measured {node['cpu_tflops'] or 0:.2g} TFLOP/s"


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def up(
    demo: Annotated[bool, typer.Option("--demo", help="run the LoRA examples, show the ledger, then stop")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="where everything is kept [default: a temporary folder]")
    ] = None,
    no_sandbox: Annotated[
        bool, typer.Option("--no-sandbox", help="run jobs unconfined, as you (only for trying out your own jobs)")
    ] = False,
    hardware_from: Annotated[
        Path | None, typer.Option("--hardware-from", hidden=True, help="offer the GPUs of a saved nvidia-smi output")
    ] = None,
) -> None:
    """Run a whole cooperative on this machine: Ray head, coordinator, and an agent donating it."""
    data = data_dir or Path(tempfile.mkdtemp(prefix="coop-up-"))
    data.mkdir(parents=True, exist_ok=True)
    if no_sandbox:
        output.say("NO SANDBOX: jobs run as you, with your files, processes and this cooperative's tokens in reach.")
    coop = Cooperative(data, sandbox=not no_sandbox, hardware_from=hardware_from)
    code = 0
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the children too, as Ctrl-C does
    try:
        url, admin, researcher = coop.start()
        output.say(
            f"\nCoop is up: {url}/docs   (logs and data in {data})\n"
            f"  dashboard: {url}/ui/#token={researcher}   # opens signed in as the researcher\n"
            f"  export COOP_URL={url} COOP_TOKEN={researcher}   # the researcher\n"
            f"  admin token: {admin}\n"
            f"  try: coop submit {EXAMPLES / 'finetune.yaml'} --follow"
        )
        if demo:
            code = _demo(url, admin, researcher)
        else:
            output.say("Ctrl-C stops everything.")
            while all(proc.poll() is None for _, proc in coop.procs):
                time.sleep(1)
            output.say(f"a component stopped on its own; its log is in {data}")
            code = 1
    except KeyboardInterrupt:
        pass
    finally:
        output.say("\nshutting down: agent, coordinator, Ray head ...")
        coop.stop()
    raise typer.Exit(code)
