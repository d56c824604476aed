"""Services raise domain errors; ``coop/server/errors.py`` alone says what each is on the wire."""

from __future__ import annotations

import json
import pickle

import anyio
from fastapi import FastAPI

from coop.server import errors
from coop.server.models import Job
from coop.server.services import errors as domain
from coop.server.services.lifecycle import IllegalTransition
from coop.server.store import OffsetMismatch  # every module that defines a domain error is loaded here
from coop.states import JobState


def _kinds(cls: type[domain.DomainError]) -> list[type[domain.DomainError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_kinds(sub))]


def test_every_domain_error_has_a_status_and_code() -> None:
    own_arguments = {IllegalTransition, OffsetMismatch}  # built below with what they take
    for kind in _kinds(domain.DomainError):
        if kind not in own_arguments:
            assert errors.http_of(kind("refused")) != (500, "internal_error"), kind
    job = Job(id=7, member_id=1, name="train", kind="batch", spec={}, state="FAILED")
    assert errors.http_of(IllegalTransition(job, JobState.RUNNING)) == (409, "conflict")
    assert errors.http_of(OffsetMismatch("up-00001", 0, 5)) == (409, "conflict")
    assert errors.http_of(domain.TooLarge("big")) == (413, "too_large")


def test_a_domain_error_is_rendered_in_the_one_error_shape() -> None:
    app = FastAPI()
    errors.install(app)
    handler = app.exception_handlers[domain.DomainError]

    def render(exc: domain.DomainError) -> tuple[int, object]:
        reply = anyio.run(handler, None, exc)  # type: ignore[arg-type]
        return reply.status_code, json.loads(bytes(reply.body))

    assert render(domain.NotFound("pool 'x' does not exist", field="name", fix="list pools")) == (
        404,
        {
            "error": "not_found",
            "message": "pool 'x' does not exist",
            "errors": [{"field": "name", "message": "pool 'x' does not exist", "fix": "list pools"}],
        },
    )
    assert render(domain.Conflict("taken")) == (409, {"error": "conflict", "message": "taken", "errors": []})


def test_domain_errors_pickle() -> None:
    """A workdir is checked in a worker process: its refusal comes back whole."""
    back = pickle.loads(pickle.dumps(domain.InvalidWorkdir("no", field="workdir", fix="pack it")))
    assert isinstance(back, domain.InvalidWorkdir)
    assert (back.message, back.field, back.fix, str(back)) == ("no", "workdir", "pack it", "no")
