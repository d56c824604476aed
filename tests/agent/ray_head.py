"""A real Ray head on this machine for agent tests (token auth on, its own temp dir and HOME)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import default_ray_bin
from coop.cli.up import kill_ray_under
from tests.conftest import free_port, wait_for


@dataclass
class RayHead:
    address: str
    token: str
    temp_dir: Path
    env: dict[str, str]

    def nodes(self) -> list[dict[str, Any]]:
        import ray

        return [n for n in ray.nodes() if n.get("Alive")]

    def nodes_with(self, resource: str) -> list[dict[str, Any]]:
        return [n for n in self.nodes() if resource in n.get("Resources", {})]


@contextmanager
def ray_head() -> Iterator[RayHead]:
    """Start ``ray start --head`` (short temp path: Unix socket paths are limited to 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="coopray", dir="/tmp"))
    token = os.environ["RAY_AUTH_TOKEN"]  # the session's (tests/conftest.py)
    env = {
        **os.environ,
        "HOME": str(root),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray_bin = default_ray_bin()
    port = free_port()
    subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=1",
            "--num-gpus=0",
            "--include-dashboard=false",
            f"--temp-dir={root / 't'}",
            "--disable-usage-stats",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    address = (root / "t" / "ray_current_cluster").read_text().strip()
    import ray

    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        wait_for(lambda: ray.nodes(), timeout=30, what="the Ray head")
        yield RayHead(address, token, root / "t", env)
    finally:
        ray.shutdown()
        kill_ray_under(root)  # this head only: `ray stop` would kill every Ray on the machine
        shutil.rmtree(root, ignore_errors=True)
