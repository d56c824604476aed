"""The credit ledger: append-only entries; a balance is their sum."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from coop.server.models import LedgerEntry


def balance(session: Session, member_id: int) -> float:
    total = session.exec(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.member_id == member_id)).one()
    return float(total or 0.0)


def history(session: Session, member_id: int, limit: int = 200) -> list[LedgerEntry]:
    query = (
        select(LedgerEntry).where(LedgerEntry.member_id == member_id).order_by(col(LedgerEntry.id).desc()).limit(limit)
    )
    return list(session.exec(query))


def grant(session: Session, member_id: int, amount: float, note: str) -> LedgerEntry:
    entry = LedgerEntry(member_id=member_id, amount=amount, kind="grant", note=note)
    session.add(entry)
    session.commit()
    return entry
