"""Job arrays on a real Ray cluster (fake GPUs) under the coordinator's own loops: a large array runs
to completion; a matrix array's tasks see their index and values, at most max_parallel at once.

Each task is one Ray job, and Ray starts a supervisor process per job: on a 2-core machine a task costs
about 1 s of the cluster's time however small it is, so a 1,000-task array takes over 20 minutes there,
more than the suite's budget. The suite runs 40 tasks; ``COOP_E2E_ARRAY_TASKS=1000`` runs the full size
(measured by hand; the figure is in docs/architecture.md#job-arrays).

Run with ``flock /tmp/coop-ray.lock`` in front of pytest: Ray clusters never run side by side here.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

import pytest

from coop.client import CoopClient
from tests.conftest import TERMINAL, wait_for
from tests.e2e.conftest import Coop

pytestmark = pytest.mark.ray
TASKS = int(os.environ.get("COOP_E2E_ARRAY_TASKS", "40"))


def wait_array(client: CoopClient, array_id: int, timeout: float) -> dict[str, Any]:
    """Poll the array until every task ended; its last state."""

    def ended() -> dict[str, Any] | None:
        array = client.array(array_id)
        return array if set(array["counts"]) <= TERMINAL else None

    return wait_for(ended, timeout=timeout, interval=1, what=f"array {array_id} to end")  # type: ignore[return-value]


@pytest.mark.timeout(max(600, TASKS * 4))
def test_a_large_array_runs_to_completion(coop: Coop) -> None:
    for name in ("cpu-a", "cpu-b"):
        coop.add_node(name, "lab-a", gpus=0, cpus=4)
    researcher = coop.member("lab-b")
    started = time.monotonic()
    array = researcher.submit_array({"name": "many", "run": "true", "workdir": None, "array": TASKS})
    accepted = time.monotonic() - started
    done = wait_array(researcher, array["id"], timeout=TASKS * 4)
    took = time.monotonic() - started
    print(f"\n{TASKS} tasks: accepted in {accepted:.2f} s, all ended in {took:.0f} s ({TASKS / took:.2f} tasks/s)")
    assert done["counts"] == {"SUCCEEDED": TASKS} and done["state"] == "SUCCEEDED"
    tasks = researcher.array_tasks(array["id"])
    assert sorted(t["array_index"] for t in tasks) == list(range(TASKS))
    nodes = {coop.job(t["id"])["attempts_detail"][-1]["node_id"] for t in tasks[:: max(1, TASKS // 50)]}
    assert nodes == {coop.nodes["cpu-a"].id, coop.nodes["cpu-b"].id}  # placed as any jobs, on both nodes


def test_a_matrix_array_sees_its_values_at_most_max_parallel_at_once(coop: Coop) -> None:
    coop.add_node("box", "lab-a", gpus=2, cpus=8)
    researcher = coop.member("lab-b")
    spec = {
        "name": "sweep",
        "kind": "eval",
        "run": 'echo "task $COOP_ARRAY_INDEX of $COOP_ARRAY_SIZE: $COOP_ARRAY_MODEL on $COOP_ARRAY_TASK"',
        "resources": {"gpus": 1},
        "workdir": None,
        "array": {"model": ["qwen", "llama"], "task": ["mmlu", "gsm8k", "arc"]},
        "max_parallel": 2,
    }
    array = researcher.submit_array(spec)
    assert wait_array(researcher, array["id"], timeout=180)["counts"] == {"SUCCEEDED": 6}

    spans = []
    for task in researcher.array_tasks(array["id"]):
        values = task["array_values"]
        said = f"task {task['array_index']} of 6: {values['model']} on {values['task']}"
        assert said in researcher.logs(task["id"])["data"]
        for attempt in coop.job(task["id"])["attempts_detail"]:
            spans.append(
                (datetime.fromisoformat(attempt["started_at"]), datetime.fromisoformat(attempt["finished_at"]))
            )
    most = max(sum(1 for s, e in spans if s <= at < e) for at, _ in spans)
    assert most <= 2, f"{most} tasks ran at once (max_parallel: 2)"
