"""Only one coordinator process schedules and accrues credit, however many serve HTTP.

PostgreSQL: a session-level advisory lock on a connection held for the purpose. SQLite: an
exclusive ``flock`` on a file beside the database. Both vanish with the process that held them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine


def lock_key(instance: str) -> int:
    """The advisory lock id of one Coop instance's scheduler (several may share a database server)."""
    return zlib.crc32(f"coop-scheduler:{instance}".encode())


class Leadership:
    def __init__(self, engine: Engine, data_dir: Path, instance: str = "coop") -> None:
        self.key = lock_key(instance)
        self.engine = engine
        self.data_dir = data_dir
        self._conn: Any = None
        self._fd: int | None = None
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """True while this process leads; cheap to call every cycle."""
        with self._lock:
            if self.engine.dialect.name == "postgresql":
                return self._pg()
            return self._file()

    def _pg(self) -> bool:
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))
                return True
            conn = self.engine.connect()
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar():
                conn.commit()
                self._conn = conn
                return True
            conn.close()
        except Exception:  # the connection (and so the lock) is gone: try again next cycle
            self._drop_conn()
        return False

    def _drop_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _file(self) -> bool:
        if self._fd is not None:
            return True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "scheduler.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        with self._lock:
            self._drop_conn()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
