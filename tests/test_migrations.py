"""The Alembic migrations against the models, and the data they carry over, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, select

from coop.server.db import alembic_config, make_engine, upgrade
from coop.server.models import Node
from tests.conftest import POSTGRES_URL, own_postgres, require_service


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of the test's own (no coordinator uses it)."""
    if request.param == "postgres":  # beside the suite's database, named after it: parallel runs keep apart
        require_service(bool(POSTGRES_URL), "COOP_TEST_POSTGRES_URL is not set: PostgreSQL runs skipped")
        url = own_postgres(f"{make_url(POSTGRES_URL or '').database}_migrations")
    else:
        url = f"sqlite:///{tmp_path / 'coop.db'}"
    e = make_engine(url)
    try:
        yield e
    finally:
        e.dispose()


def test_the_migrations_build_the_schema_the_models_describe(engine: Engine) -> None:
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert diff == [], f"the models and the migrations disagree (add a migration): {diff}"


NODE_0003 = (
    "INSERT INTO node (member_id, name, state, paused, coordinator_paused, draining, reclaim, tier, cpus, memory_gb, "
    "disk_gb, os, python_version, telemetry, registered_at) VALUES (:member, :name, 'online', false, false, false, "
    "false, 'consumer', 8, 32, 0, 'Linux', '3.11', '{}', CURRENT_TIMESTAMP)"
)


def test_0004_keeps_the_nodes_of_a_running_cooperative_approved(engine: Engine) -> None:
    """Nodes registered before approval existed stay approved (an upgrade must not cut a cooperative
    off); a node registered afterwards waits for an admin; the downgrade drops the column."""
    cfg = alembic_config(engine)
    command.upgrade(cfg, "0003")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO member (name, share, created_at) VALUES ('lab', 1, CURRENT_TIMESTAMP)"))
        member = conn.execute(text("SELECT id FROM member WHERE name = 'lab'")).scalar_one()
        for name in ("old-a", "old-b"):
            conn.execute(text(NODE_0003), {"member": member, "name": name})
    command.upgrade(cfg, "0004")
    with engine.begin() as conn:
        conn.execute(text(NODE_0003), {"member": member, "name": "new"})  # written after: the column's default
        approved = {name: bool(value) for name, value in conn.execute(text("SELECT name, approved FROM node"))}
    assert approved == {"old-a": True, "old-b": True, "new": False}

    command.downgrade(cfg, "0003")
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("node")}
    assert "approved" not in columns and "coordinator_paused" in columns

    upgrade(engine)  # to head again; a node the coordinator creates now waits for approval
    with Session(engine) as session:
        session.add(Node(member_id=member, name="registered", cpus=8, memory_gb=32))
        session.commit()
        approved = {n.name: n.approved for n in session.exec(select(Node))}
    assert approved == {"old-a": True, "old-b": True, "new": True, "registered": False}


def test_0009_frees_a_retired_nodes_name_and_the_downgrade_keeps_names_unique(engine: Engine) -> None:
    """Nodes of a running cooperative carry over (no machine ids yet, none retired); once 0009 is in, a
    retired node's name may be taken by a new node of its member, never by two nodes in service; the
    downgrade renames retired nodes so that the old unique constraint holds again."""
    cfg = alembic_config(engine)
    command.upgrade(cfg, "0008")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO member (name, share, created_at) VALUES ('lab', 1, CURRENT_TIMESTAMP)"))
        member = conn.execute(text("SELECT id FROM member WHERE name = 'lab'")).scalar_one()
        conn.execute(text(NODE_0003.replace("'online'", "'offline'")), {"member": member, "name": "box"})
    command.upgrade(cfg, "0009")
    with engine.begin() as conn:
        row = conn.execute(text("SELECT name, hardware_id, host_id, retired_at FROM node")).one()
        assert tuple(row) == ("box", None, None, None)
        conn.execute(text("UPDATE node SET retired_at = CURRENT_TIMESTAMP, retired_by = 'admin/admin'"))
        conn.execute(text(NODE_0003), {"member": member, "name": "box"})  # the name is free again
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(NODE_0003), {"member": member, "name": "box"})  # but not twice in service

    command.downgrade(cfg, "0008")
    with engine.connect() as conn:
        names = sorted(conn.execute(text("SELECT name FROM node")).scalars())
        columns = {c["name"] for c in inspect(conn).get_columns("node")}
    assert names == ["box", "box~retired-1"] and not columns & {"hardware_id", "host_id", "retired_at"}
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text(NODE_0003), {"member": member, "name": "box"})  # the old constraint is back
    upgrade(engine)
