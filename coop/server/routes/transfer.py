"""The data plane's routes for an attempt's wrapper, authenticated by the attempt's own credential
(``Authorization: Bearer coopx_...``): it reaches only its own job's sets and checkpoint. The blob
bytes stream through a worker thread to and from the store, never held whole in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from coop.schemas import (
    MAX_ID,
    MAX_OFFSET,
    ArtifactSetBegun,
    ArtifactSetIn,
    ArtifactSetOut,
    InputPlan,
    Sha256,
    TransferPlan,
    UploadProgress,
)
from coop.server import streaming
from coop.server.deps import SessionDep, SessionReleasingRoute, SettingsDep
from coop.server.errors import ApiError
from coop.server.models import Attempt, Job
from coop.server.services import artifacts

router = APIRouter(prefix="/transfer", tags=["transfer"], route_class=SessionReleasingRoute)
SetId = Annotated[int, Path(ge=1, le=MAX_ID)]
_FIX = "this credential is given to an attempt's wrapper by the coordinator, and ends soon after the attempt"


@dataclass(frozen=True)
class Sender:
    attempt: Attempt
    job: Job


def get_sender(request: Request, session: SessionDep) -> Sender:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing transfer credential", field="Authorization", fix=_FIX)
    try:
        found = artifacts.authenticate(session, request.app.state.transfer_key, token.strip())
    finally:
        session.close()
    if found is None:
        raise ApiError(401, "unauthorized", "unknown or expired transfer credential", field="Authorization", fix=_FIX)
    return Sender(*found)


SenderDep = Annotated[Sender, Depends(get_sender)]


@router.get("/plan", response_model=TransferPlan)
def plan(session: SessionDep, settings: SettingsDep, sender: SenderDep) -> TransferPlan:
    """What to put in place before the job starts: its last checkpoint, and its inputs' outputs."""
    current = artifacts.latest_checkpoint(session, sender.attempt.job_id)
    inputs = artifacts.input_sets(session, sender.job)
    described = artifacts.described(session, [s for _, s in inputs])
    return TransferPlan(
        job_id=sender.attempt.job_id,
        attempt=sender.attempt.number,
        checkpoint=artifacts.described(session, [current])[0] if current is not None else None,
        inputs=[
            InputPlan(folder=folder, job_id=s.job_id, outputs=d)
            for (folder, s), d in zip(inputs, described, strict=True)
        ],
        checkpoint_sync_s=settings.checkpoint_sync_s,
    )


@router.post("/sets", response_model=ArtifactSetBegun, status_code=201)
def begin_set(
    req: ArtifactSetIn, request: Request, session: SessionDep, settings: SettingsDep, sender: SenderDep
) -> ArtifactSetBegun:
    aset, needed = artifacts.begin(session, settings, request.app.state.store, sender.attempt, sender.job, req)
    return ArtifactSetBegun(set_id=aset.id or 0, needed=needed)


@router.get("/sets/{set_id}/blobs/{sha256}", response_model=UploadProgress)
def upload_progress(
    set_id: SetId, sha256: Sha256, request: Request, session: SessionDep, sender: SenderDep
) -> UploadProgress:
    upload = artifacts.check_blob(session, artifacts.open_set(session, sender.attempt, set_id), sha256)
    return UploadProgress(received=request.app.state.store.received(upload))


def _upload_id(session: SessionDep, sender: SenderDep, set_id: SetId, sha256: Sha256) -> str:
    try:
        return artifacts.check_blob(session, artifacts.open_set(session, sender.attempt, set_id), sha256)
    finally:
        session.close()


UploadId = Annotated[str, Depends(_upload_id)]


@router.patch("/sets/{set_id}/blobs/{sha256}", response_model=UploadProgress)
async def append_blob(
    request: Request, upload: UploadId, offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)]
) -> UploadProgress:
    """Append the body at ``offset``, which must be what the coordinator holds (else 409 naming it)."""
    received = await streaming.into(request, request.app.state.store.append, upload, offset)
    return UploadProgress(received=received)


@router.post("/sets/{set_id}/blobs/{sha256}/finish", response_model=UploadProgress)
def finish_blob(sha256: Sha256, request: Request, upload: UploadId) -> UploadProgress:
    """Check the whole blob hashes to ``sha256`` and keep it (422 and start again if not)."""
    return UploadProgress(received=request.app.state.store.finish(upload, sha256))


@router.post("/sets/{set_id}/commit", response_model=ArtifactSetOut)
def commit_set(set_id: SetId, request: Request, session: SessionDep, sender: SenderDep) -> ArtifactSetOut:
    aset = artifacts.commit(session, request.app.state.store, sender.attempt, set_id)
    return artifacts.described(session, [aset])[0]


@router.get("/blobs/{sha256}")
def fetch_blob(sha256: Sha256, request: Request, session: SessionDep, sender: SenderDep) -> object:
    """A blob of the job's last checkpoint (to restore it), from the Range asked for."""
    if not artifacts.restorable(session, sender.job, sha256):
        raise ApiError(
            404, "not_found", f"job {sender.job.id}'s checkpoint and inputs have no blob {sha256}", field="sha256",
            fix="fetch only what /v1/transfer/plan lists",
        )  # fmt: skip
    session.close()
    return streaming.blob(request, request.app.state.store, sha256)
