"""A killed agent (SIGKILL, the OOM killer) takes its Ray worker with it, and an agent started on
the same state dir stops whatever Ray worker a previous one left behind. Real agents, a real Ray head."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from agent import ray_node
from tests.agent.ray_head import RayHead, ray_head
from tests.conftest import Coordinator, require_sandbox, wait_for

H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"
# "no more than a heartbeat or two" (the service's interval is 5 s): measured well under 2 s
GONE_WITHIN_S = 10.0

pytestmark = [pytest.mark.ray, pytest.mark.parametrize("coordinator_server", ["sqlite"], indirect=True)]


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    with ray_head() as h:
        yield h


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


class Agents:
    """Real ``coop-agent join`` processes of one member on one state dir."""

    def __init__(self, coordinator: Coordinator, head: RayHead, tmp_path: Path, sandbox: bool) -> None:
        coordinator.new_member("kim")
        self.coordinator, self.head, self.tmp, self.sandbox = coordinator, head, tmp_path, sandbox
        self.token = coordinator.admin.create_token(kind="agent", member="kim")["token"]
        self.state_dir = tmp_path / "state"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, log: str) -> tuple[subprocess.Popen[bytes], Path]:
        env = {**os.environ, "COOP_AGENT_TOKEN": self.token, "COOP_AGENT_HEARTBEAT_INTERVAL_S": "0.3",
               "COOP_AGENT_RAY_TEMP_DIR": str(self.head.temp_dir)}  # fmt: skip
        cmd = [sys.executable, "-m", "agent.main", "join", "--coordinator", self.coordinator.url, "--name", "box",
               "--state-dir", str(self.state_dir), "--hardware-from", str(H100_CSV), "--no-calibrate",
               *([] if self.sandbox else ["--no-sandbox"])]  # fmt: skip
        path = self.tmp / log
        proc = subprocess.Popen(cmd, env=env, stdout=path.open("wb"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, path

    def ray_node(self, node_id: int, other_than: str | None = None) -> str:
        nodes = wait_for(
            lambda: [n for n in self.head.nodes_with(f"coop_node_{node_id}") if n["NodeID"] != other_than],
            timeout=90,
            what="the agent's Ray node",
        )
        return str(nodes[0]["NodeID"])

    def ray_family(self, proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
        """The agent's Ray processes, once raylet runs among them."""

        def family() -> list[psutil.Process] | None:
            found = psutil.Process(proc.pid).children(recursive=True)
            return found if any("raylet" in p.name() for p in found) else None

        return wait_for(family, timeout=60, what="raylet under the agent")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        ray_node.stop_leftovers(self.state_dir / ray_node.RECORD, timeout=5)


@contextmanager
def _agents(coordinator: Coordinator, head: RayHead, tmp_path: Path, sandbox: bool) -> Iterator[Agents]:
    if sandbox:
        require_sandbox()
    a = Agents(coordinator, head, tmp_path, sandbox=sandbox)
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def on_head(coordinator: Coordinator, head: RayHead, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator.settings, "ray_address", head.address)
    monkeypatch.setattr(coordinator.settings, "ray_auth_token", head.token)


@pytest.fixture(params=[False, True], ids=["no-sandbox", "sandbox"])
def agents(request: pytest.FixtureRequest, coordinator: Coordinator, head: RayHead, tmp_path: Path,
           on_head: None) -> Iterator[Agents]:  # fmt: skip
    with _agents(coordinator, head, tmp_path, sandbox=request.param) as a:
        yield a


@pytest.fixture
def unsandboxed(coordinator: Coordinator, head: RayHead, tmp_path: Path, on_head: None) -> Iterator[Agents]:
    """The sandbox's PID namespace ends with the agent whatever its processes do; without it,
    everything hangs on ``ray start`` acting on its signal."""
    with _agents(coordinator, head, tmp_path, sandbox=False) as a:
        yield a


def test_a_sigkilled_agents_ray_worker_goes_with_it(agents: Agents, capsys: pytest.CaptureFixture[str]) -> None:
    proc, _ = agents.start("agent.log")
    node_id = int(wait_for(lambda: agents.coordinator.admin.nodes(), timeout=30, what="registration")[0]["id"])
    agents.coordinator.admin.approve_node(node_id)
    ray_id = agents.ray_node(node_id)
    family = agents.ray_family(proc)
    recorded = json.loads((agents.state_dir / ray_node.RECORD).read_text())
    assert {p["pid"] for p in recorded["processes"]} & {p.pid for p in family}  # kept for the next agent

    killed = time.monotonic()
    proc.kill()
    wait_for(lambda: not _alive(family), timeout=GONE_WITHIN_S, interval=0.05, what="the Ray processes to go")
    took = time.monotonic() - killed
    with capsys.disabled():
        print(f"\n{'sandboxed' if agents.sandbox else 'unsandboxed'}: Ray gone {took:.2f} s after SIGKILL")
    # the head notices the node's end by its own health checks (Ray's default: about 15-20 s)
    wait_for(lambda: all(n["NodeID"] != ray_id for n in agents.head.nodes()), timeout=90, what="the head to drop it")


def test_a_restarted_agent_stops_the_ray_worker_a_killed_one_left(unsandboxed: Agents) -> None:
    """The worst case: the killed agent's ``ray start`` cannot act on its parent-death signal (here it
    is stopped, SIGSTOP, as a hung process would be), so its raylet lives on. The next agent on the
    same state dir finds it from the record and stops it before starting its own."""
    first, _ = unsandboxed.start("first.log")
    node_id = int(wait_for(lambda: unsandboxed.coordinator.admin.nodes(), timeout=30, what="registration")[0]["id"])
    unsandboxed.coordinator.admin.approve_node(node_id)
    old_ray = unsandboxed.ray_node(node_id)
    family = unsandboxed.ray_family(first)
    wait_for(  # the record holds raylet too (refreshed every 2 s)
        lambda: "raylet" in (unsandboxed.state_dir / ray_node.RECORD).read_text(), timeout=10, what="raylet recorded"
    )
    for p in family:
        if "start" in p.cmdline():
            p.suspend()
    # a bystander with the pid of a recorded process would be left alone (start time and name differ);
    # and a process of another Ray on this machine is never in the record
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record = json.loads((unsandboxed.state_dir / ray_node.RECORD).read_text())
    record["processes"].append({"pid": bystander.pid, "created": 0.0, "name": "raylet"})
    (unsandboxed.state_dir / ray_node.RECORD).write_text(json.dumps(record))
    try:
        first.kill()
        first.wait()
        # Ray outlived its agent (its processes are as the killed agent left them, only re-parented)
        assert any("raylet" in p.name() for p in _alive(family))

        second, log = unsandboxed.start("second.log")
        wait_for(lambda: not _alive(family), timeout=GONE_WITHIN_S + 15, what="the left-behind Ray to be stopped")
        wait_for(lambda: "stopped the Ray worker a previous agent left" in log.read_text(), timeout=10, what="its word")
        unsandboxed.ray_node(node_id, other_than=old_ray)  # and it joined Ray with its own worker
        assert bystander.poll() is None  # untouched
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, log.read_text()
        assert not (unsandboxed.state_dir / ray_node.RECORD).exists()  # a clean stop leaves nothing to clean up
    finally:
        bystander.kill()
        bystander.wait()
