"""One error shape for the whole API: ``{"error": code, "message": ..., "errors": [{field, message, fix}]}``.

Services raise domain errors (``services/errors.py``), named for what happened; ``DOMAIN_ERRORS`` is the
one table of the HTTP status and error code each becomes. ``ApiError`` is for what routes and their
dependencies refuse themselves (authentication, authorisation, their own checks of a request).

Rendering an error must never fail in turn: messages quote what the client sent, which may hold a
lone surrogate (``"\\ud800"`` in JSON) that UTF-8 cannot encode, so every string is made encodable.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from coop.server.services import errors as domain
from coop.spec import FieldError, SpecError

log = logging.getLogger("coop.server")
BODY_PARSE_FAILED = "There was an error parsing the body"  # FastAPI's detail when json.loads raised


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: lone surrogates become the text ``\\udXXX``, NaN and infinities ``null``."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_encodable(content), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _encodable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(str(k)): _encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = [FieldError(field=field, message=message, fix=fix)] if (field or fix) else []


# what each refusal a service raises is on the wire: (HTTP status, error code); a subclass not listed
# takes its nearest listed base's (``lifecycle.IllegalTransition`` is a Conflict)
DOMAIN_ERRORS: dict[type[domain.DomainError], tuple[int, str]] = {
    domain.NotFound: (404, "not_found"),
    domain.Conflict: (409, "conflict"),
    domain.Invalid: (422, "invalid_request"),
    domain.QuotaExceeded: (422, "over_quota"),
    domain.Unsatisfiable: (422, "unsatisfiable"),
    domain.UnknownWorkdir: (422, "unknown_workdir"),
    domain.HashMismatch: (422, "hash_mismatch"),
    domain.InvalidWorkdir: (422, "invalid_workdir"),
    domain.TooLarge: (413, "too_large"),
}


def http_of(exc: domain.DomainError) -> tuple[int, str]:
    """The status and error code of a domain error (``DOMAIN_ERRORS``); 500 for one the table lacks."""
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]
    log.error("no HTTP status for %s: add it to DOMAIN_ERRORS", type(exc).__name__)
    return 500, "internal_error"


def _body(code: str, message: str, errors: list[FieldError]) -> dict[str, object]:
    return {"error": code, "message": message, "errors": [e.model_dump() for e in errors]}


def _reply(status: int, code: str, message: str, errors: list[FieldError], headers: Any = None) -> JSONResponse:
    return SafeJSONResponse(_body(code, message, errors), status_code=status, headers=headers)


def _loc(loc: tuple[object, ...]) -> str:
    """``files.0.path``: where in the request, without the part of it (a body field may be named "path")."""
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc)


def _unparsable_body(request: Request, cause: BaseException | None) -> JSONResponse:
    """The body is JSON that Python cannot load (too deep, not UTF-8, an integer of thousands of digits):
    a 422 that says which, never a 400 without a reason."""
    # a job's spec is the one field of a request that nests freely
    field = "spec" if request.method == "POST" and request.url.path.rstrip("/").endswith("/v1/jobs") else "body"
    if isinstance(cause, RecursionError):
        message = "the JSON body is nested too deeply"
        fix = "a job spec nests a few levels (resources.gpu_memory); send the mapping from docs/jobspec.md"
    elif isinstance(cause, UnicodeError):
        message = "the body is not valid UTF-8 (or holds a lone surrogate)"
        fix = "send UTF-8 text without lone surrogates (\\ud800..\\udfff)"
    else:
        reason = str(cause or "unknown error").split("; use sys.")[0]  # not Python's advice to itself
        message = f"the body could not be read as JSON: {reason}"
        fix = "send a JSON object with numbers of at most a few hundred digits"
    return _reply(422, "invalid_request", f"{field}: {message}", [FieldError(field=field, message=message, fix=fix)])


def _validation_errors(exc: RequestValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors():
        field = _loc(tuple(err.get("loc", ())))
        fix = "send a value of the documented type; see /docs for the request schema"
        if err.get("type") == "missing":
            fix = f"add the required field {field!r}"
        elif err.get("type") == "extra_forbidden":
            fix = f"remove {field!r}; it is not a field of this request"
        elif err.get("type") in ("finite_number", "less_than_equal", "greater_than_equal", "less_than", "greater_than"):
            fix = f"send a finite number within the documented bounds for {field!r}; see /docs for the request schema"
        errors.append(FieldError(field=field, message=str(err.get("msg", "invalid")), fix=fix))
    return errors


def _is_text(raw: bytes) -> bool:
    """Percent-decoded, UTF-8 text without NUL (no database text column holds a NUL)."""
    decoded = unquote_to_bytes(raw)
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in decoded


def _undecodable(scope: Scope) -> str | None:
    """The part of the URL that is not text (``%ED%A0%80`` is a lone surrogate, ``%00`` a NUL),
    named as a field: "path", or the query parameter's name."""
    if not _is_text(scope.get("raw_path") or b""):
        return "path"
    for pair in (scope.get("query_string") or b"").split(b"&"):
        name, _, value = pair.replace(b"+", b" ").partition(b"=")
        if not _is_text(name):
            return "query"
        if not _is_text(value):
            return unquote_to_bytes(name).decode("utf-8")
    return None


class TextUrls:
    """Refuses (422) a URL whose path or query is not text, instead of letting the framework turn bad
    bytes into U+FFFD (a name nobody wrote) or pass a NUL to PostgreSQL (which refuses it: a 500)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        field = _undecodable(scope) if scope["type"] == "http" else None
        if field is None:
            await self.app(scope, receive, send)
            return
        message = "is not text once percent-decoded (a NUL, a lone surrogate, or bytes that are not UTF-8)"
        fix = "percent-encode UTF-8 text only, without %00; %ED%A0%80..%ED%BF%BF are lone surrogates"
        errors = [FieldError(field=field, message=message, fix=fix)]
        await _reply(422, "invalid_request", f"{field}: {message}", errors)(scope, receive, send)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _reply(exc.status, exc.code, exc.message, exc.errors)

    @app.exception_handler(domain.DomainError)
    async def _domain_error(_: Request, exc: domain.DomainError) -> JSONResponse:
        status, code = http_of(exc)
        errors = [FieldError(field=exc.field, message=exc.message, fix=exc.fix)] if (exc.field or exc.fix) else []
        return _reply(status, code, exc.message, errors)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        errors = [
            FieldError(field=f"spec.{e.field}" if e.field else "spec", message=e.message, fix=e.fix) for e in exc.errors
        ]
        return _reply(422, "invalid_job_spec", str(exc), errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        try:
            errors = _validation_errors(exc)
        except Exception:  # an error about the request must not become a 500 because of its contents
            log.exception("could not describe a validation error")
            errors = [FieldError(field="", message="invalid request", fix="see /docs for the request schema")]
        message = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return _reply(422, "invalid_request", message, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_PARSE_FAILED:
            return _unparsable_body(request, exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "error")
        return _reply(exc.status_code, code, str(exc.detail), [], headers=getattr(exc, "headers", None))
