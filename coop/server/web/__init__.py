"""The members' web dashboard (docs/dashboard.md), served by the coordinator itself at ``/ui/``.

It serves files only: one HTML page and the static assets that ship in this package (no CDN). The page
reads everything through the public ``/v1`` API with the member's own bearer token, which it keeps in
the browser's session storage: what a role sees in the browser is exactly what the API lets it see.
The one endpoint added here, ``GET /v1/dashboard``, tells an admin where Grafana is.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from coop.server.deps import AdminDep, SessionReleasingRoute

STATIC = Path(__file__).parent / "static"
INDEX = Path(__file__).parent / "index.html"
PREFIX = "/ui"
_IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.DOTALL)


class WebSettings(BaseSettings):
    """The dashboard's own setting, read from the environment like the coordinator's."""

    model_config = SettingsConfigDict(env_prefix="COOP_", extra="ignore")

    grafana_url: str | None = Field(default=None, description="the cooperative's Grafana, linked for admins")


class DashboardConfig(BaseModel):
    grafana_url: str | None = Field(description="the cooperative's Grafana (COOP_GRAFANA_URL); null: none")


@functools.lru_cache(maxsize=8)
def _page(root: str) -> tuple[str, str]:
    """The page for a deployment under ``root`` (a proxy's path prefix, usually ""), and its
    Content-Security-Policy: scripts only from here, the one inline script (the import map) by its hash."""
    html = INDEX.read_text(encoding="utf-8").replace("%ROOT%", root)
    match = _IMPORT_MAP.search(html)
    assert match, "index.html has no import map"
    digest = base64.b64encode(hashlib.sha256(match.group(1).encode("utf-8")).digest()).decode()
    csp = "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' 'sha256-{digest}'",
            "style-src 'self' 'unsafe-inline'",  # uPlot sizes its elements with inline styles
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        )
    )
    return html, csp


def _index(request: Request) -> HTMLResponse:
    html, csp = _page(request.scope.get("root_path", "").rstrip("/"))
    headers = {
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return HTMLResponse(html, headers=headers)


def router(settings: WebSettings | None = None) -> APIRouter:
    web = settings or WebSettings()
    pages = APIRouter(route_class=SessionReleasingRoute)

    @pages.get("/", include_in_schema=False)
    def root(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '').rstrip('/')}{PREFIX}/")

    @pages.get("/v1/dashboard", response_model=DashboardConfig, tags=["dashboard"])
    def dashboard_config(_: AdminDep) -> DashboardConfig:
        """What the admin's page of the dashboard links to (admins only)."""
        return DashboardConfig(grafana_url=web.grafana_url)

    @pages.get(PREFIX, include_in_schema=False)
    def bare(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '').rstrip('/')}{PREFIX}/")

    # every page of the dashboard is the same document: the script routes by path
    @pages.get(PREFIX + "/", include_in_schema=False, response_class=HTMLResponse)
    @pages.get(PREFIX + "/{page:path}", include_in_schema=False, response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return _index(request)

    return pages


def install(app: FastAPI) -> None:
    """Serve the dashboard: ``/ui/static/`` (mounted first, so a missing asset is a 404, not the page),
    then the page at ``/ui/...`` and ``GET /v1/dashboard``."""
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC, follow_symlink=False), name="ui-static")
    app.include_router(router())
