"""One error shape for the whole API: ``{"error": code, "message": ..., "errors": [{field, message, fix}]}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coop.spec import FieldError, SpecError


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = [FieldError(field=field, message=message, fix=fix)] if (field or fix) else []


def not_found(what: str, ident: object) -> ApiError:
    return ApiError(
        404, "not_found", f"{what} {ident} does not exist", field="", fix=f"list them to find the {what} id"
    )


def _body(code: str, message: str, errors: list[FieldError]) -> dict[str, object]:
    return {"error": code, "message": message, "errors": [e.model_dump() for e in errors]}


def _loc(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.code, exc.message, exc.errors), status_code=exc.status)

    @app.exception_handler(SpecError)
    async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
        errors = [
            FieldError(field=f"spec.{e.field}" if e.field else "spec", message=e.message, fix=e.fix) for e in exc.errors
        ]
        return JSONResponse(_body("invalid_job_spec", str(exc), errors), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            field = _loc(tuple(err.get("loc", ())))
            fix = "send a value of the documented type; see /docs for the request schema"
            if err.get("type") == "missing":
                fix = f"add the required field {field!r}"
            elif err.get("type") == "extra_forbidden":
                fix = f"remove {field!r}; it is not a field of this request"
            errors.append(FieldError(field=field, message=str(err.get("msg", "invalid")), fix=fix))
        message = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return JSONResponse(_body("invalid_request", message, errors), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "error")
        return JSONResponse(
            _body(code, str(exc.detail), []), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )
