"""API tokens: random, shown once, stored as SHA-256.

A slow password hash buys nothing for 256-bit random tokens and would cost every request.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "coop_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[: len(TOKEN_PREFIX) + 6]
