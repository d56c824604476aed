"""Which backend runs an attempt: Ray for donated nodes, the pool's Slurm backend for a pool's nodes."""

from __future__ import annotations

import json
import logging
import threading

from pydantic import ValidationError
from sqlmodel import Session, select

from coop.server.backends import Backend
from coop.server.backends.slurm.backend import SlurmBackend
from coop.server.backends.slurm.config import SlurmPoolConfig
from coop.server.models import Attempt, Node, Pool

log = logging.getLogger("coop.backends")


class SlurmPools:
    """One :class:`SlurmBackend`, so one SSH connection, per pool; rebuilt when its settings change."""

    def __init__(self, poll_s: float = 5.0, connect_timeout: float = 10.0, command_timeout: float = 30.0) -> None:
        self.poll_s = poll_s
        self.timeouts = {"connect_timeout": connect_timeout, "command_timeout": command_timeout}
        self._pools: dict[int, tuple[str, SlurmBackend]] = {}
        self._lock = threading.Lock()

    def refresh(self, session: Session) -> None:
        """Match the backends to the pool table (removed pools keep theirs: their attempts still end)."""
        rows = session.exec(select(Pool).where(Pool.kind == "slurm")).all()
        with self._lock:
            for pool in rows:
                key = json.dumps(pool.config, sort_keys=True)
                have = self._pools.get(pool.id)  # type: ignore[arg-type]
                if have is not None and have[0] == key:
                    continue
                if have is not None:
                    have[1].close()
                try:
                    config = SlurmPoolConfig.model_validate(pool.config)
                except ValidationError as exc:  # stored by an older version: that pool only is left out
                    log.error("pool %s: its settings are no longer valid: %s", pool.name, exc)
                    continue
                backend = SlurmBackend.connect_to(pool.name, config, **self.timeouts)
                backend.queue_ttl_s = self.poll_s
                self._pools[pool.id] = (key, backend)  # type: ignore[index]

    def get(self, pool_id: int) -> SlurmBackend | None:
        with self._lock:
            have = self._pools.get(pool_id)
        return have[1] if have else None

    def close(self) -> None:
        with self._lock:
            for _, backend in self._pools.values():
                backend.close()
            self._pools.clear()


class Backends:
    """The backends of one coordinator; ``ray`` is None when it has no Ray cluster."""

    def __init__(self, ray: Backend | None = None, slurm: SlurmPools | None = None) -> None:
        self.ray = ray
        self.slurm = slurm or SlurmPools()

    @classmethod
    def of(cls, backend: Backend | Backends | None) -> Backends:
        """A lone backend (what tests and older callers pass) runs the donated nodes."""
        return backend if isinstance(backend, Backends) else cls(ray=backend)

    def refresh(self, session: Session) -> None:
        self.slurm.refresh(session)

    def for_node(self, node: Node) -> Backend | None:
        return self.slurm.get(node.pool_id) if node.pool_id is not None else self.ray

    def for_attempt(self, attempt: Attempt) -> Backend | None:
        return self.slurm.get(attempt.pool_id) if attempt.pool_id is not None else self.ray
