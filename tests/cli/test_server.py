"""coop server: a real process serving the API, telling a newcomer where things are."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_server_serves_and_prints_where_things_are(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COOP_")}
    env["PYTHONPATH"] = str(REPO)  # this checkout, whatever the venv's install points at
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coop.cli.main", "server", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_for(
            lambda: _healthy(f"http://127.0.0.1:{port}") or proc.poll() is not None,
            timeout=60,
            what="coop server to answer",
        )
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert (data / "coop.db").is_file()
    assert f"http://127.0.0.1:{port}/docs" in out
    assert str(data.resolve()) in out
    assert f"COOP_DATA_DIR={data} coop admin bootstrap" in out
    assert "Uvicorn running on" in out  # info-level logs are on
