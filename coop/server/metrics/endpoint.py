"""``GET /metrics`` for Prometheus, behind a bearer token when ``COOP_METRICS_TOKEN`` is set."""

from __future__ import annotations

import hashlib
import hmac
import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from sqlalchemy.engine import Engine

from coop.server.config import Settings
from coop.server.deps import SessionReleasingRoute
from coop.server.errors import ApiError
from coop.server.metrics.collector import LedgerCollector
from coop.server.metrics.scheduler import scheduler_metrics

log = logging.getLogger("coop.metrics")

TOKEN_FIX = (
    "give Prometheus the token: 'authorization: {credentials_file: FILE}' in the scrape config, "
    "FILE holding COOP_METRICS_TOKEN (see docs/operations.md)"
)


def registry(engine: Engine, settings: Settings) -> CollectorRegistry:
    """A registry per app: ledger gauges, the scheduler's counters, and process figures."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(engine, settings))
    reg.register(scheduler_metrics(engine))
    ProcessCollector(registry=reg)
    return reg


def router(engine: Engine, settings: Settings) -> APIRouter:
    reg = registry(engine, settings)
    secret = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    # compare digests, so neither the length nor the bytes of the token leak through timing
    expected = hashlib.sha256(secret.encode()).digest() if secret else None
    if expected is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("COOP_METRICS_TOKEN is not set: /metrics (member and node names, balances) is open to anyone")
    api = APIRouter(tags=["metrics"], route_class=SessionReleasingRoute)

    @api.get("/metrics", response_class=Response, summary="Prometheus metrics (text exposition format)")
    def metrics(request: Request) -> Response:
        if expected is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = hashlib.sha256(token.strip().encode()).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected):
                raise ApiError(
                    401, "unauthorized", "missing or wrong metrics token", field="Authorization", fix=TOKEN_FIX
                )
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    return api
