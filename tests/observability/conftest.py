from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coop.server.app import create_app
from coop.server.config import Settings
from tests.conftest import Coordinator, own_postgres, serve

METRICS_TOKEN = "metrics-test-token"




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
    database = own_postgres("coop_observability_tests") if request.param == "postgres" else None
    with quiet(tmp_path / "coop", database) as c:
        yield c
