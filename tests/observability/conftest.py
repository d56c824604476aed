from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from coop.server.app import create_app
from coop.server.config import Settings
from coop.server.db import make_engine
from tests.conftest import POSTGRES_URL, Coordinator, require_service, reset_postgres, serve

METRICS_TOKEN = "metrics-test-token"


def own_postgres(name: str = "coop_observability_tests") -> str:
    """A database of its own on the test PostgreSQL server (the shared one belongs to the session's
    coordinator, whose loops would act on our jobs), created if need be and emptied."""
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


@contextmanager
def quiet(data_dir: Path, database_url: str | None = None, token: str | None = METRICS_TOKEN) -> Iterator[Coordinator]:
    """A coordinator with no background loops: nothing but the test and the scrapes act on it."""
    settings = Settings(data_dir=data_dir, database_url=database_url, heartbeat_interval_s=0.5, metrics_token=token)
    app = create_app(settings, start_loops=False)
    server, thread, url = serve(app)
    c = Coordinator(url, settings, app.state.engine)
    c.reset()
    try:
        yield c
    finally:
        for client in c.clients:
            client.close()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def quiet_coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    """A quiet coordinator (SQLite) with /metrics behind a token: what the metrics show is computed
    at scrape time, not by a loop."""
    with quiet(tmp_path / "coop") as c:
        yield c


@pytest.fixture(params=["sqlite", "postgres"])
def quiet_coordinator_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """The same, on SQLite and on PostgreSQL."""
    with quiet(tmp_path / "coop", own_postgres() if request.param == "postgres" else None) as c:
        yield c
