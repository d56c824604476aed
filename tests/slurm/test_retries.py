"""On a real Slurm pool: a job that fails on its own (exit 7) runs once under the default retries, and
``retries_on_failure`` gives it more attempts. Lost nodes (NODE_FAIL) spend ``retries`` instead:
tests/slurm/test_failures.py; every Slurm state's side in tests/scheduler/test_retries.py."""

from __future__ import annotations

import pytest

from tests.slurm.conftest import Hpc

pytestmark = pytest.mark.slurm


def test_a_failing_job_is_retried_only_on_failure_retries(hpc: Hpc) -> None:
    client, _ = hpc.member("fay")
    run = 'echo "attempt $COOP_ATTEMPT"; exit 7'
    once = client.submit({"name": "exit-7", "run": run, "retries": 2, "resources": {"tier": "hpc"}})
    twice = client.submit({"name": "exit-7-again", "run": run, "retries_on_failure": 1, "resources": {"tier": "hpc"}})
    done = hpc.wait_state(once["id"], "FAILED", timeout=90)
    assert [a["state"] for a in done["attempts_detail"]] == ["FAILED"]
    assert done["exit_code"] == 7 and "not retried: it failed on its own and retries_on_failure is 0" in done["reason"]
    done = hpc.wait_state(twice["id"], "FAILED", timeout=90)
    assert [(a["state"], a["exit_code"]) for a in done["attempts_detail"]] == [("FAILED", 7), ("FAILED", 7)]
    assert "no retries_on_failure left (1 used)" in done["reason"]
    assert client.logs(twice["id"], attempt=2)["data"] == "attempt 2\n"
