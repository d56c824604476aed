"""Work on the Ray cluster that Coop did not start, and where it runs. The only code that writes the
``foreignwork`` table.

Anyone holding the cluster's Ray token can submit a Ray job straight to the Jobs API, or connect a
driver and start actors and tasks, without the coordinator. Every ``COOP_FOREIGN_WORK_INTERVAL_S``
the leader reads what Ray holds (``RayBackend.listing``) and :func:`classify` sorts it:

- a **job** (PENDING or RUNNING) is Coop's when its submission id is one of this coordinator's
  attempts (looked up in the attempts table: a made-up ``coop-…`` id is still foreign);
- an **actor** (not dead) is Coop's when a Coop job's own driver created it (its Ray job id is that
  submission's). Ray's job supervisors (one per submission, named ``_ray_internal_job_actor_<id>``)
  are Ray's own: a foreign submission is counted as its job. They belong to the dashboard's driver,
  which the job list hides, so an actor that only takes a supervisor's name, from a driver the list
  shows, is foreign (one left by a submitted job that has ended, or by a driver hidden in a
  ``_ray_internal_`` namespace, is not seen). Nothing else runs as an actor on an idle cluster
  (checked on Ray 2.60), so every other actor is foreign;
- **tasks** (running, not actor tasks) of foreign Ray jobs are counted once per (job, Ray node): where
  a foreign driver's work actually lands.

Each finding names its Coop node (the Ray node's ``coop/node-id`` label or ``coop_node_<id>``
resource, which agents set), else ``head`` (the head node, which no agent runs) or ``unknown``.
A finding is written when first seen (logged as a warning: the event), its ``last_seen`` kept up to
date while seen, and ``gone_at`` set once a check no longer finds it.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from coop.server.backends import split_ref
from coop.server.models import Attempt, ForeignWork, Node, utcnow

log = logging.getLogger("coop.foreign_work")

Listing = dict[str, list[dict[str, Any]]]  # what RayBackend.listing returns

SUPERVISOR_PREFIX = "_ray_internal_job_actor_"  # Ray's JOB_ACTOR_NAME_TEMPLATE
SUPERVISOR_NAMESPACE = "SUPERVISOR_ACTOR_RAY_NAMESPACE"
SUPERVISOR_CLASS = "JobSupervisor"
ALIVE_JOB = frozenset({"PENDING", "RUNNING"})
RUNNING_TASK = frozenset({"RUNNING", "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT"})
NODE_RESOURCE = re.compile(r"^coop_node_(\d+)$")
NODE_LABEL = "coop/node-id"
NAME_MAX = 200


@dataclass(frozen=True)
class Found:
    """One piece of foreign work and where it runs."""

    kind: str  # job | actor | task
    ray_id: str  # submission id (or Ray job id of a plain driver), actor id, or <Ray job id>@<Ray node id>
    ray_job_id: str | None
    ray_node_id: str | None
    node_id: int | None  # the Coop node, when the Ray node is one
    place: str  # node | head | unknown
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.ray_id


def coop_node_of(ray_node: dict[str, Any]) -> int | None:
    """The Coop node id a Ray node was started for (label first, then the resource), or None."""
    label = str((ray_node.get("labels") or {}).get(NODE_LABEL, ""))
    if label.isdigit():
        return int(label)
    ids = {int(m.group(1)) for r in ray_node.get("coop_resources") or [] if (m := NODE_RESOURCE.match(r))}
    return ids.pop() if len(ids) == 1 else None


def _supervised(actor: dict[str, Any]) -> str | None:
    """The submission id whose Ray job supervisor this actor looks like, or None."""
    name = actor.get("name") or ""
    if (
        actor.get("namespace") == SUPERVISOR_NAMESPACE
        and actor.get("class_name") == SUPERVISOR_CLASS
        and name.startswith(SUPERVISOR_PREFIX)
    ):
        return name[len(SUPERVISOR_PREFIX) :]
    return None


def classify(listing: Listing, ours: set[str], coop_nodes: set[int]) -> list[Found]:
    """The foreign work in ``listing``, pure. ``ours``: the listed submission ids that are this
    coordinator's attempts; ``coop_nodes``: the Coop node ids that exist (a Ray node claiming another
    is ``unknown``)."""
    ray_nodes = {n["node_id"]: n for n in listing.get("nodes", [])}
    jobs = listing.get("jobs", [])
    actors = listing.get("actors", [])
    tasks = listing.get("tasks", [])
    listed_ray_jobs = {j["job_id"] for j in jobs if j.get("job_id")}
    own_ray_jobs = {j["job_id"] for j in jobs if j.get("job_id") and j.get("submission_id") in ours}

    def place(ray_node_id: str | None) -> tuple[int | None, str]:
        node = ray_nodes.get(ray_node_id or "")
        if node is None:
            return None, "unknown"
        coop = coop_node_of(node)
        if coop is not None and coop in coop_nodes:
            return coop, "node"
        return None, ("head" if node.get("is_head") and coop is None else "unknown")

    def found(kind: str, ray_id: str, ray_job_id: str | None, ray_node_id: str | None, name: str) -> Found:
        return Found(kind, ray_id, ray_job_id, ray_node_id, *place(ray_node_id), name[:NAME_MAX])

    supervisors: dict[str, dict[str, Any]] = {}
    out: list[Found] = []
    for a in actors:
        submission = _supervised(a)
        # Ray's own supervisors belong to the dashboard's driver, which the job list hides: one whose
        # job is listed is some driver's actor dressed as a supervisor
        if submission is not None and a.get("job_id") not in listed_ray_jobs:
            supervisors[submission] = a  # Coop's job, or a foreign one counted as a job (run on this node)
            continue
        if a.get("job_id") in own_ray_jobs:
            continue  # a Coop job's own driver uses Ray
        what = " ".join(p for p in (a.get("class_name"), a.get("name")) if p)
        out.append(found("actor", a["actor_id"], a.get("job_id"), a.get("node_id"), f"actor {what}"))

    drivers = {(d.get("ip"), d.get("pid")): d.get("node_id") for d in listing.get("drivers", [])}
    for j in jobs:
        if j.get("status") not in ALIVE_JOB or (j.get("submission_id") and j["submission_id"] in ours):
            continue
        submission, ray_job = j.get("submission_id"), j.get("job_id")
        ray_id = submission or ray_job
        if not ray_id:
            continue
        supervisor = supervisors.get(submission or "")
        node = (supervisor or {}).get("node_id") or j.get("driver_node_id")
        node = node or drivers.get((j.get("driver_ip"), j.get("driver_pid")))  # a plain driver's process
        if node is None and j.get("driver_ip"):  # else by its address, if only one node has it
            same_ip = [n["node_id"] for n in ray_nodes.values() if n.get("ip") == j["driver_ip"]]
            node = same_ip[0] if len(same_ip) == 1 else None
        what = "Ray job" if submission else "Ray driver"
        out.append(found("job", ray_id, ray_job, node, f"{what}: {j.get('entrypoint') or ''}"))

    running: dict[tuple[str, str], set[str]] = defaultdict(set)
    for t in tasks:
        if t.get("type") == "NORMAL_TASK" and t.get("state") in RUNNING_TASK and t.get("job_id") not in own_ray_jobs:
            running[(t["job_id"], t.get("node_id") or "")].add(t.get("name") or "?")
    for (ray_job, ray_node), names in sorted(running.items()):
        shown = ", ".join(sorted(names)[:3]) + (", …" if len(names) > 3 else "")
        name = f"tasks of Ray job {ray_job}: {shown}"
        out.append(found("task", f"{ray_job}@{ray_node}", ray_job, ray_node or None, name))
    return out


def where(found: Found | ForeignWork, node_names: dict[int, str]) -> str:
    """For people: ``node 3 (gpu-a)``, ``the Ray head``, or ``an unknown Ray node <id>``."""
    if found.node_id is not None:
        return f"node {found.node_id} ({node_names.get(found.node_id, '?')})"
    if found.place == "head":
        return "the Ray head"
    return f"an unknown Ray node {found.ray_node_id or '?'}"


def ours(session: Session, listing: Listing) -> set[str]:
    """The listed submission ids that are this coordinator's attempts."""
    ids = {j["submission_id"] for j in listing.get("jobs", []) if j.get("submission_id")}
    if not ids:
        return set()
    of = {i: split_ref(i)[0] for i in ids}  # a gang's ranks are Ray jobs of their own
    refs = set(session.exec(select(Attempt.backend_ref).where(col(Attempt.backend_ref).in_(set(of.values())))))
    return {i for i, ref in of.items() if ref in refs}


def record(session: Session, found: list[Found], now: datetime | None = None) -> list[ForeignWork]:
    """Write what this check found; returns the rows new (or back) since the last check."""
    now = now or utcnow()
    rows = {(r.kind, r.ray_id): r for r in session.exec(select(ForeignWork).where(col(ForeignWork.gone_at).is_(None)))}
    seen = {f.key: f for f in found}
    if seen.keys() - rows.keys():  # ones seen before and gone since
        for r in session.exec(select(ForeignWork).where(col(ForeignWork.ray_id).in_({k[1] for k in seen}))):
            rows.setdefault((r.kind, r.ray_id), r)
    names = {i: n for i, n in session.exec(select(Node.id, Node.name)) if i is not None}
    fresh = []
    for key, f in seen.items():
        row = rows.get(key)
        if f.ray_node_id is None:  # not placed yet (a job or actor waiting for a node): told once it is
            if row is not None and row.gone_at is None:
                row.last_seen = now  # seen before, somewhere: it stays where it was last seen
                session.add(row)
            continue
        if row is None or row.gone_at is not None:
            row = row or ForeignWork(kind=f.kind, ray_id=f.ray_id, place=f.place, first_seen=now)
            row.gone_at = None
            fresh.append(row)
            back = " (again)" if row.id is not None else ""
            log.warning(
                "foreign Ray work on %s%s: %s %s, %s; Coop did not start it",
                where(f, names), back, f.kind, f.ray_id, f.name,
            )  # fmt: skip
        row.ray_job_id, row.ray_node_id, row.node_id, row.place = f.ray_job_id, f.ray_node_id, f.node_id, f.place
        row.name, row.last_seen = f.name, now
        session.add(row)
    for key, row in rows.items():
        if key not in seen and row.gone_at is None:
            row.gone_at = now
            session.add(row)
            log.info("foreign Ray work on %s is gone: %s %s", where(row, names), row.kind, row.ray_id)
    session.commit()
    return fresh


def check(session: Session, listing: Listing, now: datetime | None = None) -> list[ForeignWork]:
    """One check: classify what Ray holds and record it."""
    claimed = {c for n in listing.get("nodes", []) if (c := coop_node_of(n)) is not None}
    existing = set(session.exec(select(Node.id).where(col(Node.id).in_(claimed))).all()) if claimed else set()
    found = classify(listing, ours(session, listing), {i for i in existing if i is not None})
    return record(session, found, now)


def live_counts(session: Session) -> dict[tuple[int | None, str], int]:
    """Foreign work seen in the last check, per (Coop node id or None, place)."""
    counts: dict[tuple[int | None, str], int] = defaultdict(int)
    for node_id, place in session.exec(
        select(ForeignWork.node_id, ForeignWork.place).where(col(ForeignWork.gone_at).is_(None))
    ):
        counts[(node_id, place)] += 1
    return dict(counts)


def per_node(session: Session, node_id: int | None = None) -> dict[int, int]:
    """Live foreign work per Coop node (``coop nodes``), or of one node."""
    q = (
        select(ForeignWork.node_id, func.count())
        .where(col(ForeignWork.gone_at).is_(None), col(ForeignWork.node_id).is_not(None))
        .group_by(col(ForeignWork.node_id))
    )
    if node_id is not None:
        q = q.where(ForeignWork.node_id == node_id)
    return {n: count for n, count in session.exec(q) if n is not None}


def listing(session: Session, include_gone: bool = False) -> list[tuple[ForeignWork, str | None]]:
    """The recorded foreign work with its Coop node's name, newest first."""
    q = (
        select(ForeignWork, Node.name)
        .outerjoin(Node, col(Node.id) == ForeignWork.node_id)
        .order_by(col(ForeignWork.first_seen).desc(), col(ForeignWork.id).desc())
    )
    if not include_gone:
        q = q.where(col(ForeignWork.gone_at).is_(None))
    return [(row, name) for row, name in session.exec(q)]
