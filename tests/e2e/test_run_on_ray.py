"""Jobs placed by Coop and run on a real Ray cluster with fake GPUs: placement, preemption, loss, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest
from ray.util.state import list_actors, list_nodes

from coop.client import CoopClient
from tests.conftest import charged, free_port, wait_for
from tests.e2e.conftest import Coop, coop_settings

pytestmark = pytest.mark.ray


def ran_on(coop: Coop, submission_id: str) -> set[str]:
    """The coop_node_* resources of the Ray node whose supervisor ran this submission."""
    actors = list_actors(
        address=coop.dashboard, filters=[("name", "=", f"_ray_internal_job_actor_{submission_id}")], detail=True
    )
    assert actors, f"no supervisor actor for {submission_id}"
    (node,) = [n for n in list_nodes(address=coop.dashboard, detail=True) if n["node_id"] == actors[0]["node_id"]]
    return {r for r in node["resources_total"] if r.startswith("coop_node_")}


def attempt_nodes(coop: Coop, job_id: int) -> list[int]:
    return [a["node_id"] for a in coop.job(job_id)["attempts_detail"]]


def test_placement_respects_memory_count_and_best_fit(coop: Coop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    small = coop.add_node("small-12gb", "lab-a", gpus=1, memory_gb=12, model="RTX 3060")
    mid = coop.add_node("mid-24gb", "lab-a", gpus=1, memory_gb=24)
    big = coop.add_node("big-4x24gb", "lab-b", gpus=4, memory_gb=24)
    gate = tmp_path / "gate"
    env = {"GATE": str(gate)}
    needs_24 = coop.submit("lab-c", "needs-24", gpus=1, env=env, resources={"gpus": 1, "gpu_memory": "24GB", "cpus": 1})
    two = coop.submit("lab-c", "two-gpus", gpus=2, env=env)
    coop.wait_state(needs_24["id"], "RUNNING")
    coop.wait_state(two["id"], "RUNNING")
    assert attempt_nodes(coop, needs_24["id"]) == [mid.id]  # never the 12 GB card; the 24 GB single, not big
    assert attempt_nodes(coop, two["id"]) == [big.id]  # only big has 2 GPUs
    ref = coop.job(two["id"])["attempts_detail"][0]["backend_ref"]
    assert ran_on(coop, ref) == {f"coop_node_{big.id}"}  # Ray really ran it there
    small_job = coop.submit("lab-c", "fits-12", gpus=1, env=env)
    coop.wait_state(small_job["id"], "RUNNING")
    assert attempt_nodes(coop, small_job["id"]) == [small.id]  # best fit: the big node keeps 2 free GPUs
    gate.write_text("go")
    for job in (needs_24, two, small_job):
        done = coop.wait_state(job["id"], "SUCCEEDED")
        assert done["attempts"] == 1
    logs = coop.member("lab-c").logs(two["id"])
    assert "step 5" in logs["data"] and logs["eof"] is True


def test_owner_pause_preempts_and_the_job_resumes_elsewhere(coop: Coop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    donor = coop.add_node("donor-box", "lab-a", gpus=1)
    gate = tmp_path / "gate"
    job = coop.submit("lab-b", "resumable", gpus=1, env={"GATE": str(gate), "STEPS": "3"})
    coop.wait_state(job["id"], "RUNNING")
    wait_for(lambda: "step 3" in coop.member("lab-b").logs(job["id"])["data"], timeout=30, what="3 steps")
    other = coop.add_node("other-box", "lab-c", gpus=1)
    donor.heartbeats.paused = True  # the owner wants the machine back
    wait_for(lambda: coop.job(job["id"])["attempts"] == 2, timeout=60, what="a second attempt")
    gate.write_text("go")
    done = coop.wait_state(job["id"], "SUCCEEDED")
    first, second = done["attempts_detail"]
    assert (first["node_id"], first["state"]) == (donor.id, "PREEMPTED")
    assert "paused" in first["reason"]
    assert second["node_id"] == other.id
    states = [e["to_state"] for e in done["events"]]
    assert states.count("PREEMPTED") == 1 and states[-1] == "SUCCEEDED"
    second_log = coop.member("lab-b").logs(job["id"], attempt=2)["data"]
    assert "resuming from step 3" in second_log  # from its checkpoint, not from scratch

    # the ledger: both donors were paid for their slice of the run, and the sums reconcile
    def entries(member: str, kind: str) -> list[dict]:  # type: ignore[type-arg]
        history = coop.admin.balance(member, history=True)["history"]
        return [e for e in history if e["kind"] == kind and e["job_id"] == job["id"]]

    history = coop.admin.balance
    wait_for(lambda: charged(done, history("lab-b", history=True)["history"]), timeout=30, what="the whole run charged")
    spent = sum(e["amount"] for e in entries("lab-b", "spend"))
    earned = sum(e["amount"] for m in ("lab-a", "lab-c") for e in entries(m, "earn"))
    assert spent < 0 and abs(spent + earned) < 1e-9
    assert coop.admin.balance("lab-b")["balance"] == pytest.approx(spent)  # all it has is this job's spending


def test_a_lost_node_requeues_the_job_which_succeeds_elsewhere(coop: Coop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    doomed = coop.add_node("doomed", "lab-a", gpus=1)
    gate = tmp_path / "gate"
    job = coop.submit("lab-b", "survivor", gpus=1, env={"GATE": str(gate)})
    coop.wait_state(job["id"], "RUNNING")
    assert attempt_nodes(coop, job["id"]) == [doomed.id]
    survivor = coop.add_node("survivor", "lab-c", gpus=1)
    doomed.heartbeats.stop()  # the donor's machine vanishes: no heartbeats, no Ray node
    coop.cluster.remove_node(doomed.ray_node)
    wait_for(lambda: coop.job(job["id"])["attempts"] == 2, timeout=60, what="a requeue")
    gate.write_text("go")
    done = coop.wait_state(job["id"], "SUCCEEDED")
    assert [a["state"] for a in done["attempts_detail"]] == ["LOST", "SUCCEEDED"], done["attempts_detail"]
    assert done["attempts_detail"][1]["node_id"] == survivor.id
    assert "LOST" in [e["to_state"] for e in done["events"]]


def test_exit_code_failure_retries_then_fails(coop: Coop) -> None:
    coop.add_node("box", "lab-a", gpus=1)
    job = coop.submit("lab-b", "broken", gpus=1, env={"EXIT": "3", "STEPS": "1"}, retries_on_failure=1)
    done = coop.wait_state(job["id"], "FAILED")
    assert [a["state"] for a in done["attempts_detail"]] == ["FAILED", "FAILED"]
    assert done["exit_code"] == 3
    assert done["reason"] == "exited with code 3; no retries_on_failure left (1 used)"


def test_a_job_that_fails_on_its_own_runs_once_whatever_its_retries(coop: Coop) -> None:
    """retries are for lost nodes: exit 7 under retries: 2 ran three times; now once, and says why."""
    coop.add_node("box", "lab-a", gpus=1)
    job = coop.submit("lab-b", "exit-7", gpus=1, env={"EXIT": "7", "STEPS": "1"}, retries=2)
    done = coop.wait_state(job["id"], "FAILED")
    assert [a["state"] for a in done["attempts_detail"]] == ["FAILED"]
    assert (done["exit_code"], done["retries"], done["retries_on_failure"]) == (7, 2, 0)
    assert done["reason"] == "exited with code 7; not retried: it failed on its own and retries_on_failure is 0"


def test_cancel_stops_the_running_attempt(coop: Coop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    coop.add_node("box", "lab-a", gpus=1)
    job = coop.submit("lab-b", "endless", gpus=1, env={"GATE": str(tmp_path / "never")})
    coop.wait_state(job["id"], "RUNNING")
    coop.member("lab-b").cancel(job["id"])
    wait_for(
        lambda: coop.job(job["id"])["attempts_detail"][0]["state"] == "CANCELLED",
        timeout=30,
        what="the attempt to stop",
    )
    ref = coop.job(job["id"])["attempts_detail"][0]["backend_ref"]
    assert {j.submission_id: str(j.status) for j in coop.ray_jobs()}[ref].endswith("STOPPED")


def test_coordinator_killed_mid_job_reattaches_and_submits_each_attempt_once(  # type: ignore[no-untyped-def]
    ray_cluster, tmp_path
) -> None:
    """SIGKILL the real `coop server` while a job runs; after the restart the job finishes, and Ray
    saw exactly one submission for its one attempt."""
    cluster, dashboard = ray_cluster
    settings = coop_settings(tmp_path / "data", dashboard)
    env = {
        **os.environ,
        **{f"COOP_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None},
        "COOP_PORT": str(free_port()),
    }
    coop_cmd = [sys.executable, "-m", "coop.cli.main"]
    admin_token = json.loads(
        subprocess.run(
            [*coop_cmd, "admin", "bootstrap", "--json"], env=env, check=True, capture_output=True, text=True
        ).stdout
    )["token"]
    url = f"http://127.0.0.1:{env['COOP_PORT']}"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([*coop_cmd, "server"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _healthy(url), timeout=30, what="coop server")
        return proc

    server = start()
    coop = Coop(url, settings, cluster, dashboard, CoopClient(url, admin_token))
    try:
        node = coop.add_node("box", "lab-a", gpus=1)
        gate = tmp_path / "gate"
        job = coop.submit("lab-b", "long", gpus=1, env={"GATE": str(gate)})
        coop.wait_state(job["id"], "RUNNING")
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        server = start()
        gate.write_text("go")
        done = coop.wait_state(job["id"], "SUCCEEDED")
        assert done["attempts"] == 1
        ours = [j for j in coop.ray_jobs() if (j.submission_id or "").startswith(f"{settings.instance}-")]
        assert [j.submission_id for j in ours] == [f"{settings.instance}-{job['id']}-1"]
        assert node.id == done["attempts_detail"][0]["node_id"]
    finally:
        for n in coop.nodes.values():
            n.heartbeats.stop()
            cluster.remove_node(n.ray_node)
        server.terminate()
        server.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_max_runtime_fails_the_job_without_a_retry(coop: Coop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    coop.add_node("box", "lab-a", gpus=1)
    job = coop.submit("lab-b", "too-slow", gpus=1, env={"GATE": str(tmp_path / "never")}, max_runtime="2s")
    done = coop.wait_state(job["id"], "FAILED")
    assert [a["state"] for a in done["attempts_detail"]] == ["FAILED"]  # retries left, but not used
    assert "max_runtime" in done["reason"]


def _run_seconds(attempt: dict, until: datetime) -> float:  # type: ignore[type-arg]
    start = datetime.fromisoformat(attempt["started_at"])
    end = datetime.fromisoformat(attempt["finished_at"]) if attempt["finished_at"] else until
    return max(0.0, (end - start).total_seconds())


def test_fair_share_flood_splits_the_pool_evenly_and_the_richer_member_goes_first(coop: Coop) -> None:
    """Two members with equal shares flood a pool of 2 GPUs donated by a third; lab-a's jobs are all
    older. FIFO would run every lab-a job first; fair share alternates, so at every point (here: when
    half the jobs are done) their GPU-hours are within 10% of each other. lab-b holds more credit, so
    with equal usage its job is placed first."""
    pool = [coop.add_node(f"shared-{i}", "lab-x", gpus=1) for i in range(2)]
    for n in pool:  # hold placement until both floods are queued
        coop.admin.node_action(n.id, "drain")
    coop.member("lab-a"), coop.member("lab-b")
    coop.admin.grant("lab-b", 5.0, "a larger balance")
    per_member, env = 5, {"STEPS": "8", "STEP_S": "0.25"}
    jobs = {m: [coop.submit(m, f"flood-{m}-{i}", env=env)["id"] for i in range(per_member)] for m in ("lab-a", "lab-b")}
    for n in pool:
        coop.admin.node_action(n.id, "undrain")
    every = jobs["lab-a"] + jobs["lab-b"]

    def half_done() -> list[dict] | None:  # type: ignore[type-arg]
        details = [coop.job(j) for j in every]
        return details if sum(d["state"] == "SUCCEEDED" for d in details) >= per_member else None

    details = wait_for(half_done, timeout=120, interval=0.1, what="half the flood to finish")
    now = datetime.now(UTC)
    used = {m: 0.0 for m in jobs}
    for d in details:
        member = "lab-a" if d["id"] in jobs["lab-a"] else "lab-b"
        used[member] += sum(_run_seconds(a, now) for a in d["attempts_detail"])
    assert abs(used["lab-a"] - used["lab-b"]) <= 0.1 * max(used.values()), used
    firsts = sorted((d["attempts_detail"][0]["started_at"], d["id"]) for d in details if d["attempts_detail"])
    assert firsts[0][1] in jobs["lab-b"]  # equal usage: the higher balance is placed first
    for j in every:
        assert coop.wait_state(j, "SUCCEEDED")["attempts"] == 1

    def settled() -> tuple[dict[str, float], float] | None:
        """Spent and earned once the ledger has charged every finished run (it accrues each 0.5 s,
        so the last slices may land between one member's reading and the next)."""
        balances = {m: coop.admin.balance(m, history=True, limit=10_000) for m in ("lab-a", "lab-b", "lab-x")}

        def total(member: str, kind: str) -> float:
            return sum(e["amount"] for e in balances[member]["history"] if e["kind"] == kind)

        spent, earned = {m: -total(m, "spend") for m in ("lab-a", "lab-b")}, total("lab-x", "earn")
        return (spent, earned) if earned == pytest.approx(sum(spent.values()), rel=1e-6) else None

    spent, earned = wait_for(settled, timeout=30, interval=0.5, what="every credit spent to be earned")
    assert abs(spent["lab-a"] - spent["lab-b"]) <= 0.1 * max(spent.values()), spent


def test_the_donors_own_job_takes_its_node_back_from_a_guest(coop: Coop, tmp_path) -> None:  # type: ignore[no-untyped-def]
    donor = coop.add_node("donor-own", "lab-a", gpus=1)
    gate = tmp_path / "gate"
    guest = coop.submit("lab-b", "guest", env={"GATE": str(gate), "STEPS": "2"}, preemptible=False)
    coop.wait_state(guest["id"], "RUNNING")
    # both steps checkpointed before the owner comes (RUNNING alone raced the second step)
    wait_for(lambda: "step 2" in coop.member("lab-b").logs(guest["id"])["data"], timeout=30, what="2 steps")
    own = coop.submit("lab-a", "own", env={"STEPS": "2"})
    done = coop.wait_state(own["id"], "SUCCEEDED")  # even a non-preemptible guest gives way to the owner
    assert [a["node_id"] for a in done["attempts_detail"]] == [donor.id]
    gate.write_text("go")
    back = coop.wait_state(guest["id"], "SUCCEEDED")
    first, second = back["attempts_detail"]
    assert first["state"] == "PREEMPTED" and f"needs its own node donor-own for its job {own['id']}" in first["reason"]
    assert second["node_id"] == donor.id
    assert "resuming from step 2" in coop.member("lab-b").logs(guest["id"], attempt=2)["data"]
