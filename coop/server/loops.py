"""The coordinator's background loops (see :mod:`coop.loop` for their shape)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from coop.loop import Loop
from coop.server.backends import Backend
from coop.server.backends.dispatch import Backends, SlurmPools
from coop.server.backends.ray import RayBackend
from coop.server.backends.slurm.ssh import CommandError, SshError
from coop.server.config import Settings
from coop.server.leader import Leadership
from coop.server.services import artifacts, attempts, foreign_work, ledger, nodes, pools, runs, scheduling
from coop.server.store import BlobStore
from coop.states import AttemptState

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
    """Places pending jobs and applies preemptions (``scheduling.schedule``: snapshot, ``decide``, apply).

    Two loops of its own start and stop with it, each in its own thread with its own failure isolation,
    on the same backends: ``ReconcileLoop`` (attempts against their backends) and ``LogShipLoop`` (their
    output). A slow backend answering one of them holds up neither of the others."""

    name = "scheduler"

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        backend: Backend | Backends,
        leader: Leadership,
        on_attempt_end: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_attempt_end``: called, besides this loop's wake, when attempts ended (the coordinator
        wakes its ledger loop with it, so an ended job's last slice of run time is charged at once)."""
        super().__init__()
        self.engine = engine
        self.settings = settings
        self.backend = Backends.of(backend)
        self.leader = leader
        self.interval = settings.scheduler_interval_s
        self.tally = ledger.LedgerTally(settings.fair_share_half_life_h)  # usage and balances between cycles
        self.holds: dict[int, int] = {}  # wide job -> the node it holds, from the last cycle

        def ended() -> None:
            self.wake()
            on_attempt_end()

        self.reconciler = ReconcileLoop(engine, settings, self.backend, leader, on_change=ended)
        self.logs = LogShipLoop(engine, settings, self.backend, leader)

    def start(self) -> None:
        super().start()
        self.reconciler.start()
        self.logs.start()

    def stop(self) -> None:
        self.logs.stop()
        self.reconciler.stop()
        super().stop()

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        if self.backend.ray is None and not _pools_in_use(self.engine):
            return  # nothing could run a job: no Ray, no pool
        with Session(self.engine, expire_on_commit=False) as session:
            decisions = scheduling.schedule(
                session,
                self.settings,
                self.backend,
                tally=self.tally,
                down=self.reconciler.down,
                launching=self.reconciler.launching,
                holds=self.holds,
            )
        self.holds = {h.job_id: h.node_id for h in decisions.holds}
        if decisions.placements or decisions.preemptions:
            self.reconciler.wake()  # follow what it just started or stopped without waiting a full interval


class ReconcileLoop(Loop):
    """Brings every active attempt in line with its backend (``scheduling.reconcile``): RUNNING when it
    runs, its end when it ends, a stop when it was cancelled, timed out or lost its node. While a Ray
    attempt is starting it looks again within 0.2 s, so that its RUNNING shows without a full interval
    (not for HPC pools: a job may wait in Slurm's queue for hours, and login nodes are shared). When an
    attempt ends, ``on_change`` (the scheduler's wake) places the next job in the room it left.

    ``down``: the backends its last pass found unreachable (the scheduler places nothing on them);
    ``launching``: the jobs the scheduler is launching now, whose attempts this loop leaves alone."""

    name = "reconcile"

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        backend: Backend | Backends,
        leader: Leadership,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.settings = settings
        self.backends = Backends.of(backend)
        self.leader = leader
        self.on_change = on_change
        self.interval = settings.scheduler_interval_s
        self.down: dict[str, str] = {}
        self.launching: set[int] = set()

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        if self.backends.ray is None and not _pools_in_use(self.engine):
            return
        with Session(self.engine, expire_on_commit=False) as session:
            passed = scheduling.reconcile(session, self.settings, self.backends, self.launching)
        self.down = passed.down
        if passed.ended:
            self.on_change()
        self.interval = (
            min(self.settings.scheduler_interval_s, 0.2) if passed.starting else self.settings.scheduler_interval_s
        )


def _pools_in_use(engine: Engine) -> bool:
    """Is there a pool to place on, or a pool attempt to follow? One table per transaction: never
    holding a lock on one table while waiting for another."""
    with Session(engine) as session:
        if pools.any_enabled(session):
            return True
    with Session(engine) as session:
        return bool(pools.running(session))


class LogShipLoop(Loop):
    """Copies what running attempts printed to ``<data_dir>/logs`` (``coop logs -f`` reads it there), every
    ``COOP_LOG_SHIP_INTERVAL_S``, in a thread of its own: a backend slow to give logs (Ray sends a job's
    whole log each time) holds up neither the scheduler nor other backends. Each read asks only for what
    is past the stored size (``runs.save_logs``). One attempt whose logs cannot be read holds up only
    itself; a backend that cannot be reached (a connection error) is skipped for the rest of the pass,
    so that a pool whose SSH hangs costs one timeout a pass, not one per job. Each failing attempt is
    warned about once, until it reads again. The rest of an attempt's output, once it has ended, is
    stored by the reconcile pass that sees it end, before recording the end (``runs.save_final_logs``):
    its log is complete by the time its job shows as ended."""

    name = "log-ship"

    def __init__(self, engine: Engine, settings: Settings, backend: Backend | Backends, leader: Leadership) -> None:
        super().__init__()
        self.engine = engine
        self.settings = settings
        self.backends = Backends.of(backend)
        self.leader = leader
        self.interval = settings.log_ship_interval_s
        self.failing: dict[str, str] = {}  # attempt (backend ref) -> why its logs could not be read, while so

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        # read the attempts, then let the connection go: no database connection is held while backends
        # answer (SQLite has one for the whole coordinator)
        with Session(self.engine, expire_on_commit=False) as session:
            running = [(a, j) for a, j in attempts.active(session) if a.state == AttemptState.RUNNING and a.backend_ref]
        failed: dict[str, str] = {}
        down: dict[int | None, str] = {}  # backends that could not be reached in this pass (None: Ray)
        for attempt, job in running:
            ref = attempt.backend_ref or ""
            backend = self.backends.for_attempt(attempt)
            if backend is None:  # a pool not loaded yet (the scheduler loads them), or no Ray
                continue
            if attempt.pool_id in down:
                failed[ref] = down[attempt.pool_id]
                continue
            try:
                runs.save_logs(self.settings, backend, job, attempt)
            except Exception as exc:
                failed[ref] = runs.short_error(exc)
                if _unreachable(exc):
                    down[attempt.pool_id] = failed[ref]
        for ref, why in failed.items():
            if ref not in self.failing:
                log.warning("could not copy the logs of %s: %s", ref, why)
        for ref in self.failing.keys() - failed.keys():
            if any(a.backend_ref == ref for a, _ in running):
                log.info("the logs of %s can be read again", ref)
        self.failing = failed


def _unreachable(exc: Exception) -> bool:
    """An error that says the backend itself cannot be reached, not one about a single attempt."""
    return isinstance(exc, OSError) or (isinstance(exc, SshError) and not isinstance(exc, CommandError))


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


class StoreExpiryLoop(Loop):
    """Deletes outputs and checkpoints past their age (``artifacts.expire``) and uploads no one has
    appended to for a day (their sender is gone: a resumed upload would have touched them)."""

    name = "store-expiry"
    interval = 3600.0

    def __init__(self, engine: Engine, settings: Settings, store: BlobStore, leader: Leadership) -> None:
        super().__init__()
        self.engine = engine
        self.settings = settings
        self.store = store
        self.leader = leader

    def run_once(self) -> None:
        if not self.leader.acquire():
            return
        with Session(self.engine, expire_on_commit=False) as session:
            dropped = artifacts.expire(session, self.settings, self.store)
        stale = self.store.sweep_uploads(artifacts.PENDING_SET_TTL_S)
        if dropped or stale:
            log.info("store: %d artifact sets expired, %d stale uploads dropped", dropped, len(stale))


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
