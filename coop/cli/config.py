"""Where the CLI finds its coordinator: ``coop login``'s saved file, overridden by ``COOP_URL`` / ``COOP_TOKEN``
(and ``COOP_CA_FILE``: the cooperative's own CA, when its certificate is not from a public one).

The file holds a secret, so it is written 0600 in a 0700 directory, atomically (a crash never leaves a
half-written or world-readable token behind).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from coop.cli.output import UserError
from coop.client import CoopClient, tls_verify

NOT_LOGGED_IN = "not logged in: run coop login --url URL --token TOKEN"
CA_HINT = "'coop login --ca-file FILE' (saved) or COOP_CA_FILE"


def config_dir() -> Path:
    """``COOP_CONFIG_DIR`` if set (tests, several coordinators), else the platform's app dir."""
    return Path(os.environ.get("COOP_CONFIG_DIR") or typer.get_app_dir("coop"))


def config_path() -> Path:
    return config_dir() / "config.json"


def load() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}", fix="run coop login again to rewrite it") from None
    return data if isinstance(data, dict) else {}


def save(url: str, token: str, ca_file: Path | None = None) -> Path:
    path = config_path()
    if not path.parent.is_dir():  # an existing folder (COOP_CONFIG_DIR=~?) keeps its mode
        path.parent.mkdir(mode=0o700, parents=True)
        path.parent.chmod(0o700)  # whatever the umask
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        saved: dict[str, str] = {"url": url.rstrip("/"), "token": token}
        if ca_file is not None:
            saved["ca_file"] = str(ca_file)
        json.dump(saved, f, indent=2)
        f.write("\n")
    tmp.replace(path)
    return path


def remove() -> bool:
    """Forget the saved login; False when there was none."""
    try:
        config_path().unlink()
    except FileNotFoundError:
        return False
    return True


def credentials() -> tuple[str, str]:
    saved = load()
    url = os.environ.get("COOP_URL") or saved.get("url")
    token = os.environ.get("COOP_TOKEN") or saved.get("token")
    if not url or not token:
        raise UserError(NOT_LOGGED_IN, fix="or set COOP_URL and COOP_TOKEN; your admin gives you the token")
    return str(url), str(token)


def ca_file() -> tuple[str | None, str]:
    """(the CA file the CLI trusts, or None for the public CAs; how it was given, for errors)."""
    if os.environ.get("COOP_CA_FILE"):
        return os.environ["COOP_CA_FILE"], "COOP_CA_FILE"
    saved = load().get("ca_file")
    return (str(saved), f"the ca_file saved by 'coop login' in {config_path()}") if saved else (None, "")


def make_client(url: str, token: str, ca: str | Path | None = None, option: str = "--ca-file") -> CoopClient:
    """A client that verifies the coordinator's certificate, against ``ca`` when given."""
    return CoopClient(url, token, verify=tls_verify(ca, option), ca_hint=CA_HINT)


def client() -> CoopClient:
    return make_client(*credentials(), *ca_file())
