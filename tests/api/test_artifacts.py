"""The data plane over HTTP: an attempt's wrapper sends its outputs and checkpoints with its own
credential (``coop.transfer.Sender``, the code the wrapper runs), the job's next attempt restores the
checkpoint, the researcher pulls the outputs (``coop pull``), and nothing crosses members. A real
coordinator (uvicorn) on SQLite and PostgreSQL; the backend is the in-process stand-in (Ray is not
what is under test here: tests/e2e/test_data_plane.py runs it on Ray)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from coop.client import CoopClient, CoopError
from coop.server import security
from coop.server.models import ArtifactFile, ArtifactSet, Attempt, Job, utcnow
from coop.server.services import artifacts, attempts, scheduling
from coop.server.store import BlobStore
from coop.states import AttemptState
from coop.transfer import Sender
from tests.api.helpers import job_spec, node
from tests.conftest import POSTGRES_URL, Coordinator, loopless_coordinator, own_postgres, wait_for
from tests.observability.cooperative import InProcessBackend


class RecordingBackend(InProcessBackend):
    """Keeps each launch: the test plays the wrapper with the credential the launch carries."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: dict[str, object] = {}

    def submit(self, launch):  # type: ignore[no-untyped-def]
        self.launches[launch.ref] = launch
        super().submit(launch)


@dataclass
class Plane:
    c: Coordinator
    backend: RecordingBackend
    researcher: CoopClient
    job_id: int

    def launch(self) -> tuple[Attempt, str]:
        """Place the job and return its attempt and the credential its wrapper got."""
        with Session(self.c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, self.c.settings, self.backend)
            attempt = session.exec(
                select(Attempt).where(Attempt.job_id == self.job_id).order_by(Attempt.number.desc())  # type: ignore[attr-defined]
            ).first()
        assert attempt is not None and attempt.backend_ref in self.backend.launches
        return attempt, self.backend.launches[attempt.backend_ref].transfer_token  # type: ignore[attr-defined]

    def sender(self, token: str) -> Sender:
        return Sender(self.c.url, token)

    def end(self, attempt: Attempt, how: str) -> None:
        self.backend.runs[attempt.backend_ref or ""] = how
        with Session(self.c.engine, expire_on_commit=False) as session:
            scheduling.reconcile(session, self.c.settings, self.backend)

    @property
    def store(self) -> BlobStore:
        return BlobStore(self.c.settings.store_dir, int(self.c.settings.max_artifact_gb * 1e9))


@pytest.fixture(params=["sqlite", "postgres"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Plane]:
    url = None
    if request.param == "postgres":
        url = own_postgres(f"{make_url(POSTGRES_URL or '').database}_artifacts")
    with loopless_coordinator(tmp_path / "coop", url, checkpoint_sync_s=30) as c:
        c.new_member("alice")
        researcher = c.new_member("bob")[0]
        c.agent("alice").register_node(node("n1", gpus=1))
        job_id = researcher.submit(job_spec("ft", 1))["id"]
        yield Plane(c, RecordingBackend(), researcher, job_id)


def write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_outputs_come_back_and_the_researcher_pulls_them_verified(plane: Plane, tmp_path: Path) -> None:
    attempt, token = plane.launch()
    outputs = tmp_path / "node-a" / "output"
    write(outputs, {"adapter/model.bin": os.urandom(3_000_000), "metrics.json": b'{"loss": 0.12}\n'})
    sender = plane.sender(token)
    done = sender.send(outputs, "output")
    assert done is not None and done["files"] == 2 and done["bytes"] == 3_000_000 + 15
    plane.end(attempt, "SUCCEEDED")

    job = plane.researcher.job(plane.job_id)
    [listed] = job["outputs"]
    assert listed["attempt"] == 1
    assert {(f["path"], f["size"], f["sha256"]) for f in listed["items"]} == {
        (p.relative_to(outputs).as_posix(), p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in outputs.rglob("*")
        if p.is_file()
    }
    pulled = tmp_path / "laptop"
    result = run_cli(plane, "pull", str(plane.job_id), "--to", str(pulled), "--json")
    assert result.returncode == 0, result.stderr
    for p in outputs.rglob("*"):
        if p.is_file():
            assert (pulled / p.relative_to(outputs)).read_bytes() == p.read_bytes()
    assert not list(pulled.rglob("*.part"))
    status = run_cli(plane, "status", str(plane.job_id))
    assert "adapter/model.bin" in status.stdout and "metrics.json" in status.stdout, status.stdout


def test_a_checkpoint_follows_the_job_to_its_next_attempt(plane: Plane, tmp_path: Path) -> None:
    first, token = plane.launch()
    node_a = tmp_path / "node-a" / "ckpt"
    write(node_a, {"step-100.pt": b"A" * 100_000, "state.json": b'{"step": 100}'})
    sender = plane.sender(token)
    sender.send(node_a, "checkpoint")
    write(node_a, {"step-200.pt": b"B" * 100_000, "state.json": b'{"step": 200}'})
    (node_a / "step-100.pt").unlink()  # the job keeps only its last checkpoint
    sent_before = sender.sent_bytes
    sender.send(node_a, "checkpoint")
    assert sender.sent_bytes - sent_before == 100_000 + 13, "only the changed files are sent again"
    plane.end(first, "LOST")  # its node died: the job is requeued, onto another member's machine
    plane.c.agent("carol").register_node(node("n2", gpus=1)) if plane.c.new_member("carol") else None

    second, token2 = plane.launch()
    assert second.number == 2 and second.node_id != first.node_id and token2 != token
    node_b = tmp_path / "node-b" / "ckpt"  # another machine: nothing of node A's disk
    receiver = plane.sender(token2)
    plan = receiver.plan()
    assert plan["checkpoint"]["attempt"] == 1
    receiver.restore(plan["checkpoint"], node_b)
    assert sorted(p.name for p in node_b.iterdir()) == ["state.json", "step-200.pt"]
    assert (node_b / "state.json").read_bytes() == b'{"step": 200}'
    with Session(plane.c.engine) as session:  # the older sync is gone, and the blob only it held
        sets = session.exec(select(ArtifactSet).where(ArtifactSet.kind == "checkpoint")).all()
        assert len(sets) == 1
    assert not plane.store.has(hashlib.sha256(b"A" * 100_000).hexdigest())
    # the old attempt's credential ends once its end is past the grace
    with Session(plane.c.engine) as session:
        row = session.get(Attempt, first.id)
        assert row is not None and row.state == AttemptState.LOST
        row.finished_at = utcnow() - timedelta(seconds=artifacts.TRANSFER_GRACE_S + 1)
        session.add(row)
        session.commit()
    with pytest.raises(CoopError) as expired:
        sender.plan()
    assert expired.value.status == 401


def test_no_member_reaches_another_members_files(plane: Plane, tmp_path: Path) -> None:
    attempt, token = plane.launch()
    write(tmp_path / "out", {"secret.txt": b"bob's result"})
    plane.sender(token).send(tmp_path / "out", "output")
    file_id = plane.researcher.outputs(plane.job_id)[0]["items"][0]["id"]
    carol = plane.c.new_member("carol")[0]
    for call in (lambda: carol.outputs(plane.job_id), lambda: carol.job(plane.job_id)):
        with pytest.raises(CoopError) as refused:
            call()
        assert refused.value.status == 403
    with pytest.raises(CoopError) as refused, carol.stream(f"/jobs/{plane.job_id}/files/{file_id}") as chunks:
        list(chunks)
    assert refused.value.status == 403
    with pytest.raises(CoopError) as bad, plane.c.client("coopx_1_" + "0" * 64).stream("/transfer/plan"):
        pass
    assert bad.value.status == 401
    # a member token is no transfer credential, and a transfer credential no member token
    with pytest.raises(CoopError) as wrong:
        plane.researcher.request("GET", "/transfer/plan")
    assert wrong.value.status == 401
    with pytest.raises(CoopError) as wrong:
        plane.c.client(token).jobs()
    assert wrong.value.status == 401
    # the wrapper fetches only blobs of its own job's checkpoint
    sha = hashlib.sha256(b"bob's result").hexdigest()
    with pytest.raises(CoopError) as not_ckpt, plane.c.client(token).stream(f"/transfer/blobs/{sha}"):
        pass
    assert not_ckpt.value.status == 404


def test_a_quota_refusal_names_the_quota_and_changes_nothing(plane: Plane, tmp_path: Path) -> None:
    plane.c.admin.set_quota("bob", storage_bytes=1_000_000)
    _, token = plane.launch()
    write(tmp_path / "out", {"big.bin": b"x" * 1_500_000})
    with pytest.raises(CoopError) as refused:
        plane.sender(token).send(tmp_path / "out", "output")
    assert refused.value.status == 422
    assert refused.value.errors[0]["field"] == "storage_quota"
    assert "storage quota is 1000000 bytes" in refused.value.message, refused.value.message
    assert "coop admin quota set bob --storage" in refused.value.errors[0]["fix"]
    with Session(plane.c.engine) as session:
        assert session.exec(select(ArtifactSet)).all() == []
    balance = plane.researcher.balance("bob")
    assert balance["storage_quota_bytes"] == 1_000_000 and balance["storage_used_bytes"] == 0


def test_a_killed_upload_resumes_where_it_stopped(plane: Plane, tmp_path: Path) -> None:
    """The sender is a process of its own, killed (SIGKILL) mid-upload; a new one, as the next
    attempt's wrapper would, sends only the rest, and the blob is whole."""
    _, token = plane.launch()
    out = tmp_path / "out"
    data = os.urandom(48 << 20)
    write(out, {"ckpt.bin": data})
    sha = hashlib.sha256(data).hexdigest()
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_SENDER, plane.c.url, token, str(out)], stderr=subprocess.PIPE, text=True
    )
    upload = f"j{plane.job_id}-{sha[:48]}"
    try:
        wait_for(lambda: plane.store.received(upload) >= 8 << 20, timeout=60, what="the first chunks to arrive")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.stderr is not None
        child.stderr.close()
    had = plane.store.received(upload)
    assert 0 < had < len(data), "the killed sender was cut mid-upload"
    sender = plane.sender(token)
    done = sender.send(out, "checkpoint")
    assert done is not None and done["bytes"] == len(data)
    assert sender.sent_bytes == len(data) - had, "the second sender resumed, it did not start again"
    assert hashlib.sha256(b"".join(plane.store.read(sha))).hexdigest() == sha


def test_expiry_drops_old_outputs_and_their_blobs(plane: Plane, tmp_path: Path) -> None:
    attempt, token = plane.launch()
    write(tmp_path / "out", {"a.txt": b"old result"})
    plane.sender(token).send(tmp_path / "out", "output")
    sha = hashlib.sha256(b"old result").hexdigest()
    with Session(plane.c.engine, expire_on_commit=False) as session:
        assert artifacts.expire(session, plane.c.settings, plane.store) == 0
        later = utcnow() + timedelta(days=plane.c.settings.artifact_ttl_days + 1)
        assert artifacts.expire(session, plane.c.settings, plane.store, now=later) == 1
        assert session.exec(select(ArtifactFile)).all() == []
    assert not plane.store.has(sha)
    assert plane.researcher.outputs(plane.job_id) == []


def test_the_credential_reaches_no_other_job(plane: Plane, tmp_path: Path) -> None:
    """A second job's attempt cannot commit or append to the first job's set."""
    _, token = plane.launch()
    write(tmp_path / "out", {"a.txt": b"mine"})
    sender = plane.sender(token)
    begun = sender.client.request(
        "POST",
        "/transfer/sets",
        json={"kind": "output", "files": [{"path": "a.txt", "size": 4, "sha256": hashlib.sha256(b"mine").hexdigest()}]},
    )
    other_job = plane.researcher.submit(job_spec("other", 0))["id"]
    with Session(plane.c.engine, expire_on_commit=False) as session:
        job = session.get(Job, other_job)
        assert job is not None
        other = attempts.start(session, job, 1, [], 1, "ray", plane.c.settings.instance)
    other_token = artifacts.credential(security.load_key(plane.c.settings.transfer_key_path), other)
    intruder = plane.sender(other_token).client
    with pytest.raises(CoopError) as refused:
        intruder.request("POST", f"/transfer/sets/{begun['set_id']}/commit")
    assert refused.value.status == 404
    with pytest.raises(CoopError) as refused:
        intruder.request("PATCH", f"/transfer/sets/{begun['set_id']}/blobs/{begun['needed'][0]}?offset=0", content=b"x")
    assert refused.value.status == 404


def test_bad_manifests_name_the_field(plane: Plane) -> None:
    _, token = plane.launch()
    client = plane.sender(token).client
    sha = "0" * 64
    for files, field in (
        ([{"path": "../escape", "size": 1, "sha256": sha}], "path"),
        ([{"path": "/abs", "size": 1, "sha256": sha}], "path"),
        ([{"path": "a", "size": -1, "sha256": sha}], "size"),
        ([{"path": "a", "size": 1, "sha256": "xyz"}], "sha256"),
        ([{"path": "a", "size": 1, "sha256": sha}, {"path": "a", "size": 1, "sha256": sha}], "files"),
    ):
        with pytest.raises(CoopError) as refused:
            client.request("POST", "/transfer/sets", json={"kind": "output", "files": files})
        assert refused.value.status == 422
        assert field in refused.value.errors[0]["field"], refused.value.errors
    with Session(plane.c.engine) as session:
        assert session.exec(select(ArtifactSet)).all() == []


SLOW_SENDER = """
import sys, time
from pathlib import Path
from typing import Any
from coop import transfer
transfer.CHUNK = 1 << 20
sender = transfer.Sender(sys.argv[1], sys.argv[2])
real = sender.client.request
def slow(method, path, **kw):
    if method == "PATCH":
        time.sleep(0.2)  # a slow home connection: the test kills it part-way
    return real(method, path, **kw)
sender.client.request = slow
sender.send(Path(sys.argv[3]), "checkpoint")
"""


def run_cli(plane: Plane, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COOP_URL": plane.c.url, "COOP_TOKEN": token_of(plane.researcher)}
    return subprocess.run(
        [str(Path(sys.executable).parent / "coop"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def token_of(client: CoopClient) -> str:
    return client._http.headers["authorization"].removeprefix("Bearer ")


def test_a_job_takes_an_earlier_jobs_outputs_as_inputs(plane: Plane, tmp_path: Path) -> None:
    upstream, token = plane.launch()
    spec = {**job_spec("eval", 0), "inputs": [{"job": "ft", "to": "finetune"}]}
    downstream = plane.researcher.submit(spec)["id"]
    stored = plane.researcher.job(downstream)["spec"]["inputs"]
    assert stored == [{"job": plane.job_id, "to": "finetune"}], "the name is resolved to the job's id at submit"

    def cycle() -> dict[str, Any]:
        with Session(plane.c.engine, expire_on_commit=False) as session:
            scheduling.cycle(session, plane.c.settings, plane.backend)
        return plane.researcher.job(downstream)

    waiting = cycle()
    assert waiting["state"] == "PENDING" and f"input job {plane.job_id} (ft) is RUNNING" in waiting["reason"]
    write(tmp_path / "out", {"adapter/adapter.pt": b"weights", "adapter/meta.json": b"{}"})
    plane.sender(token).send(tmp_path / "out", "output")
    plane.end(upstream, "SUCCEEDED")
    assert cycle()["state"] == "STARTING", "it starts once its input job SUCCEEDED with outputs"

    attempt = plane.backend.launches[f"{plane.c.settings.instance}-{downstream}-1"]
    receiver = plane.sender(attempt.transfer_token)  # type: ignore[attr-defined]
    plan = receiver.plan()
    [given] = plan["inputs"]
    assert (given["folder"], given["job_id"]) == ("finetune", plane.job_id)
    receiver.restore(given["outputs"], tmp_path / "node-b" / "input" / "finetune")
    assert (tmp_path / "node-b" / "input" / "finetune" / "adapter" / "adapter.pt").read_bytes() == b"weights"


def test_inputs_must_be_the_members_own_jobs_and_exist(plane: Plane) -> None:
    carol = plane.c.new_member("carol")[0]
    for job, message in ((plane.job_id, f"you have no job {plane.job_id}"), ("ft", "you have no job named 'ft'"),
                         (999, "you have no job 999")):  # fmt: skip
        with pytest.raises(CoopError) as refused:
            carol.submit({**job_spec("eval", 0), "inputs": [{"job": job}]})
        assert refused.value.status == 404, refused.value
        assert (refused.value.errors[0]["field"], refused.value.message) == ("spec.inputs[0].job", message)
    assert carol.jobs() == []
    with pytest.raises(CoopError) as hpc:  # Slurm nodes cannot fetch inputs yet: said, not silently skipped
        plane.researcher.submit({**job_spec("eval", 0, tier="hpc"), "inputs": [{"job": "ft"}]})
    assert hpc.value.status == 422 and hpc.value.errors[0]["field"] == "spec.inputs"


def test_a_job_whose_input_failed_fails_saying_why(plane: Plane) -> None:
    upstream, _ = plane.launch()
    downstream = plane.researcher.submit({**job_spec("eval", 0), "inputs": [{"job": plane.job_id}]})["id"]
    plane.researcher.cancel(plane.job_id)
    plane.end(upstream, "STOPPED")
    with Session(plane.c.engine, expire_on_commit=False) as session:
        scheduling.cycle(session, plane.c.settings, plane.backend)
    failed = plane.researcher.job(downstream)
    assert failed["state"] == "FAILED"
    assert failed["reason"] == f"its input job {plane.job_id} ended CANCELLED: there is nothing to give it"
