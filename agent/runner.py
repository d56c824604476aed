"""``coop-agent join``: register, keep a Ray worker alive, heartbeat, and leave cleanly on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from agent import hardware, job_files, ray_node, state
from agent.config import AgentSettings
from agent.identity import Identity, machine_identity
from agent.models import HostReport
from agent.ray_node import RayNodeConfig, RaySupervisor, label_value
from agent.sandbox import Policy, SandboxError, enforcement, make_policy
from coop.client import CoopClient, CoopError, tls_verify
from coop.loop import Loop
from coop.schemas import ForeignProcess, GpuSpec, GpuTelemetry, Heartbeat, NodeRegister
from coop.spec import normalise_gpu_model

CA_HINT = "'coop-agent join --ca-file FILE' or COOP_AGENT_CA_FILE"

log = logging.getLogger("coop.agent")
EXIT_RETIRED = 78  # EX_CONFIG: the node was removed; the unit's RestartPreventExitStatus keeps it stopped


class JoinError(Exception):
    """Something the donor must fix before the agent can join (message says what)."""


def registration(
    report: HostReport,
    name: str,
    saved: state.AgentState,
    network: str | None = None,
    machine: Identity | None = None,
    claim: int | None = None,
) -> NodeRegister:
    """What the agent registers: the machine and, to rejoin as the same node, its ids (``machine``)
    and the node id its state dir kept (``claim``)."""
    return NodeRegister(
        name=name,
        network=network,
        node_id=claim,
        hardware_id=machine.hardware_id if machine else None,
        host_id=machine.host_id if machine else None,
        cpus=report.cpus,
        memory_gb=report.memory_gb,
        disk_gb=report.disk_gb,
        os=report.os[:128],
        python_version=report.python_version,
        ray_version=report.ray_version,
        tflops_per_gpu=saved.tflops_per_gpu if report.gpus else None,
        cpu_tflops=saved.cpu_tflops,
        gpus=[
            GpuSpec(
                index=i,
                uuid=g.uuid,
                name=g.name,
                memory_gb=max(g.memory_gb, 0.001),
                compute_capability=g.compute_capability,
                driver_version=g.driver_version,
                cuda_version=g.cuda_version,
                mig_mode=g.mig_mode,
            )
            for i, g in enumerate(report.gpus)
        ],
    )


def said_rejoin(registered: dict[str, Any], machine: Identity) -> None:
    """The log's line on which node this machine joined as, and why (NodeRegistered.matched_by)."""
    how = {
        "state_dir": "the node id in its state dir",
        "machine": "this machine's id",
        "gpus_changed": "this machine's id and a GPU it had (its GPUs changed)",
        "name": "its name",
        "new": "a new node",
    }.get(str(registered.get("matched_by")), "its name")
    log.info(
        "registered as node %s (%s), found by %s; machine id from %s",
        registered["id"],
        registered["name"],
        how,
        machine.source,
    )
    if registered.get("note"):
        log.warning("%s", registered["note"])


def ray_labels(member: str, node_id: int, report: HostReport) -> dict[str, str]:
    labels = {"coop/member": label_value(member), "coop/node-id": str(node_id)}
    if report.gpus:
        labels["coop/gpu-model"] = label_value(normalise_gpu_model(report.gpus[0].name))
        labels["coop/gpu-mem-gb"] = str(round(min(g.memory_gb for g in report.gpus)))
    return labels


@dataclass
class Agent:
    settings: AgentSettings
    report: HostReport
    client: CoopClient
    node_id: int
    ray: RaySupervisor | None
    retired: str | None = None  # the coordinator's refusal: an admin or the donor removed this node

    def refused(self, exc: CoopError) -> bool:
        """Is this the coordinator saying the node was removed (410)? Then the agent stops: say why and
        what to do, once, at ERROR (journald shows it in red)."""
        if exc.status != 410:
            return False
        if self.retired is None:
            log.error("%s", exc)
            log.error(
                "this agent stops (exit status %d: systemd does not restart it). To offer this machine again: "
                "'coop-agent join' (or 'sudo systemctl restart coop-agent') registers it as a new node, which "
                "an admin approves",
                EXIT_RETIRED,
            )
        self.retired = str(exc)
        return True

    def heartbeat(self) -> Heartbeat:
        """Readings of this instant: GPU telemetry, the pause flag, and GPU processes Coop did not start."""
        telemetry: list[GpuTelemetry] = []
        foreign: list[ForeignProcess] = []
        if self.report.gpus:
            readings, processes = hardware.read_telemetry()
            telemetry = [GpuTelemetry(**t.model_dump()) for t in readings]
            ours = self.ray.pids() if self.ray else set()
            foreign = [
                ForeignProcess(pid=p.pid, name=p.name[:256], gpu_index=p.gpu_index, used_memory_gb=p.used_memory_gb)
                for p in processes
                if p.pid not in ours
            ]
        return Heartbeat(paused=state.is_paused(self.settings.state_dir), gpus=telemetry, foreign_processes=foreign)


class BeatLog:
    """What the heartbeats tell the donor's log: routine beats at DEBUG, changes at INFO (the owner's
    pause or resume, the coordinator's reclaim signal, approval, the node's state as the coordinator
    sees it) and the coordinator going unreachable (WARNING, once) and coming back (INFO)."""

    WATCHED = ("state", "approved", "paused", "coordinator_paused", "reclaim", "reclaim_reason", "draining")

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.seen: dict[str, Any] | None = None
        self.failing: str | None = None
        self.failures = 0
        self._owner_paused: bool | None = None

    def owner(self, paused: bool) -> None:
        if self._owner_paused is not None and paused != self._owner_paused:
            log.info(
                "the owner %s this machine: telling the coordinator",
                "paused (coop-agent pause)" if paused else "resumed (coop-agent resume)",
            )
        self._owner_paused = paused

    def failed(self, exc: Exception, interval: float) -> None:
        self.failures += 1
        if self.failing != str(exc):
            log.warning("heartbeat failed: %s (retrying every %.1f s)", exc, interval)
        else:
            log.debug("heartbeat failed again (%d in a row): %s", self.failures, exc)
        self.failing = str(exc)

    def answered(self, node: dict[str, Any] | None) -> None:
        if self.failing is not None:
            log.info("the coordinator answers again, after %d failed heartbeats", self.failures)
            self.failing, self.failures = None, 0
        if not isinstance(node, dict):
            log.debug("heartbeat sent (node %s)", self.node_id)
            return
        now = {key: node.get(key) for key in self.WATCHED}
        before = self.seen or {"state": "online", "approved": True, "paused": False, "coordinator_paused": False,
                               "reclaim": False, "reclaim_reason": None, "draining": False}  # fmt: skip
        self.seen = now
        for message in _changes(self.node_id, before, now):
            (log.warning if "revoked" in message else log.info)("%s", message)
        log.debug("heartbeat sent (node %s: %s)", self.node_id, ", ".join(f"{k}={v}" for k, v in now.items()))


def _changes(node_id: int, before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per change in what the coordinator says of this node."""
    said = []
    if now["state"] != before["state"]:
        said.append(f"the coordinator sees node {node_id} {now['state']} (was {before['state']})")
    if now["approved"] != before["approved"]:
        said.append(
            f"node {node_id} was approved by an admin"
            if now["approved"]
            else f"an admin revoked node {node_id}'s approval: no new jobs will be placed here"
        )
    if now["coordinator_paused"] != before["coordinator_paused"]:
        said.append(
            f"an admin paused node {node_id} from the coordinator (coop node pause)"
            if now["coordinator_paused"]
            else f"the coordinator's pause of node {node_id} was lifted (coop node resume)"
        )
    if (now["reclaim"], now["reclaim_reason"]) != (before["reclaim"], before["reclaim_reason"]):
        said.append(
            f"the coordinator reclaims node {node_id} ({now['reclaim_reason']}): "
            "no new guest jobs, running ones are stopped and requeued"
            if now["reclaim"]
            else f"node {node_id} is no longer reclaimed: it takes guest jobs again"
        )
    if now["draining"] != before["draining"]:
        said.append(f"node {node_id} is {'draining' if now['draining'] else 'no longer draining'}")
    return said


class HeartbeatLoop(Loop):
    """Sends a heartbeat every interval, and at once when the owner pauses or resumes."""

    name = "heartbeat"

    def __init__(self, agent: Agent) -> None:
        super().__init__()
        self.agent = agent
        self.interval = agent.settings.heartbeat_interval_s
        self.sent = 0
        self._last_paused: bool | None = None
        self.beats = BeatLog(agent.node_id)

    def run_once(self) -> None:
        hb = self.agent.heartbeat()
        self._last_paused = hb.paused
        self.beats.owner(hb.paused)
        try:
            answer = self.agent.client.heartbeat(self.agent.node_id, hb)
            self.sent += 1
        except CoopError as exc:
            state.record_seen(self.agent.settings.state_dir, hb.paused, error=str(exc))
            if self.agent.refused(exc):
                self.stop()
                return
            self.beats.failed(exc, self.interval)
            return
        state.record_seen(self.agent.settings.state_dir, hb.paused, answer)  # for coop-agent pause and status
        self.beats.answered(answer)

    def sleep(self, seconds: float) -> None:
        """Watch the pause flag while waiting, so pause/resume reach the coordinator immediately."""
        waited = 0.0
        while waited < seconds and not self.stopped:
            if state.is_paused(self.agent.settings.state_dir) != self._last_paused:
                return
            super().sleep(min(0.2, seconds - waited))
            waited += 0.2


def await_approval(agent: Agent, req: NodeRegister, stopping: threading.Event | None = None) -> dict[str, Any] | None:
    """Heartbeat (so admins see the node online) until an admin approves the node, then register
    again for the Ray address and token. None when ``stopping`` is set first."""
    stopping = stopping or threading.Event()
    log.warning(
        "node %s awaits approval: ask an admin to run `coop admin node approve %s` "
        "(no Ray worker and no jobs until then; heartbeating every %.1f s)",
        agent.node_id,
        agent.node_id,
        agent.settings.heartbeat_interval_s,
    )
    beats = BeatLog(agent.node_id)
    while not stopping.is_set():
        hb = agent.heartbeat()
        try:
            answer = agent.client.heartbeat(agent.node_id, hb)
            state.record_seen(agent.settings.state_dir, hb.paused, answer)
            if beats.failing is not None:
                log.info("the coordinator answers again, after %d failed heartbeats", beats.failures)
            beats.failing, beats.failures = None, 0
            log.debug("heartbeat sent (node %s awaits approval)", agent.node_id)
            if answer.get("approved"):
                registered: dict[str, Any] = agent.client.register_node(req)
                if registered.get("approved"):
                    log.info("node %s was approved: joining the Ray cluster", agent.node_id)
                    return registered
        except CoopError as exc:
            state.record_seen(agent.settings.state_dir, hb.paused, error=str(exc))
            if agent.refused(exc):
                return None
            beats.failed(exc, agent.settings.heartbeat_interval_s)
        stopping.wait(agent.settings.heartbeat_interval_s)
    return None


def node_sandbox(settings: AgentSettings) -> Policy:
    """The sandbox every guest on this node runs in (agent/sandbox.py); its guests' files live in
    the state dir's guest/ folder, the only part of it they see."""
    try:
        policy = make_policy(
            settings.sandbox, settings.state_dir / "guest", hide=[str(settings.state_dir), *settings.sandbox_hide]
        )
    except (SandboxError, OSError, subprocess.CalledProcessError) as exc:
        raise JoinError(f"cannot set up the guest sandbox: {exc}") from None
    for item in enforcement(policy):
        (log.info if item.enforced else log.warning)(
            "sandbox: %s %s (%s)", item.what, "enforced" if item.enforced else "NOT enforced", item.how
        )
    return policy


def join(
    settings: AgentSettings, report: HostReport, calibrate: bool = True, stopping: threading.Event | None = None
) -> Agent:
    """Register with the coordinator (the same node on a rejoin), wait for an admin's approval if the
    node has none yet, and start the Ray worker. ``stopping`` set (SIGTERM, SIGINT): the agent returns
    without a Ray worker, for the caller to leave."""
    saved = state.load(settings.state_dir)
    coordinator = settings.coordinator or saved.coordinator
    token = settings.token or saved.token
    # a CA given once (--ca-file, COOP_AGENT_CA_FILE) is remembered with the coordinator it is for
    ca_file = str(settings.ca_file.expanduser().resolve()) if settings.ca_file else None
    if ca_file is None and coordinator == saved.coordinator:
        ca_file = saved.ca_file
    if not coordinator or not token:
        raise JoinError(
            "no coordinator or token: run 'coop-agent join --coordinator URL --token-file FILE' "
            "(ask your cooperative's admin for an agent token)"
        )
    if calibrate and saved.tflops_per_gpu is None and saved.cpu_tflops is None:
        from agent.calibrate import calibrate as run_calibration

        result = run_calibration(max_seconds=settings.calibrate_seconds)
        if result.device.startswith("cuda") and result.tflops:
            saved.tflops_per_gpu = round(sum(result.tflops) / len(result.tflops), 2)
        else:
            saved.cpu_tflops = round(result.tflops[0], 4) if result.tflops else None
    try:
        verify = tls_verify(ca_file, "--ca-file / COOP_AGENT_CA_FILE")
    except CoopError as exc:
        raise JoinError(str(exc)) from None
    client = CoopClient(coordinator, token, verify=verify, ca_hint=CA_HINT)
    try:
        me = client.me()
        if me["kind"] != "agent":
            raise JoinError(
                "this is a user token; the agent needs an agent token "
                "('coop admin token create --agent' or 'coop token create --agent')"
            )
        machine = machine_identity(report.gpus, settings.machine_id)
        claim = saved.node_id if saved.coordinator in (None, coordinator) else None  # another coordinator's: none
        req = registration(report, settings.node_name, saved, settings.network, machine, claim)
        registered = client.register_node(req)
    except CoopError as exc:
        client.close()
        raise JoinError(str(exc)) from None
    node_id = int(registered["id"])
    said_rejoin(registered, machine)
    req = req.model_copy(update={"node_id": node_id})  # registering again once approved: this node
    saved = saved.model_copy(
        update={
            "coordinator": coordinator,
            "token": token,
            "ca_file": ca_file,
            "node_id": node_id,
            "node_name": settings.node_name,
        }
    )
    state.save(settings.state_dir, saved)
    settings.heartbeat_interval_s = min(settings.heartbeat_interval_s, float(registered["heartbeat_interval_s"]))
    agent = Agent(settings, report, client, node_id, None)
    if not registered.get("approved", True):  # a coordinator from before approval gives no such field
        approved = await_approval(agent, req, stopping)
        if approved is None:
            return agent
        registered = approved
    if stopping is not None and stopping.is_set():
        return agent
    address = settings.ray_address or registered.get("ray_address")
    ray = None
    if address:
        # jobs' "python" is the agent's own interpreter (with whatever it has installed, e.g. torch)
        env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "COOP_PYTHON": sys.executable,  # runs each job's sandbox (coop.server.backends.ray.GUEST_ENTRYPOINT)
            "COOP_SERVER_URL": coordinator,  # where each job's wrapper sends its outputs and checkpoints
        }
        if ca_file:  # the CA itself, not its path: the sandbox shows the wrapper neither /etc/coop-agent nor homes
            env[job_files.SERVER_CA_ENV] = Path(ca_file).read_text()
        if registered.get("ray_auth_token"):
            env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": registered["ray_auth_token"]}
        config = RayNodeConfig(
            ray_bin=settings.ray_bin,
            address=address,
            node_id=node_id,
            num_gpus=len(report.gpus),
            num_cpus=report.cpus,
            labels=ray_labels(me["member"], node_id, report),
            node_ip_address=settings.node_ip_address,
            temp_dir=settings.ray_temp_dir,
            env=env,
            dashboard_agent_port=settings.ray_agent_port,
            sandbox=node_sandbox(settings),
        )
        ray = RaySupervisor(
            config,
            settings.restart_backoff_max_s,
            log_file=settings.state_dir / "ray.log",
            record=settings.state_dir / ray_node.RECORD,
        )
        ray.start()
    else:
        log.warning(
            "the coordinator names no Ray head (COOP_RAY_ADDRESS) and none was given: "
            "heartbeating only, no jobs will run here"
        )
    agent.ray = ray
    return agent


def leave(agent: Agent) -> None:
    if agent.ray is not None:
        agent.ray.stop()
    if agent.retired is not None:  # nothing to tell the coordinator; the next join registers anew
        agent.client.close()
        saved = state.load(agent.settings.state_dir)
        if saved.node_id == agent.node_id:
            state.save(agent.settings.state_dir, saved.model_copy(update={"node_id": None}))
        return
    try:
        agent.client.leave(agent.node_id)
    except CoopError as exc:
        log.warning("could not tell the coordinator this node is leaving: %s", exc)
    agent.client.close()


def run_forever(settings: AgentSettings, report: HostReport | None = None, calibrate: bool = True) -> int:
    """The service's main: join (waiting for an admin's approval if need be), heartbeat until
    SIGTERM/SIGINT, then leave cleanly. A signal while the node awaits approval leaves at once."""
    report = report or hardware.detect(settings.state_dir)
    stopping = threading.Event()
    loops: list[HeartbeatLoop] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: leaving the cooperative", signal.Signals(signum).name)
        stopping.set()
        for running in loops:
            running.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    me = psutil.Process()
    state.record_running(settings.state_dir, me.pid, me.create_time())  # coop-agent pause finds it
    left = ray_node.stop_leftovers(settings.state_dir / ray_node.RECORD)
    if left:
        log.warning("stopped the Ray worker a previous agent left running (killed?): %d processes", len(left))
    try:
        agent = join(settings, report, calibrate=calibrate, stopping=stopping)
        loop = HeartbeatLoop(agent)
        loops.append(loop)
        if stopping.is_set() or agent.retired:  # before or while awaiting approval (a signal after the
            leave(agent)  # append stops the loop), or the node was removed while it awaited approval
            return EXIT_RETIRED if agent.retired else 0
        log.info(
            "joined as node %s (%s, %d GPUs); heartbeat every %.1f s",
            agent.node_id,
            settings.node_name,
            len(agent.report.gpus),
            loop.interval,
        )
        loop.run()
        leave(agent)
        return EXIT_RETIRED if agent.retired else 0
    finally:
        state.clear_running(settings.state_dir, me.pid)
