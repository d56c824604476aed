"""Work on the Ray cluster that Coop did not start (admins only): what the coordinator's checks saw."""

from __future__ import annotations

from fastapi import APIRouter

from coop.schemas import ForeignWorkOut
from coop.server.deps import AdminDep, SessionDep, SessionReleasingRoute
from coop.server.services import foreign_work

router = APIRouter(tags=["nodes"], route_class=SessionReleasingRoute)


@router.get("/foreign-work", response_model=list[ForeignWorkOut])
def list_foreign_work(session: SessionDep, _: AdminDep, gone: bool = False) -> list[ForeignWorkOut]:
    """Foreign Ray jobs, actors and task groups seen in the last check (``gone=true``: and those seen
    before), newest first, each with the node it runs on: a Coop node, ``head`` or ``unknown``."""
    return [
        ForeignWorkOut.model_validate({**row.model_dump(), "node": name or row.place})
        for row, name in foreign_work.listing(session, include_gone=gone)
    ]
