"""HPC pools (admins only): register a Slurm allocation, list, test and remove pools."""

from __future__ import annotations

from fastapi import APIRouter, Request

from coop.server.backends.slurm.config import PoolCreate, PoolOut, PoolTestResult
from coop.server.deps import AdminDep, SessionDep, SessionReleasingRoute
from coop.server.services import accounts, pools

router = APIRouter(tags=["pools"], route_class=SessionReleasingRoute)


@router.post("/pools", status_code=201, response_model=PoolOut)
def create_pool(req: PoolCreate, request: Request, session: SessionDep, principal: AdminDep) -> PoolOut:
    """The SSH key and known_hosts are paths on the coordinator's host: checked there, never sent."""
    pool = pools.create(session, req, principal.member_id)
    request.app.state.pools_changed()  # ask it what it offers now, not at the next refresh
    return pools.out(pool, accounts.get_member(session, pool.member_id).name, 0)


@router.get("/pools", response_model=list[PoolOut])
def list_pools(session: SessionDep, _: AdminDep, removed: bool = False) -> list[PoolOut]:
    busy = pools.running(session)
    return [pools.out(p, m, busy.get(p.id or 0, 0)) for p, m in pools.listing(session, removed)]


@router.get("/pools/{name}", response_model=PoolOut)
def show_pool(name: str, session: SessionDep, _: AdminDep) -> PoolOut:
    pool = pools.get(session, name)
    active = pools.running(session).get(pool.id or 0, 0)
    return pools.out(pool, accounts.get_member(session, pool.member_id).name, active)


@router.post("/pools/{name}/test", response_model=PoolTestResult)
def test_pool(name: str, session: SessionDep, _: AdminDep) -> PoolTestResult:
    """Connect afresh (host key checked), run sinfo, report what the pool offers: 200 with ok=false
    when the pool cannot be used, and why."""
    return pools.test(session, pools.get(session, name))


@router.delete("/pools/{name}", response_model=PoolOut)
def remove_pool(name: str, session: SessionDep, _: AdminDep) -> PoolOut:
    pool = pools.remove(session, pools.get(session, name))
    return pools.out(pool, accounts.get_member(session, pool.member_id).name, 0)
