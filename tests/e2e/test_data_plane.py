"""The data plane on a real Ray cluster: two donated nodes, no path shared between attempts (each
works in a scratch folder of its own, removed when it ends); a job preempted on node A resumes on
node B from the checkpoint its wrapper sent to the coordinator's store, and its researcher pulls
its outputs with their hashes checked."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.e2e.conftest import Coop

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_a_preempted_job_resumes_on_another_node_from_the_store_and_its_outputs_come_back(
    coop: Coop, tmp_path: Path
) -> None:
    node_a = coop.add_node("lab-a-box", "lab-a", gpus=1)
    gate = tmp_path / "gate"
    job = coop.submit("lab-b", "resumable", gpus=1, env={"GATE": str(gate), "STEPS": "3"})["id"]
    researcher = coop.member("lab-b")
    coop.wait_state(job, "RUNNING")
    wait_for(lambda: "step 3" in researcher.logs(job)["data"], timeout=30, what="3 steps")
    node_b = coop.add_node("lab-c-box", "lab-c", gpus=1)
    node_a.heartbeats.paused = True  # its owner wants it back: the job is stopped and sends its checkpoint
    wait_for(lambda: coop.job(job)["attempts"] == 2, timeout=60, what="a second attempt")
    gate.write_text("go")
    done = coop.wait_state(job, "SUCCEEDED")
    first, second = done["attempts_detail"]
    assert (first["node_id"], first["state"], second["node_id"]) == (node_a.id, "PREEMPTED", node_b.id)

    first_log = researcher.logs(job, attempt=1)["data"]
    second_log = researcher.logs(job, attempt=2)["data"]
    assert "coop: checkpoint sent to the store: 1 files" in first_log, first_log
    # attempt 2's checkpoint folder is its own (attempt 1's was removed with its scratch): what it
    # resumed from came through the store
    assert "coop: restored the checkpoint of attempt 1" in second_log, second_log
    assert "resuming from step 3" in second_log, second_log
    assert "coop: outputs sent to the store: 1 files" in second_log, second_log

    listed = researcher.job(job)["outputs"]
    assert [(s["attempt"], [f["path"] for f in s["items"]]) for s in listed] == [(2, ["result.json"])]
    pulled = tmp_path / "laptop"
    env = {**os.environ, "COOP_URL": coop.url, "COOP_TOKEN": researcher._http.headers["authorization"][7:]}
    cli = Path(sys.executable).parent / "coop"
    run = subprocess.run(
        [str(cli), "pull", str(job), "--to", str(pulled)], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert f"in {pulled.resolve()}" in run.stdout, run.stdout
    data = (pulled / "result.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == listed[0]["items"][0]["sha256"]
    assert json.loads(data) == {"steps": 3, "attempt": 2, "resumed_from": 3}

    # a later job takes those outputs as its input, on the other node (B is now its owner's)
    node_a.heartbeats.paused, node_b.heartbeats.paused = False, True
    wait_for(
        lambda: {n["id"]: n["paused"] for n in coop.admin.nodes()} == {node_a.id: False, node_b.id: True},
        timeout=30,
        what="the coordinator to see A resumed and B paused",
    )
    reader = coop.submit(
        "lab-b", "reader", gpus=1, run='cat "$COOP_INPUT_DIR/first/result.json"', inputs=[{"job": job, "to": "first"}]
    )["id"]
    read = coop.wait_state(reader, "SUCCEEDED")
    assert read["attempts_detail"][0]["node_id"] == node_a.id
    reader_log = researcher.logs(reader)["data"]
    assert f"coop: input: job {job}'s outputs (attempt 2, 1 files" in reader_log, reader_log
    assert '{"steps": 3, "attempt": 2, "resumed_from": 3}' in reader_log, reader_log
