"""Guests cannot reach a donor's or the coordinator's secrets: a real ``coop up`` (Ray head with token
auth, coordinator, agent, all sandboxed as by default), a guest job that tries what an attacker's
would, and someone holding the Ray token who aims a Ray task at the head.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from coop.client import CoopClient
from tests.conftest import require_sandbox, wait_for, wait_job_state
from tests.e2e.conftest import stop_coop_up

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
PROBE = Path(__file__).parent.parent / "data" / "jobs" / "sandbox_probe"
CANARY = "coop-canary: a guest must never read this"
H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"  # one (fake) GPU


@dataclass
class Up:
    url: str
    admin: str
    researcher: str
    data: Path
    home: Path
    proc: subprocess.Popen[str]

    def coordinator_env(self) -> dict[str, str]:
        """What an attacker who stole the Ray token would know (read here from the coordinator)."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "server" in child.cmdline() and "coop.cli.main" in " ".join(child.cmdline()):
                    return child.environ()
        raise AssertionError("no coordinator process under coop up")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    require_sandbox()
    root = tmp_path_factory.mktemp("sandbox")
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(CANARY)
    etc = Path("/etc/coop-agent")  # where an installed agent keeps its token (agent/service.py)
    planted = os.geteuid() == 0 and not etc.exists()
    if planted:
        etc.mkdir(mode=0o750)
        (etc / "agent.env").write_text(CANARY)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "COOP_"))}
    env |= {"HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "coop.cli.main", "up", "--data-dir", str(root / "up"), "--hardware-from", str(H100_CSV)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(proc.stdout or []), daemon=True).start()
    try:
        text = lambda: "".join(seen)  # noqa: E731
        found = wait_for(lambda: re.search(r"export COOP_URL=(\S+) COOP_TOKEN=(\S+)", text()), 240, 0.2, "coop up")
        admin = re.search(r"admin token: (\S+)", text())
        assert admin, text()
        for secret in (root / "up" / "agent" / "canary", root / "up" / "coordinator" / "canary"):
            secret.write_text(CANARY)
        yield Up(found.group(1), admin.group(1), found.group(2), root / "up", home, proc)
    finally:
        stop_coop_up(proc)
        if planted:
            shutil.rmtree(etc, ignore_errors=True)


def _pack(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buf.getvalue()


def _all_logs(client: CoopClient, job_id: int) -> str:
    text, offset = "", 0
    while True:
        chunk = client.logs(job_id, offset=offset)
        text += chunk["data"]
        if not chunk["data"] or chunk["next_offset"] == offset:
            return text
        offset = chunk["next_offset"]


def _probe(text: str) -> dict[str, Any]:
    line = next((line for line in text.splitlines() if line.startswith("PROBE ")), None)
    assert line, f"the probe printed nothing:\n{text[-3000:]}"
    return json.loads(line.removeprefix("PROBE "))  # type: ignore[no-any-return]


def _tokens(up: Up) -> list[str]:
    agent_state = json.loads((up.data / "agent" / "state.json").read_text())
    ray_token = up.coordinator_env()["COOP_RAY_AUTH_TOKEN"]
    return [up.admin, up.researcher, agent_state["token"], ray_token]


def test_a_guest_job_finds_every_secret_shut_and_its_own_dirs_open(up: Up) -> None:
    import hashlib

    researcher = CoopClient(up.url, up.researcher)
    data = _pack(PROBE)
    sha = hashlib.sha256(data).hexdigest()
    researcher.upload_workdir(sha, data)
    targets = {
        "read": [
            str(up.data / "agent"),  # the agent's state: its token
            str(up.data / "coordinator"),  # the coordinator's database and workdirs
            str(up.data / "coordinator" / "coop.db"),
            str(up.home / ".ssh"),  # the donor's home
            "/etc/coop-agent",
        ],
        "write": [str(up.home), str(up.data), "/etc", "/usr/local"],
    }
    job = researcher.submit(
        {
            "name": "probe",
            "run": "python probe.py",
            "resources": {"gpus": 1, "cpus": 1, "memory": "512MB"},
            "env": {"PROBE_TARGETS": json.dumps(targets)},
        },
        workdir_sha256=sha,
    )
    done = wait_job_state(CoopClient(up.url, up.admin), job["id"], "SUCCEEDED", timeout=180)
    logs = wait_for(lambda: _all_logs(researcher, job["id"]), 30, 0.2, "the probe's output")
    assert done["state"] == "SUCCEEDED", logs
    found = _probe(logs)
    assert CANARY not in json.dumps(found["read"]), found["read"]
    # what the guest wrote there (if anything) went to its private /tmp or nowhere: never to the host's
    assert found["write"]["/etc"] != "open" and found["write"]["/usr/local"] != "open", found["write"]
    for folder in targets["write"]:
        assert not (Path(folder) / "coop-probe").exists(), f"a guest wrote into {folder}"
    assert found["own"] == {"COOP_SCRATCH_DIR": "open", "COOP_CHECKPOINT_DIR": "open", "TMPDIR": "open"}
    assert found["uid"] != 0, "guests must not run as root"
    assert not [k for k in found["env"] if "TOKEN" in k or k.startswith("RAY_")], sorted(found["env"])
    assert found["env"]["CUDA_VISIBLE_DEVICES"] == "0"  # the one GPU Ray gave it
    # its own sandbox's init (bubblewrap) and its own shell at most: none of Ray's, the agent's or anyone's
    others = [
        p["cmdline"]
        for p in found["processes"].values()
        if not p.get("cmdline", "").startswith(("/usr/bin/bwrap", "env --default-signal", "/bin/sh -c python probe.py"))
    ]
    assert not others, others
    for token in _tokens(up):
        assert token not in logs, "a token reached the guest's output"


def test_a_job_that_outgrows_its_memory_is_stopped_by_the_kernel(up: Up) -> None:
    researcher = CoopClient(up.url, up.researcher)
    grow = """python -c 'x = bytearray(900 * 2**20); print("allocated", len(x))'"""
    limits = {"cpus": 1, "memory": "300MB"}
    small = researcher.submit({"name": "fits", "run": grow.replace("900", "100"), "resources": limits})
    big = researcher.submit({"name": "outgrows", "run": grow, "resources": limits})
    admin = CoopClient(up.url, up.admin)
    wait_job_state(admin, small["id"], "SUCCEEDED", timeout=180)
    failed = wait_for(lambda: (j := admin.job(big["id"]))["state"] in ("FAILED", "SUCCEEDED") and j, 180, 0.5, "big")
    assert failed["state"] == "FAILED", researcher.logs(big["id"])["data"]
    assert "allocated" not in researcher.logs(big["id"])["data"]


def test_a_ray_task_aimed_at_the_head_cannot_read_the_coordinators_data(up: Up) -> None:
    """Someone holding the Ray token submits to Ray directly (no Coop, no inner sandbox), and their
    driver places a zero-CPU task on the head: both still run in the head's sandbox."""
    env = up.coordinator_env()
    secret = up.data / "coordinator" / "coop.db"
    assert secret.is_file()
    script = f"""
import json, os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
def tries():
    out = {{}}
    try:
        out["coop.db"] = open({str(secret)!r}, "rb").read(16).decode(errors="replace")
    except OSError as exc:
        out["coop.db"] = type(exc).__name__
    for name, path in (("data", {str(up.data)!r}), ("home", {str(up.home)!r})):
        try:
            out[name] = sorted(os.listdir(path))
        except OSError as exc:
            out[name] = type(exc).__name__
    return out
ray.init()
head = next(n["NodeID"] for n in ray.nodes()
            if n["Alive"] and not any(k.startswith("coop_node_") for k in n["Resources"]))
task = ray.remote(num_cpus=0)(tries).options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
print("DRIVER " + json.dumps(tries()))
print("TASK " + json.dumps(ray.get(task.remote())))
"""
    # the attacker's own process: Ray reads its token once per process, and this one has the session's
    submitter = f"""
import sys, time
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient({env["COOP_RAY_DASHBOARD_URL"]!r})
ref = client.submit_job(entrypoint=sys.argv[1], entrypoint_num_cpus=0)
deadline = time.monotonic() + 120
while not client.get_job_status(ref).is_terminal() and time.monotonic() < deadline:
    time.sleep(0.5)
print("STATUS", client.get_job_status(ref))
print(client.get_job_logs(ref))
"""
    attacker = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": env["COOP_RAY_AUTH_TOKEN"]}
    done = subprocess.run(
        [sys.executable, "-c", submitter, f"{sys.executable} -c {shlex.quote(script)}"],
        env=attacker, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    logs = done.stdout
    assert "STATUS SUCCEEDED" in logs, logs + done.stderr[-3000:]
    for prefix in ("DRIVER ", "TASK "):
        line = next((x for x in logs.splitlines() if x.startswith(prefix)), None)
        assert line, logs
        seen = json.loads(line.removeprefix(prefix))
        assert not seen["coop.db"].startswith("SQLite"), line  # the coordinator's database
        assert not {"coordinator", "agent", "coordinator.log"} & set(seen["data"]), line  # only mount points
        assert ".ssh" not in seen["home"], line


def test_no_token_in_any_command_line(up: Up) -> None:
    tokens = _tokens(up)
    for proc in psutil.process_iter(["cmdline"]):
        argv = " ".join(proc.info["cmdline"] or [])
        assert not [t for t in tokens if t in argv], f"a token is visible in ps: pid {proc.pid}"


def _ray_temp_dir(up: Up) -> str:
    """The Ray head's --temp-dir under ``coop up``: a second agent on this machine joins with the same."""
    for child in psutil.Process(up.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            for arg in child.cmdline():
                if arg.startswith("--temp-dir="):
                    return arg.removeprefix("--temp-dir=")
    raise AssertionError("no Ray process with --temp-dir under coop up")


def test_a_gang_runs_each_rank_in_the_sandbox_of_its_own_machines_agent(up: Up, tmp_path: Path) -> None:
    """A second real agent, with a state directory of its own, joins the cluster; a 2-node gang runs one
    rank under each agent, each in that agent's sandbox (neither rank can read either agent's token),
    and the ranks still meet on the cluster network (a torch gloo all-reduce)."""
    import hashlib

    admin = CoopClient(up.url, up.admin)
    admin.create_member("donor-2")
    state = tmp_path / "agent-2"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "COOP_"))}
    env |= {
        "HOME": str(up.home),
        "COOP_AGENT_TOKEN": admin.create_token(kind="agent", member="donor-2")["token"],
        "COOP_AGENT_RAY_TEMP_DIR": _ray_temp_dir(up),
        "COOP_AGENT_SANDBOX_HIDE": json.dumps([str(up.data)]),
    }
    log = tmp_path / "agent-2.log"
    cmd = [sys.executable, "-m", "agent.main", "join", "--coordinator", up.url, "--state-dir", str(state),
           "--name", "second-machine", "--hardware-from", str(H100_CSV), "--no-calibrate"]  # fmt: skip
    agent = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:

        def registered() -> int | None:
            return next((n["id"] for n in admin.nodes() if n["name"] == "second-machine"), None)

        node_id = wait_for(registered, 60, 0.2, "the second agent to register")
        admin.approve_node(node_id)

        def joined() -> bool:
            node = next(n for n in admin.nodes() if n["id"] == node_id)
            return node["state"] == "online" and (state / "ray.log").exists()

        wait_for(joined, 90, 0.5, "the second agent's Ray worker")
        researcher = CoopClient(up.url, up.researcher)
        data = _pack(Path(__file__).parent.parent / "data" / "jobs" / "gang")
        sha = hashlib.sha256(data).hexdigest()
        researcher.upload_workdir(sha, data)
        secrets = [state / "state.json", up.data / "agent" / "state.json"]
        shut = " && ".join(f"test ! -r {shlex.quote(str(path))}" for path in secrets)
        job = researcher.submit(
            {
                "name": "sandboxed-gang",
                "run": f"{shut} && python allreduce.py",
                "resources": {"gpus": 1, "cpus": 1, "nodes": 2},
            },
            workdir_sha256=sha,
        )
        done = wait_job_state(admin, job["id"], "SUCCEEDED", "FAILED", timeout=240)
        logs = [researcher.logs(job["id"], rank=rank)["data"] for rank in (0, 1)]
        assert done["state"] == "SUCCEEDED", logs
        assert len({n for n, _ in done["attempts_detail"][0]["gang"]}) == 2  # one rank on each machine
        for rank, text in enumerate(logs):
            assert f"rank {rank}: sum 3" in text, text
            assert "runs unsandboxed" not in text, text
            for token in _tokens(up):
                assert token not in text
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.kill()


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_no_ray_port_listens_beyond_loopback(up: Up) -> None:
    """`coop up` says Ray is on loopback: every port its Ray processes listen on (head and agent
    node: GCS, raylets, object managers, dashboard and its agents, Ray Client, workers) is."""
    family = {up.proc.pid, *(p.pid for p in psutil.Process(up.proc.pid).children(recursive=True))}
    names = {}
    for pid in family:
        with contextlib.suppress(psutil.Error):
            names[pid] = psutil.Process(pid).name()
    listening = [
        (c.laddr.ip, c.laddr.port, names.get(c.pid, "?"))
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.pid in family
    ]
    assert {"gcs_server", "raylet"} <= {name for _, _, name in listening}, listening
    beyond = [ln for ln in listening if not _loopback(ln[0])]
    assert beyond == [], f"listening beyond loopback: {beyond}"
