"""Resident memory and CPU share of a heartbeating `coop-agent join` (Ray's own processes excluded).

Starts a real coordinator and, unless --no-ray, a real Ray head the agent's worker joins; then
samples the agent process for --seconds. Prints figures; target: under 80 MB and under 1% of a core.

    python bench/agent_footprint.py [--seconds 30] [--interval 5] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent.ray_head import ray_head  # noqa: E402
from tests.conftest import free_port  # noqa: E402

H100 = ROOT / "tests/data/hardware/h100-sxm/query-gpu-idle.csv"
COOP = [sys.executable, "-m", "coop.cli.main"]


def wait(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def measure(args: argparse.Namespace, ray_address: str | None, ray_token: str | None, ray_temp: Path | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="coop-footprint-"))
    port = free_port()
    env = {
        **os.environ,
        "COOP_DATA_DIR": str(tmp / "data"),
        "COOP_PORT": str(port),
        "COOP_HEARTBEAT_INTERVAL_S": str(args.interval),
    }
    if ray_address:
        env.update(COOP_RAY_ADDRESS=ray_address, COOP_RAY_AUTH_TOKEN=ray_token or "")
    admin = json.loads(
        subprocess.run(
            [*COOP, "admin", "bootstrap", "--json"], env=env, check=True, capture_output=True, text=True
        ).stdout
    )["token"]
    server = subprocess.Popen([*COOP, "server"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: httpx.get(url + "/v1/health").status_code == 200, 30, "the coordinator")
        headers = {"Authorization": f"Bearer {admin}"}
        httpx.post(url + "/v1/members", json={"name": "donor"}, headers=headers).raise_for_status()
        token = httpx.post(url + "/v1/tokens", json={"kind": "agent", "member": "donor"}, headers=headers).json()[
            "token"
        ]
        agent_env = {**os.environ, "COOP_AGENT_HEARTBEAT_INTERVAL_S": str(args.interval)}
        if ray_temp:
            agent_env["COOP_AGENT_RAY_TEMP_DIR"] = str(ray_temp)
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.main",
                "join",
                "--coordinator",
                url,
                "--token",
                token,
                "--state-dir",
                str(tmp / "agent"),
                "--hardware-from",
                str(H100),
                "--no-calibrate",
            ],
            env=agent_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nodes = lambda: httpx.get(url + "/v1/nodes", headers=headers).json()  # noqa: E731
        wait(lambda: nodes() and nodes()[0]["last_heartbeat_at"], 60, "the agent to register")
        # approved, the agent registers again at its next heartbeat and starts its Ray worker
        httpx.post(f"{url}/v1/nodes/{nodes()[0]['id']}/approve", headers=headers).raise_for_status()
        time.sleep(args.interval * 2)  # let start-up settle before sampling
        proc = psutil.Process(agent.pid)
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        rss_peak = 0
        while time.monotonic() - t0 < args.seconds:
            rss_peak = max(rss_peak, proc.memory_info().rss)
            time.sleep(0.5)
        cpu1, t1 = proc.cpu_times(), time.monotonic()
        busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        ray_children = [c for c in proc.children(recursive=True)]
        ray_rss = sum(c.memory_info().rss for c in ray_children if c.is_running())
        print(f"agent pid {agent.pid}: heartbeat every {args.interval:g} s, sampled {t1 - t0:.0f} s")
        print(
            f"  resident memory (agent only): {proc.memory_info().rss / 2**20:.1f} MiB now, "
            f"{rss_peak / 2**20:.1f} MiB peak   (target < 80 MB)"
        )
        print(f"  CPU share: {busy / (t1 - t0) * 100:.2f}% of one core   (target < 1%)")
        print(f"  excluded: {len(ray_children)} Ray processes, {ray_rss / 2**20:.0f} MiB")
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=5, help="heartbeat interval, seconds")
    parser.add_argument("--no-ray", action="store_true", help="heartbeat only, no Ray worker")
    args = parser.parse_args()
    if args.no_ray:
        measure(args, None, None, None)
        return
    with ray_head() as head:
        measure(args, head.address, head.token, head.temp_dir)


if __name__ == "__main__":
    main()
