"""Job arrays: submit one, list them with their tasks' counts, show one, list or find its tasks, cancel all."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from coop.arrays import MAX_INDEX, MAX_TASKS
from coop.schemas import JOB_STATES, MAX_ID, MAX_OFFSET, ArrayDetail, ArrayOut, JobOut, JobState, JobSubmit
from coop.server.deps import Principal, SessionDep, SessionReleasingRoute, SettingsDep, UserDep
from coop.server.errors import ApiError
from coop.server.models import JobArray
from coop.server.routes.jobs import job_out
from coop.server.services import accounts, arrays

router = APIRouter(tags=["arrays"], route_class=SessionReleasingRoute)
ArrayId = Annotated[int, Path(ge=1, le=MAX_ID, description="the array's id (its first task's job id)")]
States = Annotated[list[JobState], Query(description=f"any of {', '.join(JOB_STATES)}")]


def _visible(session: SessionDep, principal: Principal, array_id: int) -> tuple[JobArray, str]:
    array, member = arrays.get(session, array_id)
    if not principal.can_see_member(array.member_id):
        raise ApiError(
            403,
            "forbidden",
            f"array {array_id} belongs to another member",
            field="array_id",
            fix="you can only see and cancel your own member's arrays",
        )
    return array, member


def _out(session: SessionDep, array: JobArray, member: str) -> ArrayOut:
    return ArrayOut.model_validate(arrays.described(session, [(array, member)])[0])


@router.post("/arrays", status_code=201, response_model=ArrayOut)
def submit_array(
    req: JobSubmit, request: Request, session: SessionDep, settings: SettingsDep, principal: UserDep
) -> ArrayOut:
    """A job array (``array:`` in the spec): every task is stored, PENDING, in one transaction."""
    member = accounts.get_member(session, principal.member_id)
    array = arrays.submit(session, settings, member, principal.user_id, req)
    request.app.state.job_submitted()
    return _out(session, array, member.name)


@router.get("/arrays", response_model=list[ArrayOut])
def list_arrays(
    session: SessionDep,
    principal: UserDep,
    state: States = [],  # noqa: B006
    member: str | None = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[ArrayOut]:
    """Your member's arrays, newest first, with their tasks' counts by state; ``state``: arrays with a task
    in any of them. Admins see everyone's and may filter by member."""
    member_id: int | None = principal.member_id
    if principal.is_admin:
        member_id = accounts.member_by_name(session, member).id if member else None
    elif member and member != principal.member:
        raise ApiError(
            403, "forbidden", "members can only list their own arrays", field="member", fix="leave 'member' out"
        )
    rows = arrays.listing(session, member_id, list(state), name, limit, offset)
    return [ArrayOut.model_validate(a) for a in arrays.described(session, rows)]


@router.get("/arrays/{array_id}", response_model=ArrayDetail)
def show_array(array_id: ArrayId, session: SessionDep, principal: UserDep) -> ArrayDetail:
    array, member = _visible(session, principal, array_id)
    return ArrayDetail.model_validate({**arrays.described(session, [(array, member)])[0], "spec": array.spec})


@router.get("/arrays/{array_id}/tasks", response_model=list[JobOut])
def array_tasks(
    array_id: ArrayId,
    session: SessionDep,
    principal: UserDep,
    state: States = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=MAX_TASKS)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[JobOut]:
    """The array's tasks (jobs) by index."""
    _, member = _visible(session, principal, array_id)
    return [job_out(job, member) for job in arrays.tasks(session, array_id, list(state), limit, offset)]


@router.get("/arrays/{array_id}/tasks/{index}", response_model=JobOut)
def array_task(
    array_id: ArrayId, index: Annotated[int, Path(ge=0, le=MAX_INDEX)], session: SessionDep, principal: UserDep
) -> JobOut:
    """The task of that index: a job (its id leads to its details, logs and outputs under /v1/jobs)."""
    array, member = _visible(session, principal, array_id)
    return job_out(arrays.task(session, array, index), member)


@router.post("/arrays/{array_id}/cancel", response_model=ArrayOut)
def cancel_array(array_id: ArrayId, session: SessionDep, principal: UserDep) -> ArrayOut:
    """Cancel every task that has not ended (running ones are stopped by the backend loop)."""
    array, member = _visible(session, principal, array_id)
    arrays.cancel(session, array, principal.user or principal.member)
    return _out(session, array, member)
