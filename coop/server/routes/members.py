from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query

from coop.schemas import (
    MAX_ID,
    Balance,
    GrantCreate,
    LedgerDayTotal,
    LedgerEntryOut,
    LedgerJobTotal,
    Me,
    MemberCreate,
    MemberCreated,
    MemberOut,
    QuotaUpdate,
    TokenCreate,
    TokenCreated,
    TokenOut,
)
from coop.server.deps import (
    AdminDep,
    Principal,
    PrincipalDep,
    SessionDep,
    SessionReleasingRoute,
    SettingsDep,
    UserDep,
)
from coop.server.errors import ApiError
from coop.server.models import ApiToken, Member, User, pk, utcnow
from coop.server.services import accounts, artifacts, ledger

router = APIRouter(tags=["members"], route_class=SessionReleasingRoute)


def _member_out(member: Member, balance: float) -> MemberOut:
    return MemberOut.model_validate({**member.model_dump(), "balance": balance})


def _token_out(token: ApiToken, member: Member, user: User | None) -> TokenOut:
    return TokenOut.model_validate({**token.model_dump(), "member": member.name, "user": user.name if user else None})


def _self_or_admin(session: SessionDep, principal: Principal, name: str) -> Member:
    member = accounts.member_by_name(session, name)
    if not principal.can_see_member(member.id):  # type: ignore[arg-type]
        raise ApiError(
            403,
            "forbidden",
            f"you are not allowed to see member {name!r}",
            field="member",
            fix="members see only themselves; admins see everyone",
        )
    return member


@router.get("/me", response_model=Me)
def me(principal: PrincipalDep) -> Me:
    return Me(
        member=principal.member,
        member_id=principal.member_id,
        user=principal.user,
        role=principal.role,
        kind=principal.kind,
    )


@router.post("/members", status_code=201, response_model=MemberCreated)
def create_member(req: MemberCreate, session: SessionDep, _: AdminDep) -> MemberCreated:
    member, token = accounts.create_member(session, req)
    return MemberCreated.model_validate({**_member_out(member, 0.0).model_dump(), "token": token})


@router.get("/members", response_model=list[MemberOut])
def list_members(session: SessionDep, _: AdminDep) -> list[MemberOut]:
    sums = accounts.balances(session)
    return [_member_out(m, sums.get(m.id, 0.0)) for m in accounts.list_members(session)]  # type: ignore[arg-type]


@router.get("/members/{name}", response_model=MemberOut)
def show_member(name: str, session: SessionDep, principal: UserDep) -> MemberOut:
    member = _self_or_admin(session, principal, name)
    return _member_out(member, ledger.balance(session, member.id))  # type: ignore[arg-type]


@router.put("/members/{name}/quota", response_model=MemberOut)
def set_quota(name: str, req: QuotaUpdate, session: SessionDep, _: AdminDep) -> MemberOut:
    member = accounts.set_quota(session, accounts.member_by_name(session, name), req)
    return _member_out(member, ledger.balance(session, member.id))  # type: ignore[arg-type]


@router.post("/members/{name}/grants", status_code=201, response_model=LedgerEntryOut)
def grant(name: str, req: GrantCreate, session: SessionDep, principal: AdminDep) -> LedgerEntryOut:
    member = accounts.member_by_name(session, name)
    note = req.note or f"granted by {principal.user}"
    return LedgerEntryOut.model_validate(ledger.grant(session, member.id, req.amount, note))  # type: ignore[arg-type]


@router.get("/members/{name}/balance", response_model=Balance)
def balance(
    name: str,
    session: SessionDep,
    settings: SettingsDep,
    principal: UserDep,
    history: bool = False,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> Balance:
    member = _self_or_admin(session, principal, name)
    assert member.id is not None
    entries = [LedgerEntryOut.model_validate(e) for e in ledger.history(session, member.id, limit)] if history else None
    return Balance(
        member=member.name,
        balance=ledger.balance(session, member.id),
        history=entries,
        storage_used_bytes=artifacts.usage(session, member.id),
        storage_quota_bytes=artifacts.quota_bytes(settings, member),
    )


@router.get("/members/{name}/ledger/jobs", response_model=list[LedgerJobTotal])
def ledger_by_job(name: str, session: SessionDep, principal: UserDep) -> list[LedgerJobTotal]:
    """The member's ledger summed per job and kind (spend, earn, own), with grants and idle credit."""
    member = _self_or_admin(session, principal, name)
    fields = ("job_id", "job_name", "kind", "amount", "gpu_hours", "entries")
    return [
        LedgerJobTotal.model_validate(dict(zip(fields, row, strict=True))) for row in ledger.by_job(session, pk(member))
    ]


@router.get("/members/{name}/ledger/days", response_model=list[LedgerDayTotal])
def ledger_by_day(
    name: str,
    session: SessionDep,
    principal: UserDep,
    days: Annotated[int, Query(ge=1, le=3660, description="the last N days, today (UTC) included")] = 30,
) -> list[LedgerDayTotal]:
    """The member's ledger summed per UTC day, kind and job, oldest first, naming the other side: the
    donors a job ran on, the member whose job ran on the member's nodes, the idle node."""
    member = _self_or_admin(session, principal, name)
    since = datetime.combine(utcnow().date() - timedelta(days=days - 1), time(), tzinfo=UTC)
    return [LedgerDayTotal.model_validate(asdict(t)) for t in ledger.by_day(session, pk(member), since)]


@router.post("/tokens", status_code=201, response_model=TokenCreated)
def create_token(req: TokenCreate, session: SessionDep, principal: UserDep) -> TokenCreated:
    """Admins create any token; members create user tokens for themselves. Only an admin creates agent
    tokens: an agent token registers nodes and receives the Ray cluster's token, which runs any code
    on every node, so it is never self-service."""
    if req.kind == "agent" and not principal.is_admin:
        raise ApiError(
            403,
            "forbidden",
            "only an admin creates agent tokens",
            field="kind",
            fix="ask a cooperative admin: coop admin token create --agent --member YOUR_MEMBER",
        )
    name = req.member or principal.member
    member = _self_or_admin(session, principal, name)
    if not principal.is_admin and req.user and req.user != principal.user:
        raise ApiError(
            403, "forbidden", "members create user tokens only for themselves", field="user", fix="leave 'user' out"
        )
    if not principal.is_admin and req.kind == "user" and not req.user:
        req = req.model_copy(update={"user": principal.user})
    token, secret = accounts.create_token(session, req, member)
    user = session.get(User, token.user_id) if token.user_id else None
    return TokenCreated.model_validate({**_token_out(token, member, user).model_dump(), "token": secret})


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(session: SessionDep, principal: UserDep) -> list[TokenOut]:
    member_id = None if principal.is_admin else principal.member_id
    return [_token_out(t, m, u) for t, m, u in accounts.list_tokens(session, member_id)]


@router.delete("/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep, principal: UserDep) -> TokenOut:
    token = session.get(ApiToken, token_id)
    if token is None or not principal.can_see_member(token.member_id):
        raise ApiError(
            404,
            "not_found",
            f"token {token_id} does not exist",
            field="token_id",
            fix="list your tokens with GET /v1/tokens",
        )
    accounts.revoke_token(session, token)
    member = accounts.get_member(session, token.member_id)
    user = session.get(User, token.user_id) if token.user_id else None
    return _token_out(token, member, user)
