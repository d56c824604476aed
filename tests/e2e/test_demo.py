"""``coop up --demo`` as a newcomer runs it (``make demo``): a Ray head, a coordinator and an agent on
this machine, the LoRA fine-tune and its eval. The person must see the jobs' own output as it comes
(loss lines while the fine-tune runs, the eval's held-out result), then the ledger per job; and the
demo must stop only its own Ray, not a bystander's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.agent.ray_head import ray_head
from tests.conftest import require_sandbox, wait_for
from tests.e2e.conftest import stop_coop_up

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]  # the whole demo: about 2-3 minutes on 2 idle cores


def _lines(proc: subprocess.Popen[str], seen: list[tuple[float, str]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append((time.monotonic(), line.rstrip("\n")))


def _state_when(url: str, token: str, job_id: int) -> str:
    job = httpx.get(f"{url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    return str(job["state"])


def test_demo_shows_the_jobs_output_and_the_ledger_per_job(tmp_path: Path) -> None:
    require_sandbox()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "COOP_"))}
    env |= {"HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with ray_head() as bystander:  # someone else's Ray on the same machine: the demo must leave it alone
        bystander_pids = {
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if str(bystander.temp_dir) in " ".join(p.info["cmdline"] or [])
        }
        assert bystander_pids
        proc = subprocess.Popen(
            [sys.executable, "-m", "coop.cli.main", "up", "--demo", "--data-dir", str(tmp_path / "up")],
            env=env,
            cwd=tmp_path,  # where the demo pulls the adapter to
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen: list[tuple[float, str]] = []
        reader = threading.Thread(target=_lines, args=(proc, seen), daemon=True)
        reader.start()
        try:
            text = lambda: "\n".join(line for _, line in seen)  # noqa: E731
            found = wait_for(lambda: re.search(r"export COOP_URL=(\S+) COOP_TOKEN=(\S+)", text()), 240, 0.2, "coop up")
            url, token = found.group(1), found.group(2)
            # the dashboard's login link, for the same researcher, served by the coordinator itself
            assert f"dashboard: {url}/ui/#token={token} " in text(), text()
            page = httpx.get(url + "/ui/")
            assert page.status_code == 200 and "<html" in page.text.lower(), page.text[:200]
            # the first loss line arrives while the fine-tune still runs: logs stream, not dumped at the end
            wait_for(lambda: "pretrain loss" in text(), 300, 0.1, "the fine-tune's first loss line")
            assert _state_when(url, token, 1) == "RUNNING", text()
            # no Coop token in any command line (ps shows them to every user of the machine)
            argv = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
            assert not [a for a in argv if re.search(r"coop_[A-Za-z0-9_-]{20,}", a)], "a token is visible in ps"
            assert proc.wait(timeout=600) == 0, text()
        finally:
            stop_coop_up(proc)
        reader.join(timeout=10)
        out = text()
        still_there = [pid for pid in bystander_pids if psutil.pid_exists(pid)]
        assert sorted(still_there) == sorted(bystander_pids), "coop up stopped a Ray it did not start"
        assert bystander.nodes(), "the bystander's Ray cluster no longer answers"

    # the fine-tune's own progress, then the eval's held-out result
    losses = re.findall(r"step +\d+/\d+ (?:pretrain|lora) +loss (\d+\.\d+)", out)
    assert len(losses) >= 10, out
    assert out.index("pretrain loss") < out.index("job 1 SUCCEEDED"), out
    assert re.search(r"base \+ LoRA adapter +\d+\.\d+", out), out
    assert "PASSED: the adapter lowers the held-out loss" in out, out
    # the fine-tune's outputs came back through the store: the adapter, pulled and verified
    pulled = tmp_path / "demo-outputs" / "lora-tiny-finetune" / "adapter"
    assert f"the LoRA adapter is in {pulled}/" in out, out
    assert sorted(p.name for p in pulled.iterdir()) == ["adapter.pt", "base.pt", "meta.json"]
    assert json.loads((pulled / "meta.json").read_text())["job_id"] in (1, "1")
    # the ledger per job, readable: one row per job and kind, amounts written out (no 1e-06)
    ledger = out[out.index("== the ledger, per job") :]
    for job, name in ((1, "lora-tiny-finetune"), (2, "lora-tiny-eval")):  # what one spent, the other earned
        spent = re.search(rf"^\s*{job}\s+{name}\s+spent running it\s+-(0\.\d+)", ledger, re.M)
        earned = re.search(rf"^\s*{job}\s+{name}\s+earned hosting it\s+\+(0\.\d+)", ledger, re.M)
        assert spent and earned and spent.group(1) == earned.group(1), ledger
    assert not re.search(r"\de-0\d", ledger), ledger
    # the donor's idle credit, as the ledger has it: an amount on a GPU machine, else none and why
    idle = re.search(r"the donor's idle credit: (\+\d\.\d+ credits for|none, honestly: only idle GPUs earn it)", ledger)
    assert idle, ledger
    # nothing of the demo's own Ray is left running
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "cooprayup" in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, [p.info["cmdline"][:3] for p in leftovers]
