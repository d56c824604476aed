"""The coordinator's background loops (see :mod:`coop.loop` for their shape)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from coop.loop import Loop
from coop.server.config import Settings
from coop.server.services import nodes

log = logging.getLogger("coop.loops")


class NodeLivenessLoop(Loop):
    """Marks nodes offline after missed heartbeats (default: three intervals)."""

    name = "node-liveness"

    def __init__(self, engine: Engine, settings: Settings) -> None:
        super().__init__()
        self.engine = engine
        self.timeout = timedelta(seconds=settings.heartbeat_interval_s * settings.missed_heartbeats_offline)
        self.interval = max(0.5, settings.heartbeat_interval_s / 2)

    def run_once(self) -> None:
        with Session(self.engine) as session:
            for node in nodes.mark_missing(session, self.timeout):
                log.warning("node %s (%s) missed its heartbeats: offline", node.id, node.name)
