"""The artifact store's ledger: which files each attempt sent back, who may fetch them, and what each
member holds. The only code that writes ArtifactSet and ArtifactFile.

An attempt's wrapper (``coop.transfer``, on the node that ran it) sends a folder in three steps,
with the attempt's own credential (``security.transfer_token``), never a member's token:

1. ``begin``: the folder's manifest (path, size and SHA-256 of each file), checked against the
   member's storage quota. The reply names the blobs the store still needs: a file the member's
   earlier sets already hold is never sent twice (an unchanged checkpoint shard, a dataset output).
2. each needed blob through the store's resumable upload (``upload_id``: one per set and blob);
3. ``commit``: every blob is in the store, so the set is complete. Only complete sets are listed,
   pulled or restored. A checkpoint set replaces the job's previous one, whose blobs go unless
   another set holds them too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, delete, select

from coop import transfer
from coop.schemas import ArtifactFileIn, ArtifactFileOut, ArtifactSetIn, ArtifactSetOut
from coop.server import security
from coop.server.config import Settings
from coop.server.models import ArtifactFile, ArtifactSet, Attempt, Job, Member, aware, pk, utcnow
from coop.server.services.errors import Conflict, Invalid, NotFound, QuotaExceeded, TooLarge
from coop.server.store import BlobStore
from coop.spec import SpecError, validate_spec
from coop.states import TERMINAL_STATES, JobState

log = logging.getLogger("coop.artifacts")

TRANSFER_GRACE_S = 600  # an attempt's credential still works this long after its end is recorded
PENDING_SET_TTL_S = 86_400  # a set never committed is dropped after a day (its sender died)
GB = 10**9


# --- who is sending ---------------------------------------------------------------------------------


def authenticate(session: Session, key: bytes, token: str, now: datetime | None = None) -> tuple[Attempt, Job] | None:
    """The attempt (and job) a transfer credential belongs to, while it may still be used: while the
    attempt runs, and ``TRANSFER_GRACE_S`` after (its last outputs are sent as it ends)."""
    attempt_id = security.transfer_attempt(token)
    attempt = session.get(Attempt, attempt_id) if attempt_id is not None else None
    if attempt is None or not attempt.backend_ref:
        return None
    if not security.transfer_token_matches(key, token, pk(attempt), attempt.backend_ref):
        return None
    now = now or utcnow()
    if attempt.finished_at is not None and aware(attempt.finished_at) < now - timedelta(seconds=TRANSFER_GRACE_S):
        return None
    job = session.get(Job, attempt.job_id)
    return (attempt, job) if job is not None else None


def credential(key: bytes, attempt: Attempt) -> str:
    assert attempt.backend_ref is not None
    return security.transfer_token(key, pk(attempt), attempt.backend_ref)


# --- quota ------------------------------------------------------------------------------------------


def quota_bytes(settings: Settings, member: Member) -> int:
    return member.storage_bytes if member.storage_bytes is not None else int(settings.storage_quota_gb * GB)


def usage(session: Session, member_id: int) -> int:
    """Bytes the member's sets hold (counted per set: a file two sets share counts twice, so a member
    cannot see from its quota what other members store)."""
    total = session.exec(select(func.sum(ArtifactSet.bytes)).where(ArtifactSet.member_id == member_id)).one()
    return int(total or 0)


def usage_by_member(session: Session) -> dict[int, int]:
    rows = session.exec(select(ArtifactSet.member_id, func.sum(ArtifactSet.bytes)).group_by(col(ArtifactSet.member_id)))
    return {member_id: int(total or 0) for member_id, total in rows}


def _check_quota(session: Session, settings: Settings, job: Job, kind: str, adding: int) -> None:
    member = session.get(Member, job.member_id)
    assert member is not None
    freed = 0
    if kind == "checkpoint":  # the job's current checkpoint goes once this one is complete
        current = latest_checkpoint(session, pk(job))
        freed = current.bytes if current is not None else 0
    used = usage(session, pk(member))
    quota = quota_bytes(settings, member)
    if used - freed + adding > quota:
        raise QuotaExceeded(
            f"member {member.name}'s storage quota is {_gb(quota)}: it holds {_gb(used)} and this {kind} "
            f"needs {_gb(adding)} more",
            field="storage_quota",
            fix=f"delete old outputs (they expire after COOP_ARTIFACT_TTL_DAYS), write less to the job's {kind} "
            f"folder, or ask an admin: coop admin quota set {member.name} --storage <size>",
        )


def _gb(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= GB // 100 else f"{n} bytes"


# --- sending a set ----------------------------------------------------------------------------------


def begin(
    session: Session, settings: Settings, store: BlobStore, attempt: Attempt, job: Job, req: ArtifactSetIn
) -> tuple[ArtifactSet, list[str]]:
    """Record a set's manifest (not complete yet); returns it and the blobs the store still needs."""
    paths = [f.path for f in req.files]
    if len(set(paths)) != len(paths):
        raise Invalid("a path is listed twice", field="files", fix="list each file once")
    for f in req.files:
        if f.size > store.max_bytes:
            raise TooLarge(
                f"{f.path} is {_gb(f.size)}, over the store's limit of {_gb(store.max_bytes)} per file",
                field="files",
                fix="split it, or ask the admin to raise COOP_MAX_ARTIFACT_GB",
            )
    total = sum(f.size for f in req.files)
    _check_quota(session, settings, job, req.kind, total)
    aset = ArtifactSet(
        job_id=pk(job), member_id=job.member_id, attempt=attempt.number, kind=req.kind, files=len(paths), bytes=total
    )
    session.add(aset)
    session.flush()
    session.add_all(ArtifactFile(set_id=pk(aset), path=f.path, size=f.size, sha256=f.sha256) for f in req.files)
    wanted = {f.sha256 for f in req.files}
    held = _held_by_member(session, job.member_id, wanted)
    session.commit()
    return aset, sorted(sha for sha in wanted if sha not in held or not store.has(sha))


def _held_by_member(session: Session, member_id: int, shas: set[str]) -> set[str]:
    """Which of ``shas`` the member's complete sets already hold. Only the member's own: a blob another
    member stored is sent again (the store keeps it once), so no one learns what others hold."""
    if not shas:
        return set()
    rows = session.exec(
        select(ArtifactFile.sha256)
        .join(ArtifactSet, col(ArtifactSet.id) == ArtifactFile.set_id)
        .where(ArtifactSet.member_id == member_id, col(ArtifactSet.complete), col(ArtifactFile.sha256).in_(shas))
    )
    return set(rows)


def open_set(session: Session, attempt: Attempt, set_id: int) -> ArtifactSet:
    """One of this attempt's sets that is not complete yet: the only ones it may send blobs to."""
    aset = session.get(ArtifactSet, set_id)
    if aset is None or aset.job_id != attempt.job_id or aset.attempt != attempt.number:
        raise NotFound(f"this attempt has no set {set_id}", field="set_id", fix="begin the set again")
    if aset.complete:
        raise Conflict(f"set {set_id} is complete", field="set_id", fix="begin a new set for new files")
    return aset


def check_blob(session: Session, aset: ArtifactSet, sha256: str) -> str:
    """The upload id of ``sha256`` in ``aset``, if the set lists it."""
    found = session.exec(
        select(ArtifactFile.id).where(ArtifactFile.set_id == aset.id, ArtifactFile.sha256 == sha256)
    ).first()
    if found is None:
        raise NotFound(f"set {aset.id} lists no file {sha256}", field="sha256", fix="send only the blobs begin named")
    return f"j{aset.job_id}-{sha256[:48]}"  # per job: the next attempt resumes what a cut one began


def commit(session: Session, store: BlobStore, attempt: Attempt, set_id: int) -> ArtifactSet:
    """The set is complete once every blob it lists is stored; a checkpoint replaces the job's last."""
    aset = open_set(session, attempt, set_id)
    shas = set(session.exec(select(ArtifactFile.sha256).where(ArtifactFile.set_id == set_id)))
    missing = sorted(sha for sha in shas if not store.has(sha))
    if missing:
        raise Conflict(
            f"set {set_id} is missing {len(missing)} of its {len(shas)} blobs (first: {missing[0]})",
            field="sha256",
            fix="send the missing blobs, then commit again",
        )
    aset.complete = True
    aset.completed_at = utcnow()
    session.add(aset)
    older: list[ArtifactSet] = []
    if aset.kind == "checkpoint":
        older = list(
            session.exec(
                select(ArtifactSet).where(
                    ArtifactSet.job_id == aset.job_id, ArtifactSet.kind == "checkpoint", col(ArtifactSet.id) < set_id
                )
            )
        )
    _drop(session, store, older)  # commits
    return aset


def record_folder(
    session: Session, settings: Settings, store: BlobStore, attempt: Attempt, job: Job, folder: Path, kind: str
) -> ArtifactSet | None:
    """Send a folder on the coordinator's own disk as one of the attempt's sets, through the same
    steps (quota, dedup, verified blobs) as a wrapper's: what the coordinator brought back from a
    Slurm cluster. None when the folder holds no file."""
    entries = transfer.manifest(folder)
    if not entries:
        return None
    files = [ArtifactFileIn(path=e.path, size=e.size, sha256=e.sha256) for e in entries]
    aset, needed = begin(session, settings, store, attempt, job, ArtifactSetIn(kind=kind, files=files))
    where = {e.sha256: folder / e.path for e in entries}
    for sha in needed:
        upload = check_blob(session, aset, sha)
        store.abort(upload)  # this copy is whole and local: send it from the start
        store.append(upload, 0, _chunks(where[sha]))
        store.finish(upload, sha)
    return commit(session, store, attempt, pk(aset))


def materialize(session: Session, store: BlobStore, aset: ArtifactSet, dest: Path) -> None:
    """Write the set's files under ``dest`` from their blobs (a chunk at a time)."""
    for item in described(session, [aset])[0].items:
        target = dest / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            for chunk in store.read(item.sha256):
                out.write(chunk)


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(transfer.READ):
            yield chunk


# --- reading ----------------------------------------------------------------------------------------


def latest_checkpoint(session: Session, job_id: int) -> ArtifactSet | None:
    return session.exec(
        select(ArtifactSet)
        .where(ArtifactSet.job_id == job_id, ArtifactSet.kind == "checkpoint", col(ArtifactSet.complete))
        .order_by(col(ArtifactSet.id).desc())
    ).first()


def described(session: Session, sets: Iterable[ArtifactSet]) -> list[ArtifactSetOut]:
    """Sets with their files, for the wire."""
    sets = list(sets)
    files: dict[int, list[ArtifactFile]] = {pk(s): [] for s in sets}
    if files:
        for f in session.exec(
            select(ArtifactFile).where(col(ArtifactFile.set_id).in_(files)).order_by(col(ArtifactFile.path))
        ):
            files[f.set_id].append(f)
    return [
        ArtifactSetOut.model_validate(
            {**s.model_dump(), "items": [ArtifactFileOut.model_validate(f) for f in files[pk(s)]]}
        )
        for s in sets
    ]


def outputs(session: Session, job_id: int, attempt: int | None = None) -> list[ArtifactSet]:
    """The job's complete output sets, oldest attempt first (or only ``attempt``'s)."""
    query = select(ArtifactSet).where(
        ArtifactSet.job_id == job_id, ArtifactSet.kind == "output", col(ArtifactSet.complete)
    )
    if attempt is not None:
        query = query.where(ArtifactSet.attempt == attempt)
    return list(session.exec(query.order_by(col(ArtifactSet.attempt))))


def job_file(session: Session, job_id: int, file_id: int) -> ArtifactFile:
    """A file of one of the job's complete sets (outputs or its checkpoint)."""
    row = session.exec(
        select(ArtifactFile)
        .join(ArtifactSet, col(ArtifactSet.id) == ArtifactFile.set_id)
        .where(ArtifactFile.id == file_id, ArtifactSet.job_id == job_id, col(ArtifactSet.complete))
    ).first()
    if row is None:
        raise NotFound(f"job {job_id} has no file {file_id}", field="file_id", fix="list them with coop status JOB")
    return row


def restorable(session: Session, job: Job, sha256: str) -> bool:
    """Whether an attempt of ``job`` may fetch the blob: it is in the job's last checkpoint or in the
    outputs one of its inputs names."""
    current = latest_checkpoint(session, pk(job))
    sets = [pk(s) for _, s in input_sets(session, job)] + ([pk(current)] if current is not None else [])
    found = session.exec(
        select(ArtifactFile.id).where(col(ArtifactFile.set_id).in_(sets), ArtifactFile.sha256 == sha256)
    ).first()
    return found is not None


# --- inputs -----------------------------------------------------------------------------------------


def inputs_state(session: Session, wanted: dict[int, list[int]]) -> tuple[dict[int, str], dict[int, str]]:
    """For pending jobs and the earlier jobs whose outputs they take (``inputs:``, resolved to ids at
    submit): (why each one not ready waits, why each one that never can be fails). An input is ready
    once its job SUCCEEDED with outputs."""
    upstream = {u for ids in wanted.values() for u in ids}
    if not upstream:
        return {}, {}
    found = {pk(j): j for j in session.exec(select(Job).where(col(Job.id).in_(upstream)))}
    with_outputs = set(
        session.exec(
            select(ArtifactSet.job_id).where(
                col(ArtifactSet.job_id).in_(upstream), ArtifactSet.kind == "output", col(ArtifactSet.complete)
            )
        )
    )
    waiting: dict[int, str] = {}
    failing: dict[int, str] = {}
    for job_id, ids in wanted.items():
        for u in ids:
            job = found.get(u)
            if job is not None and job.state == JobState.SUCCEEDED and u in with_outputs:
                continue
            if job is None or job.state in TERMINAL_STATES:
                ended = "is gone" if job is None else f"ended {job.state}"
                if job is not None and job.state == JobState.SUCCEEDED:
                    ended = f"SUCCEEDED without outputs (nothing under $COOP_OUTPUT_DIR, or see coop logs {u})"
                failing[job_id] = f"its input job {u} {ended}: there is nothing to give it"
                break
            waiting.setdefault(
                job_id, f"waiting: its input job {u} ({job.name}) is {job.state}; it starts once that job SUCCEEDED"
            )
    return {k: v for k, v in waiting.items() if k not in failing}, failing


def input_sets(session: Session, job: Job) -> list[tuple[str, ArtifactSet]]:
    """(folder, output set) per input of ``job``: each input job's latest attempt's outputs."""
    try:
        wanted_inputs = validate_spec(job.spec).inputs
    except SpecError:  # the scheduler fails such a job; it has nothing to fetch
        return []
    chosen = []
    for wanted in wanted_inputs:
        sets = outputs(session, int(wanted.job))
        if sets:
            chosen.append((wanted.folder, sets[-1]))
    return chosen


# --- expiry -----------------------------------------------------------------------------------------


def expire(session: Session, settings: Settings, store: BlobStore, now: datetime | None = None) -> int:
    """Drop what is past its age: outputs completed more than ``COOP_ARTIFACT_TTL_DAYS`` ago, the
    checkpoints of jobs that ended that long ago, and sets never completed after a day. Returns how
    many sets went."""
    now = now or utcnow()
    doomed = list(
        session.exec(
            select(ArtifactSet).where(
                ~col(ArtifactSet.complete), ArtifactSet.created_at < now - timedelta(seconds=PENDING_SET_TTL_S)
            )
        )
    )
    if settings.artifact_ttl_days > 0:
        cutoff = now - timedelta(days=settings.artifact_ttl_days)
        doomed += session.exec(
            select(ArtifactSet).where(
                ArtifactSet.kind == "output", col(ArtifactSet.complete), col(ArtifactSet.completed_at) < cutoff
            )
        )
        doomed += session.exec(
            select(ArtifactSet)
            .join(Job, col(Job.id) == ArtifactSet.job_id)
            .where(
                ArtifactSet.kind == "checkpoint",
                col(Job.state).in_(TERMINAL_STATES),
                col(Job.finished_at) < cutoff,
            )
        )
    _drop(session, store, doomed)
    return len(doomed)


def _drop(session: Session, store: BlobStore, sets: list[ArtifactSet]) -> None:
    """Delete ``sets`` (commits), then the blobs no remaining set lists."""
    ids = [pk(s) for s in sets]
    shas: set[str] = set()
    if ids:
        shas = set(session.exec(select(ArtifactFile.sha256).where(col(ArtifactFile.set_id).in_(ids))))
        session.exec(delete(ArtifactFile).where(col(ArtifactFile.set_id).in_(ids)))  # type: ignore[call-overload]
        session.exec(delete(ArtifactSet).where(col(ArtifactSet.id).in_(ids)))  # type: ignore[call-overload]
    session.commit()
    if not shas:
        return
    kept = set(session.exec(select(ArtifactFile.sha256).where(col(ArtifactFile.sha256).in_(shas))))
    for sha in shas - kept:  # a set begun meanwhile that lists it finds it missing at commit, and sends it
        store.delete(sha)
