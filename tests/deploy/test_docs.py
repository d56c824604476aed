"""docs/deploy.md's commands and files, run where a test machine can: its OpenSSL recipe for a
cooperative's own CA (then the CLI logs in over TLS with it), its systemd units (systemd-analyze
verify), and the files it points at."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_service
from tests.deploy.conftest import clean_env, coop, start_server
from tests.deploy.pki import Pki

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
VENV_BIN = Path(sys.executable).parent


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_files_it_points_at_exist() -> None:
    text = DOC.read_text()
    for path in re.findall(r"\b((?:deploy|tests/deploy|docs)/[\w./-]+\w)", text):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"


def test_the_own_ca_recipe_makes_a_certificate_the_cli_trusts(tmp_path: Path) -> None:
    require_service(shutil.which("openssl") is not None, "openssl is not installed")
    (recipe,) = [b for b in _blocks("sh") if b.startswith("DOMAIN=")]
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", recipe], cwd=tmp_path, check=True, env=clean_env(DOMAIN="localhost")
    )
    assert (tmp_path / "coop.key").stat().st_mode & 0o777 == 0o600
    pki = Pki(
        tmp_path / "coop-ca.pem", tmp_path / "coop-fullchain.pem", tmp_path / "coop.key", tmp_path / "coop-ca.pem"
    )
    server = start_server(tmp_path, clean_env(COOP_DATA_DIR=str(tmp_path / "data")), tls=pki, name="localhost")
    try:
        env = clean_env(COOP_CONFIG_DIR=str(tmp_path / "config"))
        url = server.url
        refused = coop("login", "--url", url, "--token", server.admin_token, env=env, check=False)
        assert refused.returncode != 0 and "does not trust" in refused.stderr
        coop("login", "--url", url, "--token", server.admin_token, "--ca-file", str(pki.ca), env=env)
        assert "admin" in coop("whoami", env=env).stdout
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["ray-head.service", "coop-backup.service", "coop-backup.timer"])
def test_its_systemd_units_verify(name: str, tmp_path: Path) -> None:
    require_service(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    units: dict[str, str] = {}
    for block in _blocks("ini"):
        if "ray start --head" in block:
            units["ray-head.service"] = block
        parts = re.split(r"^# (coop-backup\.\w+)\n", block, flags=re.M)
        units |= dict(zip(parts[1::2], parts[2::2], strict=True))
    unit = units[name]
    # what exists on a test machine instead of /opt/coop
    unit = unit.replace("/opt/coop/bin/", f"{VENV_BIN}/")
    (tmp_path / name).write_text(unit)
    if name.endswith(".timer"):  # a timer is verified with the service it starts
        (tmp_path / "coop-backup.service").write_text(
            units["coop-backup.service"].replace("/opt/coop/bin/", f"{VENV_BIN}/")
        )
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if name in line], done.stderr
    if name == "ray-head.service":
        assert "--num-cpus=0 --num-gpus=0" in unit and "RAY_AUTH_MODE=token" in unit
