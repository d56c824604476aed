"""A submission whose reply is lost is not run twice: the backend on the real test cluster, with the
connection made to break right after ``sbatch`` has run (the lost reply is the fault under test)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from coop.server.backends import Launch, LogRead
from coop.server.backends.slurm import commands
from coop.server.backends.slurm.backend import SlurmBackend
from coop.server.backends.slurm.config import SlurmPoolConfig
from coop.server.backends.slurm.parse import parse_squeue
from coop.server.backends.slurm.script import EXIT_STATUS
from coop.server.backends.slurm.ssh import Connection, Result, SshError
from tests.conftest import wait_for
from tests.slurm.conftest import SSH_PORT, USER, SlurmCluster

pytestmark = pytest.mark.slurm


class LosesSbatchReplies(Connection):
    """The real connection, except that the reply to each ``sbatch`` is lost: the command runs on the
    cluster, then the connection drops before its output comes back."""

    def run(self, command: str, timeout: float | None = None, check: bool = True, retry: bool = False) -> Result:
        result = super().run(command, timeout, check, retry)
        if " sbatch " in f" {command} ":
            self.close()
            raise SshError("connection lost while waiting for sbatch (injected by the test)")
        return result


@pytest.fixture
def pool(testbed: SlurmCluster) -> Iterator[dict[str, Any]]:
    run_id = f"t{secrets.token_hex(4)}"
    config = SlurmPoolConfig(
        host="127.0.0.1", port=SSH_PORT, user=USER, key=testbed.key, known_hosts=testbed.known_hosts,
        partition="debug", scratch_dir=f"coop-test-{run_id}",
    )  # fmt: skip
    watcher = Connection(testbed.target)
    yield {"config": config, "target": testbed.target, "run_id": run_id, "watcher": watcher}
    ours = [e.job_id for e in parse_squeue(watcher.run(commands.squeue(USER)).out) if e.name.startswith(run_id)]
    if ours:
        watcher.run("scancel " + " ".join(ours), check=False)
    watcher.run(f"rm -rf -- coop-test-{run_id}", check=False)
    watcher.close()


def launch(ref: str, command: str = "sleep 300") -> Launch:
    return Launch(ref=ref, command=command, env={}, workdir=None, node_resource="", gpus=0, cpus=1, grace_s=1)


def named(watcher: Connection, ref: str) -> list[str]:
    """Job ids Slurm holds under the name ``ref``, still queued or running."""
    entries = parse_squeue(watcher.run(commands.squeue(USER, [ref])).out)
    return [e.job_id for e in entries if e.state in ("PENDING", "RUNNING", "CONFIGURING")]


def test_a_lost_sbatch_reply_finds_the_job_instead_of_failing_the_launch(pool: dict[str, Any]) -> None:
    backend = SlurmBackend("p", pool["config"], LosesSbatchReplies(pool["target"]))
    ref = f"{pool['run_id']}-7-1"
    try:
        backend.submit(launch(ref))  # without the lookup this raises, and the attempt would be LOST
        assert len(named(pool["watcher"], ref)) == 1
        assert backend.status(ref).state in ("PENDING", "RUNNING")
    finally:
        backend.close()


def test_a_new_attempt_cancels_what_an_earlier_one_left_queued(pool: dict[str, Any]) -> None:
    backend = SlurmBackend("p", pool["config"], Connection(pool["target"]))
    first, second = f"{pool['run_id']}-8-1", f"{pool['run_id']}-8-2"
    other_job = f"{pool['run_id']}-18-1"  # another Coop job whose name shares a prefix: left alone
    try:
        backend.submit(launch(first))
        backend.submit(launch(other_job))
        assert named(pool["watcher"], first) and named(pool["watcher"], other_job)
        backend.submit(launch(second))
        wait_for(lambda: not named(pool["watcher"], first), timeout=30, what="the stray first attempt cancelled")
        assert len(named(pool["watcher"], second)) == 1
        assert len(named(pool["watcher"], other_job)) == 1
    finally:
        backend.close()


class Forgetful(SlurmBackend):
    """A site without accounting, after ``MinJobAge``: neither squeue nor sacct lists the job any
    more (the test cluster keeps jobs for an hour, so this forgetting is what is simulated)."""

    def _find(self, ref: str, fresh: bool = False) -> None:  # type: ignore[override]
        return None

    def _sacct(self, ref: str) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(("command", "state", "code"), [("true", "SUCCEEDED", 0), ("exit 3", "FAILED", 3)])
def test_a_job_slurm_has_forgotten_ends_by_the_exit_code_it_left(
    pool: dict[str, Any], command: str, state: str, code: int
) -> None:
    backend = SlurmBackend("p", pool["config"], Connection(pool["target"]))
    ref = f"{pool['run_id']}-9-1"
    try:
        backend.submit(launch(ref, command))
        wait_for(lambda: backend.status(ref).state not in ("PENDING", "RUNNING"), timeout=60, what="the job to end")
        assert backend.status(ref).state == state  # what Slurm itself says, while it still remembers
        forgotten = Forgetful("p", pool["config"], backend.conn).status(ref)
        assert (forgotten.state, forgotten.exit_code) == (state, code)
        never = Forgetful("p", pool["config"], backend.conn).status(f"{pool['run_id']}-10-1")
        assert never.state == "MISSING"  # no file either: still MISSING, and the attempt is LOST
    finally:
        backend.close()


def test_a_cancelled_job_gets_sigterm_and_time_to_save_on_the_real_cluster(pool: dict[str, Any]) -> None:
    backend = SlurmBackend("p", pool["config"], Connection(pool["target"]))
    ref = f"{pool['run_id']}-11-1"
    command = "trap 'sleep 1; echo saved > ../saved; exit 143' TERM; echo started; while :; do sleep 0.2; done"
    try:
        backend.submit(launch(ref, command))
        wait_for(lambda: b"started" in backend.read_logs(ref, 0).data, timeout=60, what="the job to start")
        backend.stop(ref)
        wait_for(lambda: backend.status(ref).state not in ("PENDING", "RUNNING"), timeout=60, what="the job to end")
        job_dir = backend.job_dir(ref)
        assert backend.conn.read(f"{job_dir}/saved") == b"saved\n"  # its handler ran to the end
        assert backend.conn.read(f"{job_dir}/{EXIT_STATUS}") == b"143\n"
    finally:
        backend.close()


def test_logs_are_read_from_an_offset_over_the_one_connection(pool: dict[str, Any]) -> None:
    """Only what is past the offset comes back; a read holds at most ``log_read_limit`` bytes and says
    when there is more; a job still queued (no output file yet) reads as nothing."""
    backend = SlurmBackend("p", pool["config"], Connection(pool["target"]))
    ref = f"{pool['run_id']}-12-1"
    gate = f"{backend.scratch()}/gate-12"
    command = f"echo 'first line'; while [ ! -e {gate} ]; do sleep 0.1; done; echo 'second $HOME line'"
    try:
        assert backend.read_logs(ref, 0).data == b""  # not submitted: no file
        backend.submit(launch(ref, command))
        first = wait_for(lambda: (r := backend.read_logs(ref, 0)).data and r, timeout=60, what="the first line")
        assert (first.data, first.next_offset, first.more) == (b"first line\n", 11, False)
        assert backend.read_logs(ref, 11) == LogRead(b"", 11)  # nothing new yet
        backend.conn.write(gate, b"")
        wait_for(lambda: backend.status(ref).state not in ("PENDING", "RUNNING"), timeout=60, what="the job to end")
        assert backend.read_logs(ref, 11) == LogRead(b"second $HOME line\n", 29)  # only the new bytes
        backend.log_read_limit = 8
        chunks = [backend.read_logs(ref, offset) for offset in (0, 8, 16, 24)]
        assert [c.data for c in chunks] == [b"first li", b"ne\nsecon", b"d $HOME ", b"line\n"]
        assert [c.more for c in chunks] == [True, True, True, False]
        assert [c.next_offset for c in chunks] == [8, 16, 24, 29]
        assert backend.read_logs(ref, 1000) == LogRead(b"", 1000)  # past the end: nothing
    finally:
        backend.close()
