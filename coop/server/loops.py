"""The coordinator's background loops (see :mod:`coop.loop` for their shape)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from coop.loop import Loop
from coop.server.backends import Backend
from coop.server.backends.dispatch import Backends, SlurmPools
from coop.server.backends.ray import RayBackend
from coop.server.config import Settings
from coop.server.leader import Leadership
from coop.server.services import attempts, foreign_work, ledger, nodes, pools, scheduling

log = logging.getLogger("coop.loops")


class NodeLivenessLoop(Loop):
    """Marks nodes offline after missed heartbeats (default: three intervals)."""

    name = "node-liveness"

    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__()
        self.engine = engine
        self.timeout = timedelta(seconds=settings.heartbeat_interval_s * settings.missed_heartbeats_offline)
        self.interval = max(0.5, settings.heartbeat_interval_s / 2)
        self.started: float | None = None

    def run_once(self) -> None:
        # After a coordinator restart, give agents one full timeout to reach us before judging them:
        # their heartbeats were missed because we were down, not because they were.
        if self.started is None:
            self.started = time.monotonic()
        if time.monotonic() - self.started < self.timeout.total_seconds():
            return
        with Session(self.engine) as session:
            for node in nodes.mark_missing(session, self.timeout):
                log.warning("node %s (%s) missed its heartbeats: offline", node.id, node.name)


class SchedulerLoop(Loop):
    """Reconciles attempts with the backend, places pending jobs, applies preemptions."""

    name = "scheduler"

    def __init__(self, engine: Engine, settings: Settings, backend: Backend | Backends, leader: Leadership) -> None:
        super().__init__()
        self.engine = engine
        self.settings = settings
        self.backend = Backends.of(backend)
        self.leader = leader
        self.interval = settings.scheduler_interval_s
        self.tally = ledger.LedgerTally(settings.fair_share_half_life_h)  # usage and balances between cycles

    def _pools_in_use(self) -> bool:
        """Is there a pool to place on, or a pool attempt to follow? One table per transaction: never
        holding a lock on one table while waiting for another."""
        with Session(self.engine) as session:
            if pools.any_enabled(session):
                return True
        with Session(self.engine) as session:
            return bool(pools.running(session))

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        if self.backend.ray is None and not self._pools_in_use():
            return  # nothing could run a job: no Ray, no pool
        with Session(self.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, self.settings, self.backend, tally=self.tally)
            starting = any(a.state == "STARTING" and a.pool_id is None for a, _ in attempts.active(session))
        # while an attempt is starting, look again soon: its RUNNING should show without a full interval
        # (not for HPC pools: a job may wait in Slurm's queue for hours, and login nodes are shared)
        self.interval = min(self.settings.scheduler_interval_s, 0.2) if starting else self.settings.scheduler_interval_s


class LedgerLoop(Loop):
    """Accrues credits for run time and idle donated capacity."""

    name = "ledger"

    def __init__(self, engine: Engine, settings: Settings, leader: Leadership) -> None:
        super().__init__()
        self.engine = engine
        self.settings = settings
        self.leader = leader
        self.interval = settings.ledger_interval_s

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        with Session(self.engine) as session:
            ledger.accrue(session, self.settings.idle_credit_rate)


class PoolCapacityLoop(Loop):
    """Asks each enabled HPC pool what it offers (``sinfo`` over SSH) so placement follows the cluster."""

    name = "pool-capacity"

    def __init__(self, engine: Engine, settings: Settings, slurm: SlurmPools, leader: Leadership) -> None:
        super().__init__()
        self.engine = engine
        self.slurm = slurm
        self.leader = leader
        self.interval = settings.pool_refresh_s

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        with Session(self.engine, expire_on_commit=False) as session:
            pools.refresh_all(session, self.slurm)


class ForeignWorkLoop(Loop):
    """Looks for work on the Ray cluster that Coop did not start (``services/foreign_work.py``), every
    ``COOP_FOREIGN_WORK_INTERVAL_S``. Ray that cannot be read is warned about once per outage: the
    findings stay as the last check left them, and no other loop waits for this one."""

    name = "foreign-work"

    def __init__(self, engine: Engine, settings: Settings, ray: RayBackend, leader: Leadership) -> None:
        super().__init__()
        self.engine = engine
        self.ray = ray
        self.leader = leader
        self.interval = settings.foreign_work_interval_s
        self.unreadable: str | None = None  # why the last listing failed, while it fails

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        try:
            listing = self.ray.listing(timeout_s=max(1, min(10, int(self.interval))))
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            if self.unreadable is None:
                log.warning("cannot list the Ray cluster's work to look for work Coop did not start: %s", reason)
            self.unreadable = reason
            return
        if self.unreadable is not None:
            log.info("the Ray cluster's work can be listed again")
            self.unreadable = None
        with Session(self.engine) as session:
            foreign_work.check(session, listing)
