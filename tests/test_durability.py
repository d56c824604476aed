"""Nothing acknowledged is lost: SIGKILL the real `coop server` and restart it on the same database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import text
from sqlmodel import Session, col, select

from coop.client import CoopClient
from coop.server.db import make_engine
from coop.server.models import Job, JobEvent
from tests.api.helpers import job_spec, node
from tests.conftest import POSTGRES_URL, free_port, require_service, wait_for

COOP = [sys.executable, "-m", "coop.cli.main"]


@pytest.fixture(params=["sqlite", "postgres"])
def server_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "COOP_DATA_DIR": str(tmp_path / "data"), "COOP_PORT": str(free_port())}
    env.pop("COOP_DATABASE_URL", None)
    if request.param == "postgres":
        require_service(bool(POSTGRES_URL), "COOP_TEST_POSTGRES_URL is not set: PostgreSQL runs skipped")
        assert POSTGRES_URL
        engine = make_engine(POSTGRES_URL)
        with engine.begin() as conn:  # a schema of its own, so the shared test schema is untouched
            conn.execute(text("DROP SCHEMA IF EXISTS durability CASCADE"))
            conn.execute(text("CREATE SCHEMA durability"))
        engine.dispose()
        sep = "&" if "?" in POSTGRES_URL else "?"
        env["COOP_DATABASE_URL"] = f"{POSTGRES_URL}{sep}options=-csearch_path%3Ddurability"
    yield env


def start(env: dict[str, str], log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*COOP, "server", "--workers", str(workers)], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{env['COOP_PORT']}/v1/health"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, interval=0.1, what="coop server to answer")
    return proc


def snapshot(admin: CoopClient) -> dict[str, object]:
    jobs = admin.jobs(limit=1000)
    return {
        "jobs": sorted((j["id"], j["state"]) for j in jobs),
        "events": sorted((j["id"], len(admin.job(j["id"])["events"])) for j in jobs),
        "ledger": admin.balance("lab", history=True)["history"],
        "nodes": [(n["id"], n["name"]) for n in admin.nodes()],
    }


def test_sigkill_loses_nothing_acknowledged(server_env: dict[str, str], tmp_path: Path) -> None:
    boot = subprocess.run(
        [*COOP, "admin", "bootstrap", "--json"], env=server_env, capture_output=True, text=True, check=True
    )
    admin_token = json.loads(boot.stdout)["token"]
    log = tmp_path / "server.log"
    proc = start(server_env, log)
    url = f"http://127.0.0.1:{server_env['COOP_PORT']}"
    admin = CoopClient(url, admin_token)
    lab = CoopClient(url, admin.create_member("lab")["token"])
    agent = CoopClient(url, admin.create_token(kind="agent", member="lab")["token"])
    agent.register_node(node("box"))
    ids = [lab.submit(job_spec(f"job-{i}"))["id"] for i in range(25)]
    for job_id in ids[::5]:
        lab.cancel(job_id)
    for i in range(5):
        admin.grant("lab", i + 1, note=f"grant {i}")
    before = snapshot(admin)
    proc.send_signal(signal.SIGKILL)  # right after the last acknowledgement
    proc.wait(timeout=10)

    proc = start(server_env, log)
    try:
        after = snapshot(admin)
        ledger_before, ledger_after = before.pop("ledger"), after.pop("ledger")
        assert after == before
        # every acknowledged ledger row is still there (the ledger loop may have added idle credit since)
        assert [e for e in ledger_after if e in ledger_before] == ledger_before  # type: ignore[operator,union-attr]
        assert len(after["jobs"]) == 25  # type: ignore[arg-type]
        assert sum(1 for _, s in after["jobs"] if s == "CANCELLED") == 5  # type: ignore[union-attr]
        grants = [e for e in admin.balance("lab", history=True)["history"] if e["kind"] == "grant"]
        assert sum(e["amount"] for e in grants) == 15
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        for c in (admin, lab, agent):
            c.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_under_load_loses_no_acknowledged_submission(
    server_env: dict[str, str], tmp_path: Path, workers: int
) -> None:
    """32 clients submit as fast as they can (group commit: many jobs per transaction) while the server,
    with all its worker processes, is SIGKILLed: every job acknowledged before is there afterwards,
    with its first event."""
    if workers > 1 and "COOP_DATABASE_URL" not in server_env:
        pytest.skip("several workers are for PostgreSQL (SQLite has one writer)")
    boot = subprocess.run(
        [*COOP, "admin", "bootstrap", "--json"], env=server_env, capture_output=True, text=True, check=True
    )
    log = tmp_path / "server.log"
    proc = start(server_env, log, workers)
    url = f"http://127.0.0.1:{server_env['COOP_PORT']}"
    admin = CoopClient(url, json.loads(boot.stdout)["token"])
    token = admin.create_member("lab")["token"]
    acknowledged: list[int] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
            i = 0
            while not stop.is_set():
                try:
                    answer = http.post("/v1/jobs", json={"spec": job_spec(f"c{n}-{i}")})
                except httpx.HTTPError:
                    return  # the server died: this one was never acknowledged
                if answer.status_code != 201:
                    return
                acknowledged.append(answer.json()["id"])
                i += 1

    clients = [threading.Thread(target=client, args=(n,)) for n in range(32)]
    for c in clients:
        c.start()
    wait_for(lambda: len(acknowledged) >= 300, timeout=60, interval=0.01, what="300 acknowledged submissions")
    for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
        os.kill(p.pid, signal.SIGKILL)  # every worker too, mid-load
    proc.wait(timeout=10)
    time.sleep(0.5)
    stop.set()
    for c in clients:
        c.join(timeout=15)
    seen = list(acknowledged)
    engine = make_engine(server_env.get("COOP_DATABASE_URL") or f"sqlite:///{server_env['COOP_DATA_DIR']}/coop.db")
    try:
        with Session(engine) as session:
            stored = set(session.exec(select(Job.id).where(col(Job.id).in_(seen))))
            events = set(session.exec(select(JobEvent.job_id).where(col(JobEvent.job_id).in_(seen))))
    finally:
        engine.dispose()
    assert len(seen) >= 300
    assert set(seen) - stored == set()
    assert set(seen) - events == set()
    proc = start(server_env, log)
    try:
        assert admin.job(seen[-1])["state"] == "PENDING"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        admin.close()
