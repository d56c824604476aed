"""The agent's token never sits in its command line, where every user of the machine reads it (ps):
``coop-agent join --token-file`` joins a real coordinator, and no process shows the token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import loopless_coordinator, wait_for

H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"


def test_join_with_a_token_file_keeps_the_token_out_of_ps(tmp_path: Path) -> None:
    with loopless_coordinator(tmp_path / "coop") as c:
        c.new_member("alice")
        token = c.admin.create_token(kind="agent", member="alice")["token"]
        token_file = tmp_path / "agent-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("COOP_")}
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.main", "join", "--coordinator", c.url, "--token-file", str(token_file),
             "--state-dir", str(tmp_path / "state"), "--name", "box", "--hardware-from", str(H100_CSV),
             "--no-calibrate"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            (node,) = wait_for(lambda: c.admin.nodes(), timeout=60, what="the agent to register")
            assert node["name"] == "box" and node["member"] == "alice"
            shown = [
                p.info["cmdline"]
                for p in psutil.process_iter(["cmdline"])
                if token in " ".join(p.info["cmdline"] or [])
            ]
            assert shown == []
        finally:
            agent.send_signal(signal.SIGTERM)
            out, _ = agent.communicate(timeout=60)
        assert "--token shows the agent token" not in out  # the warning is for --token only
