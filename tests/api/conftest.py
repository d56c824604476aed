"""Fixtures shared by the API tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Coordinator, loopless_coordinator, own_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def loopless(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator without its loops, on SQLite and on a PostgreSQL database of the test module's own
    (``coop_<module>``): the test drives scheduling and accrual itself."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    url = own_postgres(f"coop_{module}") if request.param == "postgres" else None
    with loopless_coordinator(tmp_path / "coop", url) as c:
        yield c
