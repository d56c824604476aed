"""Gang jobs on a real Ray cluster: two nodes of two members run one job together (a torch.distributed
gloo all-reduce), a gang that cannot fit waits whole, and an owner taking one node back requeues it."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from coop.server.backends import rank_ref
from coop.spec import parse_job_yaml
from tests.conftest import charged, wait_for
from tests.e2e.conftest import Coop, pack
from tests.e2e.test_run_on_ray import ran_on

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
GANG_DIR = Path(__file__).parent.parent / "data" / "jobs" / "gang"
EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "multinode"


def upload(coop: Coop, member: str, folder: Path) -> str:
    client = coop.member(member)
    data = pack(folder)
    sha = hashlib.sha256(data).hexdigest()
    if not client.has_workdir(sha):
        client.upload_workdir(sha, data)
    return sha


def submit_gang(coop: Coop, member: str, name: str, nodes: int = 2, **env: str) -> int:
    spec = {
        "name": name,
        "run": f"{sys.executable} allreduce.py",
        "resources": {"gpus": 1, "cpus": 1, "nodes": nodes},
        "env": env,
    }
    return int(coop.member(member).submit(spec, workdir_sha256=upload(coop, member, GANG_DIR))["id"])


def ray_states(coop: Coop) -> dict[str, str]:
    return {j.submission_id: str(j.status) for j in coop.ray_jobs() if j.submission_id}


def test_a_two_node_gang_all_reduces_across_two_members_nodes(coop: Coop) -> None:
    a = coop.add_node("gang-a", "lab-a", gpus=1)
    b = coop.add_node("gang-b", "lab-b", gpus=1)
    job = submit_gang(coop, "lab-c", "allreduce")
    done = coop.wait_state(job, "SUCCEEDED", timeout=120)
    (attempt,) = done["attempts_detail"]
    assert sorted(node_id for node_id, _ in attempt["gang"]) == sorted([a.id, b.id])
    ref = attempt["backend_ref"]
    assert ref.endswith("-x2")
    for rank, (node_id, _) in enumerate(attempt["gang"]):  # each rank really ran on its own node
        assert ran_on(coop, rank_ref(ref, rank)) == {f"coop_node_{node_id}"}
    researcher = coop.member("lab-c")
    logs = [researcher.logs(job, rank=rank)["data"] for rank in (0, 1)]
    for rank, log in enumerate(logs):
        assert f"rank {rank} of 2: attempt 1" in log, log
        assert f"rank {rank}: sum 3" in log, log  # 1 + 2, from both ranks
    assert "only rank 0 sends checkpoints and outputs" in logs[1]
    (outputs,) = researcher.job(job)["outputs"]
    (item,) = outputs["items"]
    assert (item["path"], item["sha256"]) == ("sum.txt", hashlib.sha256(b"3\n").hexdigest())
    with pytest.raises(Exception, match="no rank 2"):
        researcher.logs(job, rank=2)

    # the ledger: the researcher paid for both ranks, each node's donor earned for its own GPU
    def entries(member: str, kind: str) -> list[dict[str, Any]]:
        history = coop.admin.balance(member, history=True)["history"]
        return [e for e in history if e["kind"] == kind and e["job_id"] == job]

    wait_for(lambda: charged(done, coop.admin.balance("lab-c", history=True)["history"]), 30, what="the run charged")
    spends = entries("lab-c", "spend")
    assert {e["node_id"] for e in spends} == {a.id, b.id}
    earned = {m: sum(e["amount"] for e in entries(m, "earn")) for m in ("lab-a", "lab-b")}
    assert all(amount > 0 for amount in earned.values()), earned
    assert abs(sum(e["amount"] for e in spends) + sum(earned.values())) < 1e-9


def test_a_gang_that_cannot_fit_waits_whole_then_starts(coop: Coop) -> None:
    a = coop.add_node("half-a", "lab-a", gpus=1)
    b = coop.add_node("half-b", "lab-b", gpus=1)
    b.heartbeats.paused = True
    wait_for(lambda: {n["id"]: n["paused"] for n in coop.admin.nodes()}[b.id], timeout=30, what="b paused")
    job = submit_gang(coop, "lab-c", "waits")

    def waiting_reason() -> str | None:
        reason = coop.job(job)["reason"] or ""
        return reason if "needs 2 nodes" in reason else None

    reason = wait_for(waiting_reason, timeout=30, what="the gang's waiting reason")
    assert "1 has room now" in reason and "1 matching node is paused" in reason, reason
    assert coop.job(job)["attempts"] == 0
    started = [sub for sub in ray_states(coop) if sub.startswith(f"{coop.settings.instance}-{job}-")]
    assert started == []  # not one rank was submitted
    b.heartbeats.paused = False
    done = coop.wait_state(job, "SUCCEEDED", timeout=120)
    assert sorted(n for n, _ in done["attempts_detail"][0]["gang"]) == sorted([a.id, b.id])


def test_an_owner_taking_one_node_back_requeues_the_whole_gang(coop: Coop) -> None:
    a = coop.add_node("own-a", "lab-a", gpus=1)
    coop.add_node("own-b", "lab-b", gpus=1)
    c = coop.add_node("own-c", "lab-d", gpus=1)
    job = submit_gang(coop, "lab-c", "preempted", HOLD_FIRST_ATTEMPT="1")
    coop.wait_state(job, "RUNNING", timeout=60)
    researcher = coop.member("lab-c")
    for rank in (0, 1):  # both ranks are in the group: the gang really runs

        def joined(rank: int = rank) -> bool:
            return "joined the group" in researcher.logs(job, rank=rank)["data"]

        wait_for(joined, timeout=60, what=f"rank {rank} to join")
    first: dict[str, Any] = coop.job(job)["attempts_detail"][0]
    owner = next(node for node in (a, c) if node.id in {n for n, _ in first["gang"]})
    owner.heartbeats.paused = True  # that node's owner wants it back: the whole gang stops
    done = coop.wait_state(job, "SUCCEEDED", timeout=150)
    attempts = done["attempts_detail"]
    assert attempts[0]["state"] == "PREEMPTED" and len(attempts) == 2, attempts
    states = ray_states(coop)
    assert all(states[rank_ref(first["backend_ref"], r)] == "STOPPED" for r in (0, 1)), states
    assert owner.id not in {n for n, _ in attempts[1]["gang"]}
    assert "rank 1: sum 3" in researcher.logs(job, attempt=2, rank=1)["data"]


def test_one_rank_failing_stops_the_others_and_fails_the_gang(coop: Coop) -> None:
    coop.add_node("fail-a", "lab-a", gpus=1)
    coop.add_node("fail-b", "lab-b", gpus=1)
    spec = {
        "name": "fails",
        "run": f"{sys.executable} allreduce.py",
        "resources": {"gpus": 1, "nodes": 2},
        "env": {"FAIL_RANK": "1"},
        "retries": 0,
    }
    job = int(coop.member("lab-c").submit(spec, workdir_sha256=upload(coop, "lab-c", GANG_DIR))["id"])
    done = coop.wait_state(job, "FAILED", timeout=120)
    (attempt,) = done["attempts_detail"]
    assert done["exit_code"] == 3 and "rank 1 of 2" in attempt["reason"], attempt
    states = ray_states(coop)
    assert (states[rank_ref(attempt["backend_ref"], 0)], states[rank_ref(attempt["backend_ref"], 1)]) == (
        "STOPPED",
        "FAILED",
    )  # rank 0 was waiting on its peer: it was stopped, not left behind


def test_a_lost_node_loses_the_whole_gang_and_it_runs_again(coop: Coop) -> None:
    nodes = {n.id: n for n in (coop.add_node(f"lost-{x}", f"lab-{x}", gpus=1) for x in "abd")}
    job = submit_gang(coop, "lab-c", "lost", HOLD_FIRST_ATTEMPT="1")
    coop.wait_state(job, "RUNNING", timeout=60)
    first = coop.job(job)["attempts_detail"][0]
    gone = nodes[first["gang"][1][0]]  # rank 1's node stops heartbeating: its agent died
    gone.heartbeats.stop()
    done = coop.wait_state(job, "SUCCEEDED", timeout=150)
    first, second = done["attempts_detail"]
    assert first["state"] == "LOST" and f"node {gone.id}" in first["reason"], first
    assert ray_states(coop)[rank_ref(first["backend_ref"], 0)] == "STOPPED"  # the rank that was fine
    assert gone.id not in {n for n, _ in second["gang"]}


def test_the_torchrun_example_trains_across_two_nodes(coop: Coop) -> None:
    """examples/multinode as a user submits it (torchrun named by the interpreter that runs Ray here)."""
    coop.add_node("ddp-a", "lab-a", gpus=0)
    coop.add_node("ddp-b", "lab-b", gpus=0)
    spec = parse_job_yaml((EXAMPLE / "job.yaml").read_text()).model_dump(mode="json")
    spec["run"] = spec["run"].replace("torchrun", f"{sys.executable} -m torch.distributed.run")
    researcher = coop.member("lab-c")
    job = int(researcher.submit(spec, workdir_sha256=upload(coop, "lab-c", EXAMPLE))["id"])
    done = coop.wait_state(job, "SUCCEEDED", timeout=180)
    assert done["attempts"] == 1, done["attempts_detail"]
    for rank in (0, 1):
        log = researcher.logs(job, rank=rank)["data"]
        assert f"process {rank} of 2 on node {rank} (gloo)" in log, log
        assert f"process {rank}: weight 3.0000" in log, log  # gradients averaged across both nodes
    (outputs,) = researcher.job(job)["outputs"]
    (item,) = outputs["items"]
    expected = json.dumps({"processes": 2, "weight": 3.0}) + "\n"
    assert (item["path"], item["sha256"]) == ("result.json", hashlib.sha256(expected.encode()).hexdigest())
