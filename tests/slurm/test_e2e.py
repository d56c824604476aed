"""Jobs that go through SSH and a real Slurm: submit, logs, cancel, time limit, quoting, ledger.

The time-limit job is submitted when the module starts and checked last: Slurm checks limits about
every 30 s, so a 1-minute limit ends after 60-90 s, which the other tests use in the meantime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coop.client import CoopClient, CoopError
from coop.schemas import Heartbeat
from tests.conftest import charged, wait_for
from tests.slurm.conftest import Hpc

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def timed(hpc: Hpc) -> int:
    """A job that would sleep 10 minutes, with a 1-minute limit (the shortest Slurm has)."""
    client, _ = hpc.member("tim")
    spec = {"name": "sleepy", "run": "echo started; sleep 600", "max_runtime": "1m", "retries": 2,
            "resources": {"tier": "hpc", "cpus": 1}}  # fmt: skip
    return int(client.submit(spec)["id"])


def test_pool_test_list_and_nodes(hpc: Hpc, timed: int) -> None:
    tested = hpc.cli("admin", "pool", "test", "hpc")
    assert tested.exit_code == 0, tested.output
    assert "RTX4090x2-2cpu-" in tested.stdout and "gpu:rtx4090" in tested.stdout and "1/1" in tested.stdout
    assert "host key: ssh-ed25519 SHA256:" in tested.stdout
    listed = hpc.cli("admin", "pool", "list")
    assert listed.exit_code == 0 and "hpc" in listed.stdout and "cooptest@127.0.0.1:2222" in listed.stdout
    (pool,) = json.loads(hpc.cli("admin", "pool", "list", "--json").stdout)
    assert (pool["state"], pool["max_jobs"], pool["capacity"][0]["gpus"]) == ("ok", 4, 2)
    (node,) = [n for n in hpc.admin.nodes() if n["tier"] == "hpc"]
    assert node["name"].startswith("hpc/RTX4090x2") and node["state"] == "online" and len(node["gpus"]) == 2
    agent = CoopClient(hpc.url, hpc.admin.create_token(kind="agent", member="admin")["token"])
    with pytest.raises(CoopError) as not_an_agents:  # the pool's member owns the class, but no agent runs it
        agent.heartbeat(node["id"], Heartbeat(paused=True))
    assert not_an_agents.value.status == 409
    client, _ = hpc.member("nosy")
    with pytest.raises(CoopError) as denied:
        client.request("GET", "/pools")
    assert denied.value.status == 403


def test_hpc_job_runs_through_slurm_and_its_output_comes_back(hpc: Hpc, tmp_path: Path) -> None:
    _, token = hpc.member("alice")
    (tmp_path / "data.txt").write_text("from the workdir\n")
    (tmp_path / "job.yaml").write_text(
        "name: hello-slurm\nresources:\n  gpus: 1\n  gpu: RTX4090\n  tier: hpc\n  memory: 1GB\n"
        "setup: echo setting up\n"
        'run: |\n  cat data.txt\n  echo "gpus=$CUDA_VISIBLE_DEVICES job=$COOP_JOB_ID attempt=$COOP_ATTEMPT"\n'
        '  echo "ckpt=$COOP_CHECKPOINT_DIR"\n'
        '  mkdir -p "$COOP_OUTPUT_DIR/eval" && echo "accuracy 0.91" > "$COOP_OUTPUT_DIR/eval/score.txt"\n'
    )
    submitted = hpc.cli("submit", tmp_path / "job.yaml", "--follow", token=token)  # streams logs to the end
    assert submitted.exit_code == 0, submitted.output
    assert "setting up" in submitted.stdout and "from the workdir" in submitted.stdout
    job = hpc.cli("status", "--json", token=token)
    (listed,) = json.loads(job.stdout)
    done = hpc.job(listed["id"])
    assert done["state"] == "SUCCEEDED" and done["attempts"] == 1
    (attempt,) = done["attempts_detail"]
    assert attempt["backend"] == "slurm" and attempt["pool_id"] is not None
    assert hpc.slurm_job(attempt["backend_ref"]).state == "COMPLETED"  # type: ignore[union-attr]

    logs = hpc.cli("logs", done["id"], token=token)
    assert logs.exit_code == 0
    lines = logs.stdout.splitlines()
    assert lines[:2] == ["setting up", "from the workdir"]
    assert lines[2].startswith("gpus=") and lines[2] != "gpus=" and f"job={done['id']} attempt=1" in lines[2]
    assert lines[3] == f"ckpt=/home/cooptest/{hpc.scratch}/checkpoints/job-{done['id']}"  # on the cluster

    def entries(member: str, kind: str) -> list[dict[str, Any]]:
        history = hpc.admin.balance(member, history=True)["history"]
        return [e for e in history if e["kind"] == kind and e["job_id"] == done["id"]]

    # the job's member pays, the member holding the allocation (here the admin) earns the same
    history = hpc.admin.balance
    wait_for(lambda: charged(done, history("alice", history=True)["history"]), timeout=20, what="the whole run charged")
    spent = sum(e["amount"] for e in entries("alice", "spend"))
    assert spent < 0 and spent == pytest.approx(-sum(e["amount"] for e in entries("admin", "earn")))

    # its outputs came back from the cluster (SFTP) into the store, and alice pulls them
    [outputs] = done["outputs"]
    assert [(f["path"], f["size"]) for f in outputs["items"]] == [("eval/score.txt", len("accuracy 0.91\n"))]
    pulled = hpc.cli("pull", done["id"], "--to", tmp_path / "pulled", token=token)
    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "pulled" / "eval" / "score.txt").read_text() == "accuracy 0.91\n"


def test_cancel_reaches_scancel(hpc: Hpc) -> None:
    client, token = hpc.member("carol")
    job = client.submit({"name": "long", "run": "echo started; sleep 300", "resources": {"tier": "hpc"}})
    hpc.wait_state(job["id"], "RUNNING")
    wait_for(lambda: "started" in client.logs(job["id"])["data"], timeout=20, what="its first output")
    cancelled = hpc.cli("cancel", job["id"], token=token)
    assert cancelled.exit_code == 0, cancelled.output
    ref = hpc.ref(job["id"])
    wait_for(lambda: (s := hpc.slurm_job(ref)) is not None and s.state == "CANCELLED", timeout=20, what="scancel")
    assert hpc.job(job["id"])["state"] == "CANCELLED"
    wait_for(lambda: hpc.job(job["id"])["attempts_detail"][0]["state"] == "CANCELLED", timeout=20, what="the attempt")


def test_quotes_dollar_backticks_and_newlines_run_exactly_as_written(hpc: Hpc) -> None:
    client, _ = hpc.member("dave")
    nasty = "it's \"quoted\" $(touch PWNED) `touch PWNED2`; exit 3 \\ \n second line $HOME '"
    run = 'printf "[%s]\\n" "$NASTY"\necho \'literal $(touch PWNED3) `touch PWNED4` $HOME\'\necho "sum $((6*7))"'
    with pytest.raises(CoopError) as refused:  # a job's name is a plain word: nothing to quote
        client.submit({"name": "x$(touch PWNED)`id`\n'", "run": "true", "resources": {"tier": "hpc"}})
    assert refused.value.status == 422 and refused.value.errors[0]["field"] == "spec.name"
    job = client.submit({"name": "nasty", "run": run, "env": {"NASTY": nasty}, "resources": {"tier": "hpc"}})
    done = hpc.wait_state(job["id"], "SUCCEEDED")
    expected = f"[{nasty}]\nliteral $(touch PWNED3) `touch PWNED4` $HOME\nsum 42\n"
    assert client.logs(job["id"])["data"] == expected
    work = f"/home/cooptest/{hpc.scratch}/jobs/{done['attempts_detail'][0]['backend_ref']}/work"
    assert hpc.cluster.size(work) is not None  # the job ran there...
    assert [hpc.cluster.size(f"{work}/PWNED{n}") for n in ("", "2", "3", "4")] == [None] * 4  # ...and ran nothing else


def test_time_limit_kill_fails_with_the_reason(hpc: Hpc, timed: int) -> None:
    done = hpc.wait_state(timed, "FAILED", timeout=150)
    (attempt,) = done["attempts_detail"]  # no retry: another attempt would hit the same limit
    assert "time limit" in attempt["reason"] and "TIMEOUT" in attempt["reason"]
    assert "time limit" in done["reason"] and "not retried: another attempt would end the same way" in done["reason"]
    assert hpc.slurm_job(hpc.ref(timed)).state == "TIMEOUT"  # type: ignore[union-attr]
    assert hpc.admin.logs(timed)["data"].startswith("started")


def test_a_checkpoint_written_on_slurm_goes_to_the_store_and_back_to_the_next_attempt(hpc: Hpc, tmp_path: Path) -> None:
    """The first attempt checkpoints and fails; its checkpoint folder comes back to the store (SFTP), and
    the store's last set is placed for the second attempt, which resumes from it."""
    from sqlmodel import Session, select

    from coop.server.db import make_engine
    from coop.server.models import ArtifactFile, ArtifactSet

    _, token = hpc.member("resumer")
    (tmp_path / "job.yaml").write_text(
        "name: ckpt-slurm\nresources:\n  gpus: 1\n  gpu: RTX4090\n  tier: hpc\n  memory: 1GB\nretries_on_failure: 1\n"
        "run: |\n"
        '  if [ -f "$COOP_CHECKPOINT_DIR/state.txt" ]; then echo "resumed: $(cat "$COOP_CHECKPOINT_DIR/state.txt")"\n'
        '  else mkdir -p "$COOP_CHECKPOINT_DIR" && echo "step 7" > "$COOP_CHECKPOINT_DIR/state.txt" && exit 3; fi\n'
    )
    submitted = hpc.cli("submit", tmp_path / "job.yaml", "--follow", token=token)
    job_id = json.loads(hpc.cli("status", "--json", token=token).stdout)[0]["id"]
    done = hpc.job(job_id)
    assert (done["state"], done["attempts"]) == ("SUCCEEDED", 2), submitted.output
    assert "resumed: step 7" in hpc.cli("logs", job_id, "--attempt", "2", token=token).stdout
    engine = make_engine(hpc.settings.resolved_database_url)
    with Session(engine) as session:
        [checkpoint] = session.exec(
            select(ArtifactSet).where(ArtifactSet.job_id == job_id, ArtifactSet.kind == "checkpoint")
        )
        files = session.exec(select(ArtifactFile).where(ArtifactFile.set_id == checkpoint.id)).all()
    engine.dispose()
    assert (checkpoint.attempt, [(f.path, f.size) for f in files]) == (2, [("state.txt", len("step 7\n"))])
    # attempt 1's set was placed on the cluster for attempt 2 (then replaced in the store by attempt 2's)
    folder = f"/home/cooptest/{hpc.scratch}/checkpoints/job-{job_id}"
    assert hpc.cluster.read(f"{folder}.coop-set").decode() == str(checkpoint.id - 1)
