"""Request dependencies: the database session and who is calling."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy.engine import Engine
from sqlmodel import Session

from coop.server.config import Settings
from coop.server.errors import ApiError
from coop.server.security import hash_token, token_cache
from coop.server.services import accounts


@dataclass(frozen=True)
class Principal:
    token_id: int
    kind: str  # user | agent
    member_id: int
    member: str
    user_id: int | None
    user: str | None
    role: str  # admin | member | agent

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.role == "admin"

    def can_see_member(self, member_id: int) -> bool:
        return self.is_admin or self.member_id == member_id


# Dependencies that do no I/O are ``async`` so FastAPI runs them on the event loop: each sync
# dependency costs a hop through the thread pool, which dominated the cost of a submission.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request; it touches the database only when the (threaded) handler uses it."""
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_AUTH_FIX = "send 'Authorization: Bearer <token>'; get a token with 'coop login' or from your admin"


async def get_principal(request: Request) -> Principal:
    """Who sends the bearer token. Known tokens are kept ``COOP_TOKEN_CACHE_S`` seconds
    (``security.TokenCache``: a revocation takes effect at once in the process that made it, within
    that bound in other worker processes); otherwise one hop to a thread asks the database."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing bearer token", field="Authorization", fix=_AUTH_FIX)
    state = request.app.state
    cache = token_cache(state.engine, state.settings.token_cache_s)
    token_hash = hash_token(token)
    principal: Principal | None = cache.get(token_hash)
    if principal is None:
        generation = cache.generation
        principal = await anyio.to_thread.run_sync(_lookup, state.engine, token)
        if principal is not None:
            cache.put(token_hash, principal, generation)
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token", field="Authorization", fix=_AUTH_FIX)
    return principal


def _lookup(engine: Engine, token: str) -> Principal | None:
    with Session(engine) as session:  # closed here: the connection goes back now (see SessionReleasingRoute)
        found = accounts.authenticate(session, token)
        if found is None:
            return None
        tok, member, user = found
        assert tok.id is not None and member.id is not None
        role = "agent" if tok.kind == "agent" else (user.role if user else "member")
        return Principal(
            tok.id, tok.kind, member.id, member.name, user.id if user else None, user.name if user else None, role
        )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def user_principal(principal: PrincipalDep) -> Principal:
    if principal.kind != "user":
        raise ApiError(
            403,
            "forbidden",
            "agent tokens may only register and heartbeat nodes",
            fix="use a user token (coop login) for this request",
        )
    return principal


async def admin_principal(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ApiError(
            403,
            "forbidden",
            "this request needs an admin token",
            fix="ask a cooperative admin, or use a token created by 'coop admin bootstrap'",
        )
    return principal


async def agent_principal(principal: PrincipalDep) -> Principal:
    if principal.kind != "agent":
        raise ApiError(
            403,
            "forbidden",
            "only agent tokens register and heartbeat nodes",
            fix="create one with 'coop admin token create --agent' and give it to coop-agent",
        )
    return principal


UserDep = Annotated[Principal, Depends(user_principal)]
AdminDep = Annotated[Principal, Depends(admin_principal)]
AgentDep = Annotated[Principal, Depends(agent_principal)]


class SessionReleasingRoute(APIRoute):
    """A sync endpoint closes its session, giving the connection back, in the worker thread it ran in.

    FastAPI runs each sync dependency, the endpoint and the response's validation in separate hops
    through one thread pool (40 threads). A request that kept the connection between hops waited for
    a thread while every thread waited for that connection: on SQLite, whose app has one connection,
    a burst of 40 requests froze the whole API until the pool timed out (60 s). Closing the session
    where its work ends (here, and in ``get_principal``) means whoever holds a connection also holds
    a thread. Objects read before the close keep their loaded attributes (``expire_on_commit=False``).
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _closing_sessions(endpoint)
        super().__init__(path, endpoint, **kwargs)


def _closing_sessions(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the signature through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return endpoint(*args, **kwargs)
        finally:
            for value in kwargs.values():
                if isinstance(value, Session):
                    value.close()

    return run
