"""API tokens: random, shown once, stored as SHA-256.

A slow password hash buys nothing for 256-bit random tokens and would cost every request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_PREFIX = "coop_"
TRANSFER_PREFIX = "coopx_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[: len(TOKEN_PREFIX) + 6]


def transfer_token(key: bytes, attempt_id: int, ref: str) -> str:
    """The credential an attempt's wrapper uses for its own job's files (see ``services.artifacts``).
    Derived, not stored: a launch submitted again after a restart carries the same one."""
    return f"{TRANSFER_PREFIX}{attempt_id}_{_mac(key, attempt_id, ref)}"


def transfer_attempt(token: str) -> int | None:
    """The attempt id a transfer token names, if the token is well formed (its MAC is checked by
    ``transfer_token_matches`` once the attempt's ref is known)."""
    if not token.startswith(TRANSFER_PREFIX):
        return None
    attempt, _, mac = token.removeprefix(TRANSFER_PREFIX).partition("_")
    if not attempt.isdigit() or len(attempt) > 10 or len(mac) != 64:
        return None
    return int(attempt)


def transfer_token_matches(key: bytes, token: str, attempt_id: int, ref: str) -> bool:
    return hmac.compare_digest(token, transfer_token(key, attempt_id, ref))


def _mac(key: bytes, attempt_id: int, ref: str) -> str:
    return hmac.new(key, f"transfer:{attempt_id}:{ref}".encode(), hashlib.sha256).hexdigest()


def load_key(path: Path) -> bytes:
    """The coordinator's secret key for derived credentials: made once (mode 0600), then read. Made
    whole under another name and linked into place, so a second worker never reads half of it."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another worker made it first: use theirs
    finally:
        tmp.unlink()
    return path.read_bytes()
