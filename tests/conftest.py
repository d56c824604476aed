"""Shared fixtures: a real coordinator over HTTP (uvicorn on loopback) on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from sqlalchemy import make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel

from coop.client import CoopClient
from coop.schemas import NodeRegister
from coop.server.app import create_app
from coop.server.config import Settings
from coop.server.db import make_engine
from coop.server.services import accounts

T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() == "true"
# One Ray token for the whole session, set before anything imports Ray (it reads its auth mode once):
# every test cluster runs with token authentication, as production must.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
# Ray nodes started by tests (not by an agent) run jobs with this interpreter, as an agent's do with its own
os.environ.setdefault("COOP_PYTHON", sys.executable)
POSTGRES_URL = os.environ.get("COOP_TEST_POSTGRES_URL")


SESSION_RAY_AUTH = {k: os.environ[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}


@pytest.fixture(autouse=True)
def _keep_the_session_ray_token() -> Iterator[None]:
    """Ray caches its token in-process when first used: a test that leaves another token in the
    environment makes every later test cluster refuse this process. Name that test and restore it."""
    yield
    changed = {k for k, v in SESSION_RAY_AUTH.items() if os.environ.get(k) != v}
    os.environ.update(SESSION_RAY_AUTH)
    assert not changed, f"this test left {sorted(changed)} changed in os.environ (use monkeypatch.setenv)"


def require_service(available: bool, reason: str) -> None:
    """Skip when a system service is missing; under CI a missing service is a failure."""
    if not available:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: skips count as failures)")
        pytest.skip(reason)


def require_sandbox() -> None:
    """Agents and ``coop up`` sandbox their guests with bubblewrap unless told not to."""
    require_service(shutil.which("bwrap") is not None, "bubblewrap is not installed (scripts/services/sandbox.sh up)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def charged(job: dict[str, Any], history: list[dict[str, Any]]) -> bool:
    """Whether ``history`` (a paying member's ledger) holds the slice ending each finished attempt of
    ``job``: the ledger accrues on its own clock, so a finished job's last slice lands a little later."""
    ends = {datetime.fromisoformat(e["at"]) for e in history if e["job_id"] == job["id"]}
    return all(datetime.fromisoformat(a["finished_at"]) in ends for a in job["attempts_detail"] if a["finished_at"])


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Run an ASGI app under uvicorn on a free loopback port, in a thread; returns (server, thread, url)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20, what="uvicorn to start")
    return server, thread, f"http://127.0.0.1:{port}"


def reset_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def own_postgres(name: str) -> str:
    """A database of its own on the test PostgreSQL server (the shared one belongs to the session's
    coordinator, whose loops would act on a test's jobs), created if need be and emptied."""
    require_service(bool(POSTGRES_URL), "COOP_TEST_POSTGRES_URL is not set: PostgreSQL runs skipped")
    assert POSTGRES_URL
    server = make_engine(POSTGRES_URL)
    with server.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    server.dispose()
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    reset_postgres(url)
    return url


TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def wait_job_state(admin: CoopClient, job_id: int, *states: str, timeout: float = 60) -> dict[str, Any]:
    """Poll a job until it reaches one of ``states``; fail at once if it ends in another."""

    def reached() -> dict[str, Any] | None:
        job = admin.job(job_id)
        if job["state"] in TERMINAL and job["state"] not in states:
            raise AssertionError(f"job {job_id} ended {job['state']}: {job['events']}")
        return job if job["state"] in states else None

    return wait_for(reached, timeout=timeout, interval=0.1, what=f"job {job_id} to be {states}")  # type: ignore[return-value]


@contextmanager
def loopless_coordinator(data_dir: Path, database_url: str | None = None, **settings: Any) -> Iterator[Coordinator]:
    """A coordinator over HTTP with no background loops: the test drives the scheduler and ledger
    services itself, so nothing else acts on its jobs."""
    config = Settings(data_dir=data_dir, database_url=database_url, heartbeat_interval_s=0.5, **settings)
    app = create_app(config, start_loops=False)
    server, thread, url = serve(app)
    c = Coordinator(url, config, app.state.engine)
    c.reset()
    try:
        yield c
    finally:
        for client in c.clients:
            client.close()
        server.should_exit = True
        thread.join(timeout=10)


class ApprovingAgent(CoopClient):
    """An agent's client whose new nodes an admin approves as they register, then registers again, as
    ``coop-agent join`` does once approved. Most tests are about what happens after approval; the
    wait before it is tested in tests/api/test_node_approval.py with a plain ``CoopClient``."""

    def __init__(self, url: str, token: str, admin: CoopClient) -> None:
        super().__init__(url, token)
        self.admin = admin

    def register_node(self, req: NodeRegister) -> Any:
        registered = super().register_node(req)
        if not registered["approved"]:
            self.admin.approve_node(registered["id"])
            registered = super().register_node(req)
            assert registered["approved"], registered
        return registered


@dataclass
class Coordinator:
    url: str
    settings: Settings
    engine: Engine
    admin_token: str = ""
    clients: list[CoopClient] = field(default_factory=list)

    def client(self, token: str | None = None) -> CoopClient:
        c = CoopClient(self.url, token)
        self.clients.append(c)
        return c

    @property
    def admin(self) -> CoopClient:
        return self.client(self.admin_token)

    def new_member(self, name: str, **kwargs: object) -> tuple[CoopClient, str]:
        token = self.admin.create_member(name, **kwargs)["token"]  # type: ignore[arg-type]
        return self.client(token), token

    def agent(self, member: str, approve: bool = True) -> CoopClient:
        """An agent token's client; ``approve``: the nodes it registers are approved by an admin."""
        token = self.admin.create_token(kind="agent", member=member)["token"]
        if not approve:
            return self.client(token)
        c = ApprovingAgent(self.url, token, self.admin)
        self.clients.append(c)
        return c

    def reset(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        shutil.rmtree(self.settings.log_dir, ignore_errors=True)  # job ids start again at 1: so must their logs
        tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
        for tries_left in reversed(range(5)):
            try:
                with self.engine.begin() as conn:
                    if self.engine.dialect.name == "postgresql":
                        quoted = ", ".join(f'"{t}"' for t in tables)
                        conn.execute(text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))
                    else:
                        for t in tables:
                            conn.execute(text(f'DELETE FROM "{t}"'))
                break
            except OperationalError:  # a loop of the live coordinator held a table: PostgreSQL saw a deadlock
                if not tries_left:
                    raise
        with Session(self.engine) as session:
            token = accounts.bootstrap_admin(session)
        assert token
        self.admin_token = token


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def coordinator_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Coordinator]:
    data_dir: Path = tmp_path_factory.mktemp(f"coop-{request.param}")
    if request.param == "postgres":
        require_service(bool(POSTGRES_URL), "COOP_TEST_POSTGRES_URL is not set: PostgreSQL runs skipped")
        assert POSTGRES_URL
        reset_postgres(POSTGRES_URL)
        settings = Settings(data_dir=data_dir, database_url=POSTGRES_URL, heartbeat_interval_s=0.5)
    else:
        settings = Settings(data_dir=data_dir, heartbeat_interval_s=0.5)
    app = create_app(settings)
    server, thread, url = serve(app)
    try:
        yield Coordinator(url, settings, app.state.engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def coordinator(coordinator_server: Coordinator) -> Iterator[Coordinator]:
    """A running coordinator with an empty ledger and a fresh admin token."""
    coordinator_server.reset()
    yield coordinator_server
    for c in coordinator_server.clients:
        c.close()
