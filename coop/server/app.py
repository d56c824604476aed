"""The coordinator's FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy import text
from sqlmodel import Session

import coop
from coop.loop import Loop
from coop.schemas import Health
from coop.server import db, errors
from coop.server.backends.ray import RayBackend
from coop.server.config import Settings, load_settings
from coop.server.deps import SessionDep
from coop.server.leader import Leadership
from coop.server.limits import BodyLimit
from coop.server.loops import LedgerLoop, NodeLivenessLoop, SchedulerLoop
from coop.server.routes import jobs, members, nodes
from coop.server.services import accounts

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
        RayBackend(settings.ray_dashboard_url, settings.ray_auth_token, settings.data_dir / "unpacked")
        if settings.ray_dashboard_url
        else None
    )
    loops: list[Loop] = []
    scheduler: SchedulerLoop | None = None
    leader = Leadership(engine, settings.data_dir, settings.instance)
    if start_loops:
        loops = [NodeLivenessLoop(engine, settings), LedgerLoop(engine, settings, leader)]
        if backend is not None:
            scheduler = SchedulerLoop(engine, settings, backend, leader)
            loops.append(scheduler)
        else:
            log.warning("COOP_RAY_DASHBOARD_URL is not set: jobs are accepted but nothing runs them")

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
        leader.release()
        engine.dispose()

    app = FastAPI(
        title="Coop coordinator",
        version=coop.__version__,
        lifespan=lifespan,
        description="Job scheduler for compute cooperatives. Authenticate with 'Authorization: Bearer <token>'.",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.loops = loops
    # a new job wakes the scheduler instead of waiting for its next cycle
    app.state.job_submitted = scheduler.wake if scheduler is not None else (lambda: None)
    errors.install(app)
    app.add_middleware(BodyLimit)

    v1 = APIRouter(prefix="/v1")

    @v1.get("/health", response_model=Health, tags=["health"])
    def health(session: SessionDep) -> Health:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        return Health(status="ok", version=coop.__version__, database=engine.dialect.name)

    for module in (jobs, nodes, members):
        v1.include_router(module.router)
    app.include_router(v1)
    return app
