"""Fixtures for the deployment tests: a throwaway CA, and real ``coop server`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coop.client import tls_verify
from tests.conftest import free_port, wait_for
from tests.deploy.pki import Pki, make_pki

COOP = str(Path(sys.executable).with_name("coop"))
AGENT = str(Path(sys.executable).with_name("coop-agent"))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Coop setting the developer's shell may hold."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COOP_URL", "COOP_TOKEN", "COOP_CA_FILE", "COOP_AGENT_"))
    }
    env.pop("COOP_DATABASE_URL", None)
    env.pop("COOP_DATA_DIR", None)
    return env | extra


def coop(*args: str, env: dict[str, str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([COOP, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"coop {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@dataclass
class Server:
    url: str  # what the server itself serves (https:// with --tls-cert)
    port: int
    env: dict[str, str]  # COOP_DATA_DIR / COOP_DATABASE_URL: what it runs on
    admin_token: str
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    folder: Path, env: dict[str, str], tls: Pki | None = None, bootstrap: bool = True, name: str = "127.0.0.1"
) -> Server:
    """``coop server`` as a process on a free loopback port: the command the systemd unit runs."""
    port = free_port()
    args = [COOP, "server", "--port", str(port)]
    if tls is not None:
        args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    admin_token = ""
    if bootstrap:
        admin_token = json.loads(coop("admin", "bootstrap", "--json", env=env).stdout)["token"]
    log = folder / f"server-{port}.log"
    proc = subprocess.Popen(args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"{'https' if tls else 'http'}://{name}:{port}"  # name: what the certificate names

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"coop server exited {proc.returncode}:\n{log.read_text()}")
        try:
            return (
                httpx.get(url + "/v1/health", verify=tls_verify(tls.ca if tls else None), timeout=2).status_code == 200
            )
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, interval=0.2, what="coop server to answer")
    return Server(url, port, env, admin_token, log, proc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A coordinator serving HTTPS itself (``coop server --tls-cert --tls-key``) on SQLite."""
    folder = tmp_path_factory.mktemp("tls-server")
    server = start_server(folder, clean_env(COOP_DATA_DIR=str(folder / "data")), tls=pki)
    yield server
    server.stop()
