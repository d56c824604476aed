"""A member's declared ``max_runtime`` orders its own queue on the live coordinator: the scheduler
cycle reads it from the stored spec (the real cycle and ledger; the in-process backend of
tests/observability stands in for Ray, which is not what is under test here)."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import Session

from coop.server.services import scheduling
from tests.api.helpers import job_spec, node
from tests.conftest import loopless_coordinator
from tests.observability.cooperative import InProcessBackend


def test_the_job_with_the_shortest_declared_limit_starts_first(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        backend = InProcessBackend()
        c.new_member("alice")
        bob = c.new_member("bob")[0]
        c.agent("alice").register_node(node("n1", gpus=1))
        ids = {
            name: bob.submit(job_spec(name, 1) | extra)["id"]
            for name, extra in [("open-ended", {}), ("day", {"max_runtime": "24h"}), ("eval", {"max_runtime": "20m"})]
        }
        started = []
        for _ in range(3):
            with Session(c.engine, expire_on_commit=False) as session:
                scheduling.cycle(session, c.settings, backend)
            running = [n for n, i in ids.items() if c.admin.job(i)["state"] in ("STARTING", "RUNNING")]
            started += [n for n in running if n not in started]
            for name in running:
                c.admin.cancel(ids[name])  # free the GPU for the next cycle
        assert started == ["eval", "day", "open-ended"]
