"""The one shape of every background task (coordinator and agent).

A loop is a class with ``run_once()`` and an ``interval``; ``run(loops=1)`` makes it testable
without threads, ``start()``/``stop()`` run it in a daemon thread.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("coop.loops")


class Loop:
    interval: float = 5.0
    name = "loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        raise NotImplementedError

    def run(self, loops: int | None = None) -> None:
        done = 0
        while not self._stop.is_set() and (loops is None or done < loops):
            try:
                self.run_once()
            except Exception:  # one bad cycle must not end the loop
                log.exception("%s: cycle failed", self.name)
            done += 1
            if loops is None or done < loops:
                self.sleep(self.interval)

    def sleep(self, seconds: float) -> None:
        """Wait for the next cycle; :meth:`wake` or :meth:`stop` cut it short."""
        self._wake.wait(seconds)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()
