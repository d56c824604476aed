"""The coordinator's FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

import coop
from coop.loop import Loop
from coop.schemas import Health
from coop.server import db, errors, security, web
from coop.server.backends.dispatch import Backends, SlurmPools
from coop.server.backends.ray import RayBackend
from coop.server.config import Settings, load_settings
from coop.server.deps import SessionReleasingRoute
from coop.server.leader import Leadership
from coop.server.limits import BodyLimit
from coop.server.loops import (
    ForeignWorkLoop,
    LedgerLoop,
    NodeLivenessLoop,
    PoolCapacityLoop,
    SchedulerLoop,
    StoreExpiryLoop,
)
from coop.server.metrics import endpoint as metrics_endpoint
from coop.server.routes import arrays, foreign, jobs, members, nodes, pools, transfer
from coop.server.services import accounts, workdirs
from coop.server.store import open_store

log = logging.getLogger("coop.server")

FIRST_ADMIN_HINT = (
    "No admin exists yet. On this host, with the same COOP_DATA_DIR / COOP_DATABASE_URL, run:\n"
    "    coop admin bootstrap\n"
    "It prints the first admin token; then 'coop login --url URL --token TOKEN' on your laptop."
)


def create_app(settings: Settings | None = None, *, start_loops: bool = True) -> FastAPI:
    settings = settings or load_settings()
    engine = db.make_engine(settings.resolved_database_url)
    db.upgrade(engine)
    backend = (
        RayBackend(
            settings.ray_dashboard_url,
            settings.ray_auth_token,
            settings.data_dir / "unpacked",
            workdirs.Limits.of(settings),  # launches unpack under the upload caps
        )
        if settings.ray_dashboard_url
        else None
    )
    slurm = SlurmPools(settings.pool_poll_s)  # one SSH connection per HPC pool, shared by the loops
    loops: list[Loop] = []
    scheduler: SchedulerLoop | None = None
    pool_capacity: PoolCapacityLoop | None = None
    leader = Leadership(engine, settings.data_dir, settings.instance)
    store = open_store(settings)
    if start_loops:
        accruing = LedgerLoop(engine, settings, leader)
        loops = [NodeLivenessLoop(engine, settings), accruing]
        # the scheduler runs without Ray too: HPC pools run jobs; donated nodes then wait, saying why.
        # An attempt's end wakes the ledger: its job's cost is whole soon after it shows as ended.
        scheduler = SchedulerLoop(engine, settings, Backends(ray=backend, slurm=slurm), leader, accruing.wake)
        pool_capacity = PoolCapacityLoop(engine, settings, slurm, leader)
        loops += [scheduler, pool_capacity, StoreExpiryLoop(engine, settings, store, leader)]
        if backend is not None and settings.foreign_work_interval_s > 0:  # its own loop: a slow Ray holds up nothing
            loops.append(ForeignWorkLoop(engine, settings, backend, leader))
        if backend is None:
            log.warning("COOP_RAY_DASHBOARD_URL is not set: donated nodes run nothing (HPC pools still do)")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with Session(engine) as session:
            if not accounts.has_admin(session):
                log.warning(FIRST_ADMIN_HINT)
        for loop in loops:
            loop.start()
        yield
        for loop in loops:
            loop.stop()
        slurm.close()
        leader.release()
        engine.dispose()
        app.state.probe_engine.dispose()

    app = FastAPI(
        title="Coop coordinator",
        version=coop.__version__,
        lifespan=lifespan,
        description="Job scheduler for compute cooperatives. Authenticate with 'Authorization: Bearer <token>'.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.loops = loops
    app.state.store = store
    app.state.transfer_key = security.load_key(settings.transfer_key_path)
    # a new job wakes the scheduler instead of waiting for its next cycle
    app.state.job_submitted = scheduler.wake if scheduler is not None else (lambda: None)
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(errors.TextUrls)  # added last: runs first, before the body is read

    v1 = APIRouter(prefix="/v1", route_class=SessionReleasingRoute)

    probe = db.make_engine(settings.resolved_database_url)
    app.state.probe_engine = probe
    probing = anyio.CapacityLimiter(1)

    @v1.get("/health", response_model=Health, tags=["health"])
    async def health() -> Health:
        """Alive, and the database answers. On a connection and a thread of its own: behind the
        workload's, a loaded coordinator's probe waited seconds, and a load balancer would call it dead."""
        await anyio.to_thread.run_sync(_ping, probe, limiter=probing)
        return Health(status="ok", version=coop.__version__, database=engine.dialect.name)

    app.state.pools_changed = _pools_changed(scheduler, pool_capacity)
    for module in (jobs, arrays, nodes, members, pools, foreign, transfer):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(metrics_endpoint.router(engine, settings))
    web.install(app)  # the members' dashboard at /ui/ (docs/dashboard.md)
    return app


def _ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _pools_changed(scheduler: SchedulerLoop | None, capacity: PoolCapacityLoop | None) -> Callable[[], None]:
    """A new pool: ask it what it offers now, and let the scheduler run even without Ray."""

    def changed() -> None:
        if scheduler is not None:
            scheduler.wake()
        if capacity is not None:
            capacity.wake()

    return changed
