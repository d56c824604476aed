from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.conftest import Coordinator, loopless_coordinator, own_postgres

METRICS_TOKEN = "metrics-test-token"


def quiet(
    data_dir: Path, database_url: str | None = None, token: str | None = METRICS_TOKEN
) -> AbstractContextManager[Coordinator]:
    """A coordinator with no background loops, /metrics behind ``token``: nothing but the test and
    the scrapes act on it."""
    return loopless_coordinator(data_dir, database_url, metrics_token=token)


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
