"""A real Prometheus (Debian's package) for the tests: the shipped config and alert rules, pointed
at a test coordinator, scraping and evaluating every second."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port, require_service, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "coop.json"
JOB = "coop-coordinator"
INTERVAL_S = 1


def require_prometheus() -> None:
    require_service(
        bool(shutil.which("prometheus") and shutil.which("promtool")),
        "prometheus/promtool are not installed: run 'bash scripts/services/prometheus.sh up' as root on Debian",
    )


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


def materialise(folder: Path, target: str, token: str) -> Path:
    """The shipped prometheus.yml and alerts.yml in ``folder``, with the token file the config names;
    only the target and the intervals change (1 s, so the tests are quick)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=f"{INTERVAL_S}s", evaluation_interval=f"{INTERVAL_S}s")
    (scrape,) = [s for s in config["scrape_configs"] if s["job_name"] == JOB]
    scrape["scrape_timeout"] = f"{INTERVAL_S}s"
    scrape["static_configs"] = [{"targets": [target]}]
    for rules in config["rule_files"]:
        shutil.copy(PROMETHEUS_DIR / rules, folder / rules)
    (folder / scrape["authorization"]["credentials_file"]).write_text(token + "\n")  # as `install <<<` writes it
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def api(self, path: str, **params: Any) -> Any:
        body = self.http.get(f"/api/v1/{path}", params=params).json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else data["result"]

    def samples(self, expr: str) -> list[tuple[float, float]]:
        """The raw samples of a range selector (``metric{...}[30s]``) of one series, oldest first."""
        result = self.api("query", query=expr)["result"]
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return [(float(t), float(v)) for t, v in result[0]["values"]]


@contextmanager
def running_prometheus(folder: Path, target: str, token: str) -> Iterator[Prometheus]:
    config = materialise(folder, target, token)
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"prometheus exited: {(folder / 'prometheus.log').read_text()}"
            try:
                return prom.http.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout=30, interval=0.1, what="prometheus to be ready")
        yield prom
    finally:
        prom.http.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
