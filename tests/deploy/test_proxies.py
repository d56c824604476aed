"""The shipped reverse-proxy configs (deploy/nginx/coop.conf, deploy/caddy/Caddyfile) in front of a
real ``coop server``: TLS with the cooperative's own CA, a workdir upload far above nginx's default
1 MB body limit, the log endpoint ``coop logs -f`` polls, and the CLI through them.

nginx and Caddy come from Debian's packages (scripts/services/proxies.sh, run by ``make test``); the
tests change only what must differ on a test machine (ports, certificate paths, the upstream port)
and fail if those lines are no longer in the shipped files."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coop.client import CoopClient, CoopError, tls_verify
from tests.api.helpers import job_spec, node
from tests.conftest import free_port, require_service, wait_for
from tests.deploy.conftest import Server, clean_env, coop, start_server
from tests.deploy.pki import Pki

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "coop.conf"
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"


def _nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} is no longer in the shipped config: update this test with it"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``coop server`` in plain HTTP on loopback, as behind a proxy; a member with a registered node."""
    folder = tmp_path_factory.mktemp("upstream")
    server = start_server(folder, clean_env(COOP_DATA_DIR=str(folder / "data"), COOP_MAX_WORKDIR_MB="32"))
    with CoopClient(server.url, server.admin_token) as admin:
        agent = admin.create_token(kind="agent", member="admin")["token"]
        with CoopClient(server.url, agent) as client:
            admin.approve_node(client.register_node(node("box"))["id"])
    yield server
    server.stop()


def _run_proxy(
    args: list[str], log: Path, url: str, pki: Pki, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{args[0]} exited {proc.returncode}:\n{log.read_text()}")
        try:
            return httpx.get(url + "/v1/health", verify=tls_verify(pki.ca), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, interval=0.1, what=f"{args[0]} to proxy the coordinator")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def nginx_proxy(folder: Path, upstream: Server, pki: Pki) -> Iterator[str]:
    nginx = _nginx()
    require_service(nginx is not None, "nginx is not installed (scripts/services/proxies.sh up)")
    assert nginx
    port, port80 = free_port(), free_port()
    site = NGINX_CONF.read_text()
    site = _replace(site, "listen 80;", f"listen 127.0.0.1:{port80};")
    site = _replace(site, "listen [::]:80;", "")
    site = _replace(site, "listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
    site = _replace(site, "listen [::]:443 ssl http2;", "")
    site = _replace(site, "/etc/letsencrypt/live/coop.example.org/fullchain.pem", str(pki.cert))
    site = _replace(site, "/etc/letsencrypt/live/coop.example.org/privkey.pem", str(pki.key))
    site = _replace(site, "server 127.0.0.1:8470;", f"server 127.0.0.1:{upstream.port};")
    (folder / "coop.conf").write_text(site)
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / temp).mkdir(exist_ok=True)
    # Debian's own nginx.conf, with the site in place of sites-enabled and everything else in the folder
    main = Path("/etc/nginx/nginx.conf").read_text()
    main = _replace(main, "include /etc/nginx/sites-enabled/*;", f"include {folder}/coop.conf;")
    main = _replace(main, "include /etc/nginx/conf.d/*.conf;", "")
    main = _replace(main, "pid /run/nginx.pid;", f"pid {folder}/nginx.pid;")
    main = main.replace("user www-data;", "user root;" if os.geteuid() == 0 else "")
    main = main.replace("/var/log/nginx/", f"{folder}/")
    main = _replace(
        main,
        "http {",
        "http {\n"
        + "".join(f"\t{t}_temp_path {folder}/{t};\n" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
    ).replace(f"client_body_temp_path {folder}/client_body", f"client_body_temp_path {folder}/body")
    conf = folder / "nginx.conf"
    conf.write_text(main)
    base = [nginx, "-e", str(folder / "error.log"), "-p", str(folder), "-c", str(conf)]
    checked = subprocess.run([*base, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0 and "syntax is ok" in checked.stderr, checked.stderr
    url = f"https://127.0.0.1:{port}"
    proc = _run_proxy([*base, "-g", "daemon off;"], folder / "nginx.out", url, pki)
    try:
        yield url
    finally:
        _stop(proc)


def caddy_proxy(folder: Path, upstream: Server, pki: Pki) -> Iterator[str]:
    caddy = shutil.which("caddy")
    require_service(caddy is not None, "caddy is not installed (scripts/services/proxies.sh up)")
    assert caddy
    port = free_port()
    env = clean_env(
        HOME=str(folder),
        XDG_DATA_HOME=str(folder / "data"),
        XDG_CONFIG_HOME=str(folder / "config"),
        COOP_DOMAIN=f"https://localhost:{port}",
        COOP_UPSTREAM=f"127.0.0.1:{upstream.port}",
    )
    shipped = CADDYFILE.read_text()
    validated = subprocess.run(
        [caddy, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert validated.returncode == 0 and "Valid configuration" in validated.stdout + validated.stderr, validated.stderr
    formatted = subprocess.run([caddy, "fmt", str(CADDYFILE)], capture_output=True, text=True)
    assert formatted.stdout == shipped, "deploy/caddy/Caddyfile is not as 'caddy fmt' writes it"
    # the cooperative's own CA instead of ACME, as the file's comment says; no admin endpoint, no port 80
    site = _replace(
        shipped,
        "{$COOP_DOMAIN:coop.example.org} {\n",
        "{$COOP_DOMAIN:coop.example.org} {\n" + f"\ttls {pki.cert} {pki.key}\n",
    )
    config = folder / "Caddyfile"
    config.write_text("{\n\tadmin off\n\tauto_https disable_redirects\n}\n\n" + site)
    url = f"https://localhost:{port}"
    proc = _run_proxy(
        [caddy, "run", "--config", str(config), "--adapter", "caddyfile"], folder / "caddy.out", url, pki, env
    )
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(params=["nginx", "caddy"])
def proxied(request: pytest.FixtureRequest, upstream: Server, pki: Pki, tmp_path: Path) -> Iterator[str]:
    start = nginx_proxy if request.param == "nginx" else caddy_proxy
    yield from start(tmp_path, upstream, pki)


def _workdir(megabytes: int) -> tuple[str, bytes]:
    """A packed workdir (tar.gz) of ``megabytes`` that do not compress."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        data = os.urandom(megabytes << 20)
        info = tarfile.TarInfo("data.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    packed = buf.getvalue()
    return hashlib.sha256(packed).hexdigest(), packed


def test_through_the_proxy(proxied: str, upstream: Server, pki: Pki, tmp_path: Path) -> None:
    env = clean_env(COOP_CONFIG_DIR=str(tmp_path / "config"))
    login = ["login", "--url", proxied, "--token", upstream.admin_token]
    refused = coop(*login, env=env, check=False)
    assert refused.returncode != 0 and "does not trust" in refused.stderr and "Traceback" not in refused.stderr
    coop(*login, "--ca-file", str(pki.ca), env=env)

    with CoopClient(proxied, upstream.admin_token, verify=tls_verify(pki.ca), timeout=120) as client:
        # 20 MB in one PUT: nginx's default limit is 1 MB; the shipped config lets it through, streamed
        sha, packed = _workdir(20)
        assert len(packed) > 20 << 20
        assert client.upload_workdir(sha, packed) == {"sha256": sha, "size": len(packed)}
        assert client.has_workdir(sha)
        # past the coordinator's own limit (COOP_MAX_WORKDIR_MB=32 here): its message, not the proxy's page
        big_sha, big = _workdir(34)
        with pytest.raises(CoopError) as too_big:
            client.upload_workdir(big_sha, big)
        assert too_big.value.status == 413 and "exceeds 32 MB" in str(too_big.value), too_big.value
        job = client.submit(job_spec("through-proxy", gpus=1), workdir_sha256=sha)
        # the endpoint `coop logs -f` polls answers through the proxy as it does directly
        with CoopClient(upstream.url, upstream.admin_token) as direct:
            assert client.logs(job["id"]) == direct.logs(job["id"])
    shown = coop("status", str(job["id"]), "--json", env=env)
    assert json.loads(shown.stdout)["name"] == "through-proxy"
    assert coop("logs", str(job["id"]), env=env).returncode == 0
