"""Members, users, tokens and quotas: the only code that writes those tables."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from coop.schemas import MemberCreate, QuotaUpdate, TokenCreate
from coop.server.models import ApiToken, LedgerEntry, Member, User, utcnow
from coop.server.security import display_prefix, hash_token, new_token, tokens_changed
from coop.server.services.errors import Conflict, Invalid, NotFound


def authenticate(session: Session, token: str) -> tuple[ApiToken, Member, User | None] | None:
    row = session.exec(
        select(ApiToken, Member, User)
        .join(Member, Member.id == ApiToken.member_id)  # type: ignore[arg-type]
        .outerjoin(User, User.id == ApiToken.user_id)  # type: ignore[arg-type]
        .where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))  # type: ignore[union-attr]
    ).first()
    return None if row is None else (row[0], row[1], row[2])


def member_by_name(session: Session, name: str) -> Member:
    member = session.exec(select(Member).where(Member.name == name)).first()
    if member is None:
        raise NotFound(
            f"member {name!r} does not exist",
            field="member",
            fix="list members with 'coop admin member list'",
        )
    return member


def get_member(session: Session, member_id: int) -> Member:
    member = session.get(Member, member_id)
    if member is None:
        raise NotFound(
            f"member {member_id} does not exist",
            field="member_id",
            fix="list members with 'coop admin member list'",
        )
    return member


def list_members(session: Session) -> list[Member]:
    return list(session.exec(select(Member).order_by(Member.id)))  # type: ignore[arg-type]


def balances(session: Session) -> dict[int, float]:
    rows = session.exec(
        select(LedgerEntry.member_id, func.sum(LedgerEntry.amount)).group_by(col(LedgerEntry.member_id))
    )
    return {member_id: float(total or 0) for member_id, total in rows}


def _issue(session: Session, member: Member, kind: str, user: User | None, name: str) -> tuple[ApiToken, str]:
    secret = new_token()
    assert member.id is not None
    token = ApiToken(
        token_hash=hash_token(secret),
        prefix=display_prefix(secret),
        kind=kind,
        member_id=member.id,
        user_id=user.id if user else None,
        name=name,
    )
    session.add(token)
    return token, secret


def create_member(session: Session, req: MemberCreate) -> tuple[Member, str]:
    """A member, its first user (same name) and that user's token, in one transaction."""
    member = Member(name=req.name, share=req.share, gpu_cap=req.gpu_cap)
    session.add(member)
    try:
        session.flush()
        user = User(member_id=member.id, name=req.name, role="admin" if req.admin else "member")  # type: ignore[arg-type]
        session.add(user)
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"a member or user named {req.name!r} already exists",
            field="name",
            fix="choose another name",
        ) from None
    _, secret = _issue(session, member, "user", user, "first token")
    session.commit()
    return member, secret


def bootstrap_admin(session: Session, name: str = "admin") -> str | None:
    """Create the first admin and return its token; None when an admin already exists."""
    if session.exec(select(User).where(User.role == "admin")).first() is not None:
        return None
    _, secret = create_member(session, MemberCreate(name=name, admin=True))
    return secret


def has_admin(session: Session) -> bool:
    return session.exec(select(User.id).where(User.role == "admin")).first() is not None


def set_quota(session: Session, member: Member, req: QuotaUpdate) -> Member:
    if "share" in req.model_fields_set and req.share is not None:
        member.share = req.share
    if "gpu_cap" in req.model_fields_set:
        member.gpu_cap = req.gpu_cap
    if "storage_bytes" in req.model_fields_set:
        member.storage_bytes = req.storage_bytes
    session.add(member)
    session.commit()
    return member


def create_token(session: Session, req: TokenCreate, member: Member) -> tuple[ApiToken, str]:
    user = None
    if req.kind == "user":
        user_name = req.user or member.name
        user = session.exec(select(User).where(User.name == user_name, User.member_id == member.id)).first()
        if user is None:
            raise NotFound(
                f"member {member.name!r} has no user {user_name!r}",
                field="user",
                fix="name one of the member's users, or leave it out for the member's first user",
            )
    elif req.user:
        raise Invalid(
            "agent tokens belong to a member, not a user",
            field="user",
            fix="leave 'user' out for agent tokens",
        )
    token, secret = _issue(session, member, req.kind, user, req.name)
    session.commit()
    return token, secret


def list_tokens(session: Session, member_id: int | None) -> list[tuple[ApiToken, Member, User | None]]:
    query = (
        select(ApiToken, Member, User)
        .join(Member, Member.id == ApiToken.member_id)  # type: ignore[arg-type]
        .outerjoin(User, User.id == ApiToken.user_id)  # type: ignore[arg-type]
        .order_by(ApiToken.id)  # type: ignore[arg-type]
    )
    if member_id is not None:
        query = query.where(ApiToken.member_id == member_id)
    return [(t, m, u) for t, m, u in session.exec(query)]


def revoke_token(session: Session, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.add(token)
        session.commit()
        tokens_changed(session.get_bind())  # this process's token cache (security.TokenCache) forgets it now
    return token
