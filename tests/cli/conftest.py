"""CLI fixtures: ``coop`` run in-process by CliRunner against the real coordinator of tests/conftest.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner, Result

from coop.cli.main import app
from coop.client import CoopClient
from coop.server.models import Attempt, Job
from coop.server.services import logs
from coop.server.services.lifecycle import transition
from tests.conftest import Coordinator, free_port, wait_for


@dataclass
class Cli:
    """Runs ``coop ARGS`` as whoever COOP_URL / COOP_TOKEN name; config lives in a temp dir."""

    monkeypatch: pytest.MonkeyPatch
    config_dir: Path

    def __call__(self, *args: object, input: str | None = None) -> Result:
        return CliRunner().invoke(app, [str(a) for a in args], input=input)

    def json(self, *args: object) -> Any:
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def use(self, url: str, token: str) -> None:
        self.monkeypatch.setenv("COOP_URL", url)
        self.monkeypatch.setenv("COOP_TOKEN", token)

    def unreachable(self) -> str:
        url = f"http://127.0.0.1:{free_port()}"
        self.use(url, "no-such-token")
        return url


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    for name in ("COOP_URL", "COOP_TOKEN", "COOP_MAX_WORKDIR_MB", "COOP_DATA_DIR", "COOP_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COOP_CONFIG_DIR", str(tmp_path / "coop-config"))
    return Cli(monkeypatch, tmp_path / "coop-config")


@pytest.fixture
def alice(coordinator: Coordinator, cli: Cli) -> str:
    """A member named alice whose token the CLI uses; returns the token."""
    _, token = coordinator.new_member("alice")
    cli.use(coordinator.url, token)
    return token


def write_job(folder: Path, name: str = "train", workdir: str | None = ".", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    wd = "null" if workdir is None else workdir
    job.write_text(f"name: {name}\nkind: finetune\nresources:\n  gpus: 0\nworkdir: {wd}\nrun: python train.py\n{extra}")
    return job


class FakeBackend:
    """Plays the part of a backend in the ledger: starts attempts, writes their logs, ends the job."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def job_id(self, name: str) -> int:
        """The job's id once it is submitted (polls: the CLI submits it in the test's thread)."""

        def submitted() -> int | None:
            with Session(self.c.engine) as s:
                return s.exec(select(Job.id).where(Job.name == name)).first()

        return wait_for(submitted, timeout=10, what=f"job {name!r} to be submitted")  # type: ignore[return-value]

    def start(self, job_id: int) -> int:
        with Session(self.c.engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            if job.state != "PENDING":
                transition(s, job, "PREEMPTED", "node reclaimed", attempt=job.attempts)
                transition(s, job, "PENDING", "requeued")
            job.attempts += 1
            s.add(Attempt(job_id=job_id, number=job.attempts, backend="ray"))
            transition(s, job, "STARTING", "placed", attempt=job.attempts)
            transition(s, job, "RUNNING", "started", attempt=job.attempts)
            s.commit()
            return job.attempts

    def log(self, job_id: int, attempt: int, text: str) -> None:
        path = logs.log_path(self.c.settings, job_id, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(text)

    def finish(self, job_id: int, state: str = "SUCCEEDED", exit_code: int = 0) -> None:
        with Session(self.c.engine) as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.exit_code = exit_code
            transition(s, job, state, "exited" if state != "SUCCEEDED" else "done", attempt=job.attempts)
            s.commit()


@pytest.fixture
def backend(coordinator: Coordinator) -> FakeBackend:
    return FakeBackend(coordinator)


class Spy:
    """Records what the CLI's client got back, so a test can wait until the CLI has seen something."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.cond = threading.Condition()
        for name in ("job", "logs"):
            monkeypatch.setattr(CoopClient, name, self._recording(name, getattr(CoopClient, name)))

    def _recording(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(client: CoopClient, *args: Any, **kwargs: Any) -> Any:
            result = method(client, *args, **kwargs)
            with self.cond:
                self.calls.append((name, result))
                self.cond.notify_all()
            return result

        return wrapper

    def wait_for_log(self, text: str, timeout: float = 10) -> None:
        def seen() -> bool:
            return any(name == "logs" and text in result["data"] for name, result in self.calls)

        with self.cond:
            assert self.cond.wait_for(seen, timeout), f"the CLI never read {text!r}"


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


@pytest.fixture
def in_background() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Run a function in a thread while the CLI blocks; its failure fails the test."""
    threads: list[tuple[threading.Thread, list[BaseException]]] = []

    def start(fn: Callable[[], None]) -> None:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append((thread, errors))

    yield start
    for thread, errors in threads:
        thread.join(timeout=30)
        if errors:
            raise errors[0]


__all__ = ["Cli", "FakeBackend", "Spy", "write_job"]
