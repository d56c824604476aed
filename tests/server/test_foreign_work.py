"""Foreign Ray work: the classifier on a listing captured from a real Ray 2.60 cluster
(``tests/data/foreign_work/capture.py``), what a check records (SQLite and PostgreSQL), and a Ray that
cannot be read."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from coop.server.backends.ray import RayBackend
from coop.server.config import Settings
from coop.server.db import make_engine, upgrade
from coop.server.leader import Leadership
from coop.server.loops import ForeignWorkLoop
from coop.server.models import Attempt, ForeignWork, Job, Member, Node, aware, utcnow
from coop.server.services import foreign_work
from tests.conftest import POSTGRES_URL, free_port, own_postgres, require_service

CAPTURED = json.loads((Path(__file__).parent.parent / "data" / "foreign_work" / "listing.json").read_text())
LISTING: dict[str, list[dict[str, Any]]] = CAPTURED["listing"]
OURS = set(CAPTURED["ours"])  # tcap-0-1 (an old attempt) and tcap-1-1 (running, its driver uses Ray)
# Coop node id (or "head") -> Ray node id, as captured
RAY_NODE = {("head" if n["is_head"] else foreign_work.coop_node_of(n)): n["node_id"] for n in LISTING["nodes"]}
FOREIGN_SUBMISSION = next(
    j["submission_id"] for j in LISTING["jobs"] if (j["submission_id"] or "").startswith("raysubmit_")
)
FOREIGN_RAY_JOB = next(j["job_id"] for j in LISTING["jobs"] if j["submission_id"] == FOREIGN_SUBMISSION)
OWN_RAY_JOB = next(j["job_id"] for j in LISTING["jobs"] if j["submission_id"] == "tcap-1-1")
LIVE_DRIVER = next(j["job_id"] for j in LISTING["jobs"] if j["type"] == "DRIVER" and j["status"] == "RUNNING")


def summary(found: list[foreign_work.Found]) -> set[tuple[str, str, str, int | None]]:
    """(kind, what, place, Coop node) of each finding; ``what`` without Ray's random ids."""
    out = set()
    for f in found:
        what = f.ray_id if f.kind == "job" else f.name.split(":")[0]
        out.add((f.kind, what, f.place, f.node_id))
    return out


def test_the_captured_cluster_holds_exactly_the_foreign_work_it_was_given() -> None:
    found = foreign_work.classify(LISTING, OURS, {7, 8})
    assert summary(found) == {
        ("job", "tcap-2-1", "node", 8),  # a made-up Coop-like id: not an attempt, so foreign (on its supervisor's node)
        ("job", FOREIGN_SUBMISSION, "head", None),  # submitted straight to the Jobs API: its driver on the head
        ("actor", "actor Miner miner", "node", 7),  # a plain driver's detached actor, left behind on node 7
        # a driver's actor dressed as the supervisor of an old Coop attempt: its job is listed, Ray's are not
        ("actor", "actor JobSupervisor _ray_internal_job_actor_tcap-0-1", "node", 8),
        ("task", f"tasks of Ray job {FOREIGN_RAY_JOB}", "node", 8),  # the foreign driver's task runs on node 8
        ("job", LIVE_DRIVER, "head", None),  # a plain driver, running: where its process is
    }
    # Coop's own attempt, its supervisor, and the actor and task its driver made are none of these
    assert not [f for f in found if f.ray_job_id == OWN_RAY_JOB or "tcap-1-1" in f.ray_id + f.name]
    assert {f.ray_node_id for f in found if f.place == "head"} == {RAY_NODE["head"]}
    assert len({f.key for f in found}) == len(found)


def test_work_is_coops_only_by_the_attempts_table() -> None:
    """Without tcap-1-1 among the attempts, its job and everything its driver started are foreign; its
    supervisor is not counted on its own (its job is)."""
    found = foreign_work.classify(LISTING, OURS - {"tcap-1-1"}, {7, 8})
    mine = summary([f for f in found if f.ray_job_id == OWN_RAY_JOB or f.ray_id == "tcap-1-1"])
    assert mine == {
        ("job", "tcap-1-1", "node", 7),
        ("actor", "actor Helper", "node", 7),
        ("task", f"tasks of Ray job {OWN_RAY_JOB}", "node", 7),
    }
    assert not [f for f in found if "_ray_internal_job_actor_tcap-1-1" in f.name]


def test_a_ray_node_is_named_by_its_coop_label_or_resource_else_head_or_unknown() -> None:
    assert foreign_work.coop_node_of({"labels": {"coop/node-id": "7"}, "coop_resources": ["coop_node_7"]}) == 7
    assert foreign_work.coop_node_of({"labels": {}, "coop_resources": ["coop_node_8"]}) == 8
    assert foreign_work.coop_node_of({"labels": {}, "coop_resources": ["coop_node_8", "coop_node_9"]}) is None
    assert foreign_work.coop_node_of({"labels": {}, "coop_resources": []}) is None
    # node 8 is not (or no longer) a Coop node: its work is on an unknown Ray node, not on the head
    found = foreign_work.classify(LISTING, OURS, {7})
    assert {(f.kind, f.place) for f in found if f.ray_node_id == RAY_NODE[8]} == {
        ("job", "unknown"),
        ("actor", "unknown"),
        ("task", "unknown"),
    }
    # a plain driver whose process is not listed is known by its address: shared here, so unknown
    listing = copy.deepcopy(LISTING)
    listing["drivers"] = []
    driver = next(j for j in listing["jobs"] if j["job_id"] == LIVE_DRIVER)
    (f,) = [f for f in foreign_work.classify(listing, OURS, {7, 8}) if f.ray_id == driver["job_id"]]
    assert (f.kind, f.place, f.name.startswith("Ray driver: ")) == ("job", "unknown", True)
    for i, node in enumerate(listing["nodes"]):  # one node per address: the driver's node is known
        node["ip"] = driver["driver_ip"] if node["is_head"] else f"10.0.0.{i}"
    (f,) = [f for f in foreign_work.classify(listing, OURS, {7, 8}) if f.ray_id == driver["job_id"]]
    assert (f.place, f.ray_node_id) == ("head", RAY_NODE["head"])


def test_ended_jobs_and_dead_or_finished_things_are_not_foreign_work() -> None:
    listing = copy.deepcopy(LISTING)
    for j in listing["jobs"]:
        j["status"] = "SUCCEEDED"
    listing["actors"] = []
    for t in listing["tasks"]:
        t["state"] = "FINISHED"
    assert foreign_work.classify(listing, set(), {7, 8}) == []
    assert foreign_work.classify({}, set(), set()) == []


# --- what a check records -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgres":
        require_service(bool(POSTGRES_URL), "COOP_TEST_POSTGRES_URL is not set: PostgreSQL runs skipped")
        url = own_postgres(f"{make_url(POSTGRES_URL or '').database}_foreign_work")
    else:
        url = f"sqlite:///{tmp_path / 'coop.db'}"
    e = make_engine(url)
    upgrade(e)
    try:
        yield e
    finally:
        e.dispose()


def cooperative(session: Session) -> None:
    """Coop nodes 7 and 8 of the capture, and the attempts behind tcap-0-1 and tcap-1-1."""
    member = Member(name="lab-a")
    session.add(member)
    session.flush()
    for node_id, name in ((7, "gpu-a"), (8, "gpu-b")):
        session.add(Node(id=node_id, member_id=member.id or 0, name=name))
    job = Job(member_id=member.id or 0, name="own", kind="batch", spec={})
    session.add(job)
    session.flush()
    for number, ref in ((1, "tcap-0-1"), (2, "tcap-1-1")):
        session.add(Attempt(job_id=job.id or 0, number=number, backend="ray", node_id=7, backend_ref=ref))
    session.commit()


def rows(session: Session) -> dict[tuple[str, str], ForeignWork]:
    return {(r.kind, r.ray_id): r for r in session.exec(select(ForeignWork))}


def test_a_check_records_each_piece_once_follows_it_and_notes_when_it_is_gone(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coop.foreign_work")
    t0 = utcnow()
    with Session(engine) as session:
        cooperative(session)
        fresh = foreign_work.check(session, LISTING, t0)
        assert len(fresh) == 6
        first = rows(session)
        assert len(first) == 6 and {aware(r.first_seen) for r in first.values()} == {t0}
        assert first[("job", FOREIGN_SUBMISSION)].place == "head" and first[("job", "tcap-2-1")].node_id == 8
        assert "tcap-1-1" not in first and not [k for k in first if k[1].endswith(OWN_RAY_JOB)]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 6
        assert any(m.startswith("foreign Ray work on the Ray head: job " + FOREIGN_SUBMISSION) for m in warnings)
        assert any(m.startswith("foreign Ray work on node 7 (gpu-a): actor ") and "Miner" in m for m in warnings)
        assert foreign_work.per_node(session) == {7: 1, 8: 3}
        assert foreign_work.per_node(session, 7) == {7: 1}

        caplog.clear()  # the same again: nothing new, no event; last seen moves on
        t1 = t0 + timedelta(seconds=15)
        assert foreign_work.check(session, LISTING, t1) == []
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        assert {(aware(r.first_seen), aware(r.last_seen), r.gone_at) for r in rows(session).values()} == {
            (t0, t1, None)
        }

        # the foreign job ends, the rest goes on: only that row is closed
        listing = copy.deepcopy(LISTING)
        next(j for j in listing["jobs"] if j["submission_id"] == FOREIGN_SUBMISSION)["status"] = "STOPPED"
        listing["tasks"] = [t for t in listing["tasks"] if t["job_id"] != FOREIGN_RAY_JOB]
        t2 = t1 + timedelta(seconds=15)
        assert foreign_work.check(session, listing, t2) == []
        gone = {k for k, r in rows(session).items() if r.gone_at is not None}
        assert gone == {("job", FOREIGN_SUBMISSION), ("task", f"{FOREIGN_RAY_JOB}@{RAY_NODE[8]}")}
        assert foreign_work.live_counts(session) == {(7, "node"): 1, (8, "node"): 2, (None, "head"): 1}
        assert len(foreign_work.listing(session)) == 4
        assert len(foreign_work.listing(session, include_gone=True)) == 6

        caplog.clear()  # it comes back (same id): one new event, the same row
        t3 = t2 + timedelta(seconds=15)
        (back,) = [r for r in foreign_work.check(session, LISTING, t3) if r.kind == "job"]
        assert back.ray_id == FOREIGN_SUBMISSION and back.gone_at is None
        assert aware(back.first_seen) == t0
        assert len(rows(session)) == 6
        again = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(again) == 2 and all("(again)" in m for m in again)  # the job and its task
        assert any(f"job {FOREIGN_SUBMISSION}" in m for m in again)


def test_a_ray_that_cannot_be_read_is_warned_about_once_and_stops_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ray down: one warning (no traceback each cycle), the loop goes on, and what the last check
    saw stays as it was (no finding is closed because Ray could not be asked)."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(data_dir=tmp_path, ray_dashboard_url=dead, foreign_work_interval_s=0.01)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    with Session(engine) as session:
        cooperative(session)
        foreign_work.check(session, LISTING)
    leader = Leadership(engine, tmp_path, settings.instance)
    loop = ForeignWorkLoop(engine, settings, RayBackend(dead, os.environ["RAY_AUTH_TOKEN"]), leader)
    caplog.set_level(logging.INFO)
    caplog.clear()
    try:
        loop.run(loops=3)
    finally:
        leader.release()
    assert not loop.stopped
    complaints = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(complaints) == 1, [r.getMessage() for r in complaints]
    assert complaints[0].getMessage().startswith("cannot list the Ray cluster's work") and not complaints[0].exc_info
    assert loop.unreadable
    with Session(engine) as session:
        assert len(foreign_work.listing(session)) == 6
    engine.dispose()


def test_work_not_placed_yet_is_told_once_it_has_a_node(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """A job or actor waiting for a node has none to name: no event until it is placed."""
    caplog.set_level(logging.WARNING, logger="coop.foreign_work")
    waiting = copy.deepcopy(LISTING)
    miner = next(a for a in waiting["actors"] if a["class_name"] == "Miner")
    miner["state"], miner["node_id"] = "PENDING_CREATION", None
    with Session(engine) as session:
        cooperative(session)
        foreign_work.check(session, waiting)
        assert ("actor", miner["actor_id"]) not in rows(session)
        assert not [r for r in caplog.records if miner["actor_id"] in r.getMessage()]
        (placed,) = [r for r in foreign_work.check(session, LISTING) if r.ray_id == miner["actor_id"]]
        assert (placed.node_id, placed.place) == (7, "node")
        (event,) = [r.getMessage() for r in caplog.records if miner["actor_id"] in r.getMessage()]
        assert event.startswith("foreign Ray work on node 7 (gpu-a): actor ")
