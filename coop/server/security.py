"""API tokens: random, shown once, stored as SHA-256.

A slow password hash buys nothing for 256-bit random tokens and would cost every request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
import weakref
from pathlib import Path
from typing import Any

TOKEN_PREFIX = "coop_"
TRANSFER_PREFIX = "coopx_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[: len(TOKEN_PREFIX) + 6]


class TokenCache:
    """Who a token hash names, kept ``ttl`` seconds so a request need not ask the database.

    Revocation: ``forget()`` (called by ``accounts.revoke_token`` after its commit) empties the cache
    of the process that revoked, so the token fails there at once; another process (a second uvicorn
    worker) finds it in its own cache at most ``ttl`` seconds more. A lookup that started before a
    ``forget()`` may have read the token unrevoked: its answer is not kept (the generation it started
    under is gone). Unknown and revoked tokens are never kept, so a new token works at once and made-up
    tokens cannot fill the memory; at most ``size`` entries (then it starts again empty).
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._entries: dict[str, tuple[float, Any]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, token_hash: str) -> Any | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(token_hash, None)
            return None
        return entry[1]

    def put(self, token_hash: str, value: Any, generation: int) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return  # a revocation happened meanwhile: what this lookup read may be stale
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[token_hash] = (time.monotonic() + self.ttl, value)

    def forget(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()


_caches: weakref.WeakKeyDictionary[Any, TokenCache] = weakref.WeakKeyDictionary()


def token_cache(engine: Any, ttl: float = 2.0) -> TokenCache:
    """The token cache of the coordinator on ``engine`` (one per app: tests run several in a process)."""
    cache = _caches.get(engine)
    if cache is None:
        cache = _caches.setdefault(engine, TokenCache(ttl))
    return cache


def tokens_changed(engine: Any) -> None:
    """A token was revoked on ``engine``: this process stops trusting what it kept."""
    cache = _caches.get(engine)
    if cache is not None:
        cache.forget()


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
