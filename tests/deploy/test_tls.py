"""The CLI and the agent verify the coordinator's certificate, and take the cooperative's own CA.

A real ``coop server --tls-cert --tls-key`` (the same TLS a reverse proxy terminates, see
test_proxies.py) with a certificate from a throwaway CA: without the CA, or with another one, the
CLI and the agent refuse it with a message that names the fix; with it, they work."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from coop.client import CoopClient, CoopError, tls_verify
from tests.conftest import wait_for
from tests.deploy.conftest import AGENT, Server, clean_env, coop
from tests.deploy.pki import Pki

H100_CSV = Path(__file__).parent.parent / "data" / "hardware" / "h100-sxm" / "query-gpu-idle.csv"


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    said = done.stdout + done.stderr
    assert done.returncode != 0, said
    assert "Traceback" not in said, said
    return said


def test_cli_refuses_an_untrusted_certificate_and_works_with_the_ca(
    tls_server: Server, pki: Pki, tmp_path: Path
) -> None:
    env = clean_env(COOP_CONFIG_DIR=str(tmp_path / "config"))
    login = ["login", "--url", tls_server.url, "--token", tls_server.admin_token]

    # no CA: httpx's public CAs do not know this one
    said = _refused(coop(*login, env=env, check=False))
    assert "presented a certificate this machine does not trust" in said, said
    assert "certificate verify failed" in said or "self-signed certificate" in said, said
    assert "--ca-file" in said and "COOP_CA_FILE" in said, said
    assert not (tmp_path / "config" / "config.json").exists()  # nothing saved

    # another CA: refused the same way
    said = _refused(coop(*login, "--ca-file", str(pki.other_ca), env=env, check=False))
    assert "does not trust" in said, said

    # a CA file that is not there, or not a certificate: the option is named
    said = _refused(coop(*login, "--ca-file", str(tmp_path / "nope.pem"), env=env, check=False))
    assert f"--ca-file {tmp_path / 'nope.pem'}: no such file" in said, said
    said = _refused(coop(*login, "--ca-file", str(pki.key), env=env, check=False))
    assert "--ca-file" in said and "no PEM certificate" in said, said

    # the cooperative's CA: logged in, saved, and used by the next commands
    done = coop(*login, "--ca-file", str(pki.ca), env=env)
    assert "Logged in to" in done.stdout
    saved = json.loads((tmp_path / "config" / "config.json").read_text())
    assert saved["ca_file"] == str(pki.ca.resolve())
    me = json.loads(coop("whoami", "--json", env=env).stdout)
    assert me["role"] == "admin"
    assert "admin" in coop("balance", env=env).stdout

    # COOP_CA_FILE overrides the saved one: a wrong one is refused, a missing one named
    said = _refused(coop("whoami", env=env | {"COOP_CA_FILE": str(pki.other_ca)}, check=False))
    assert "does not trust" in said, said
    said = _refused(coop("whoami", env=env | {"COOP_CA_FILE": str(tmp_path / "gone.pem")}, check=False))
    assert "COOP_CA_FILE" in said and "no such file" in said, said
    done = coop("whoami", "--json", env=env | {"COOP_CA_FILE": str(pki.ca)})
    assert json.loads(done.stdout)["role"] == "admin"

    # COOP_URL and COOP_TOKEN alone (no saved login) take COOP_CA_FILE too
    bare = clean_env(COOP_CONFIG_DIR=str(tmp_path / "none"), COOP_URL=tls_server.url, COOP_TOKEN=tls_server.admin_token)
    assert "does not trust" in _refused(coop("whoami", env=bare, check=False))
    assert json.loads(coop("whoami", "--json", env=bare | {"COOP_CA_FILE": str(pki.ca)}).stdout)["role"] == "admin"


def test_plain_http_to_the_tls_port_fails_as_an_error_not_a_traceback(tls_server: Server) -> None:
    plain = tls_server.url.replace("https://", "http://")
    with CoopClient(plain) as client:
        try:
            client.health()
            raise AssertionError("plain HTTP to a TLS port answered")
        except CoopError as exc:
            assert plain in str(exc) and f"use {tls_server.url}" in str(exc), exc  # the scheme that works


def test_the_wrapper_trusts_the_ca_the_agent_passes_as_text(tls_server: Server, pki: Pki) -> None:
    """Jobs' wrappers get the CA's PEM in COOP_SERVER_CA (the sandbox shows them no CA file)."""
    with CoopClient(tls_server.url, verify=tls_verify(option="COOP_SERVER_CA", ca_pem=pki.ca.read_text())) as client:
        assert client.health()["status"] == "ok"
    try:
        tls_verify(option="COOP_SERVER_CA", ca_pem="not a certificate")
        raise AssertionError("a bad PEM was taken")
    except CoopError as exc:
        assert "COOP_SERVER_CA" in exc.message


def _join(server: Server, state: Path, log: Path, *extra: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [AGENT, "join", "--coordinator", server.url, "--name", "tls-donor", "--state-dir", str(state),
           "--hardware-from", str(H100_CSV), "--no-calibrate", *extra]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_agent_refuses_an_untrusted_certificate_and_joins_with_the_ca(
    tls_server: Server, pki: Pki, tmp_path: Path
) -> None:
    with CoopClient(tls_server.url, tls_server.admin_token, verify=tls_verify(pki.ca)) as admin:
        admin.create_member("tls-lab")
        token = admin.create_token(kind="agent", member="tls-lab")["token"]
        env = clean_env(COOP_AGENT_TOKEN=token, COOP_AGENT_HEARTBEAT_INTERVAL_S="0.2")
        state = tmp_path / "state"

        for extra, expect in (
            ((), "does not trust"),
            (("--ca-file", str(pki.other_ca)), "does not trust"),
            (
                ("--ca-file", str(tmp_path / "nope.pem")),
                f"--ca-file / COOP_AGENT_CA_FILE {tmp_path / 'nope.pem'}: no such file",
            ),
        ):
            log = tmp_path / "refused.log"
            proc = _join(tls_server, state, log, *extra, env=env)
            assert proc.wait(timeout=60) == 1, log.read_text()
            said = " ".join(log.read_text().split())  # rich wraps the agent's messages
            assert "Cannot join" in said and expect in said, said
            assert "Traceback" not in said, said
        assert "COOP_AGENT_CA_FILE" in said
        assert admin.nodes() == []

        # COOP_AGENT_CA_FILE (as in the service's env file): joins, waits for approval, heartbeats
        log = tmp_path / "agent.log"
        proc = _join(tls_server, state, log, env=env | {"COOP_AGENT_CA_FILE": str(pki.ca)})
        try:
            wait_for(lambda: "awaits approval" in log.read_text(), timeout=60, what="the agent to register")
            (node,) = admin.nodes()
            assert node["name"] == "tls-donor"
            seen = node["last_heartbeat_at"]
            wait_for(lambda: admin.nodes()[0]["last_heartbeat_at"] != seen, timeout=30, what="a heartbeat over TLS")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        saved = json.loads((state / "state.json").read_text())
        assert saved["ca_file"] == str(pki.ca.resolve())

        # a restart with no CA given, for the same coordinator, uses the one it saved
        log = tmp_path / "again.log"
        proc = _join(tls_server, state, log, env=env)
        try:
            wait_for(lambda: "awaits approval" in log.read_text(), timeout=60, what="the agent to rejoin")
            assert "does not trust" not in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            if proc.wait(timeout=60) is None:
                proc.kill()
