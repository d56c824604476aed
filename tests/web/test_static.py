"""What the coordinator serves for the dashboard, without a browser: the page and its headers, the
assets and their licences, the size of it all, the package data a wheel carries, and the one endpoint
the dashboard adds (admins only)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coop.server import web
from tests.conftest import Coordinator, loopless_coordinator

ROOT = Path(__file__).resolve().parents[2]
WEB = Path(web.__file__).parent
VENDOR = web.STATIC / "vendor"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with loopless_coordinator(tmp_path_factory.mktemp("web-static")) as c:
        yield c


def test_one_page_for_every_dashboard_path_with_a_strict_policy(coordinator: Coordinator) -> None:
    url = coordinator.url
    root = httpx.get(url + "/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    assert httpx.get(url + "/ui", follow_redirects=False).headers["location"] == "/ui/"
    pages = [httpx.get(url + p) for p in ("/ui/", "/ui/jobs/12", "/ui/admin", "/ui/no/such/page")]
    assert {p.status_code for p in pages} == {200} and len({p.text for p in pages}) == 1
    page = pages[0]
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["x-content-type-options"] == "nosniff"
    csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    (importmap,) = re.findall(r'<script type="importmap">(.*?)</script>', page.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(importmap.encode()).digest()).decode()
    # the one inline script runs by its hash; every other script comes from the coordinator itself
    assert csp["script-src"] == f"'self' 'sha256-{digest}'"
    assert csp["default-src"] == "'self'" and csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    for target in json.loads(importmap)["imports"].values():
        assert httpx.get(url + target).headers["content-type"].startswith("text/javascript")
    # no asset comes from elsewhere (no CDN): every src and href is the coordinator's own
    for link in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert link.startswith("/ui/static/"), link
        assert httpx.get(url + link).status_code == 200, link
    missing = httpx.get(url + "/ui/static/no-such.js")
    assert missing.status_code == 404 and "<html" not in missing.text  # not the page: a broken asset shows


def test_our_scripts_fetch_nothing_from_elsewhere() -> None:
    for path in [*web.STATIC.glob("*.js"), *web.STATIC.glob("*.css"), web.INDEX]:
        text = path.read_text()
        assert not re.search(r"(?:src|href|import|fetch|url)\W{0,3}(?:https?:)?//", text), path


def test_vendored_parts_are_the_released_files_with_their_licences() -> None:
    manifest = json.loads((VENDOR / "manifest.json").read_text())
    listed = set()
    for name, package in manifest.items():
        assert package["license"] in ("MIT", "Apache-2.0") and package["tarball"].startswith(
            "https://registry.npmjs.org/"
        )
        assert "LICENSE" in package["files"]
        for file, meta in package["files"].items():
            data = (VENDOR / name / file).read_bytes()
            assert hashlib.sha256(data).hexdigest() == meta["sha256"], f"{name}/{file} differs from its release"
            listed.add(f"{name}/{file}")
    on_disk = {str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert on_disk == listed, "every vendored file is in vendor/manifest.json, and only those"


def test_everything_the_dashboard_ships_is_under_200_kb() -> None:
    """The first page loads less than this (tests/web/test_dashboard.py measures it in the browser)."""
    total = sum(p.stat().st_size for p in web.STATIC.rglob("*") if p.is_file() and p.name != "LICENSE")
    total += web.INDEX.stat().st_size
    assert total < 200_000, f"{total} bytes"


def test_a_wheel_carries_the_dashboard(tmp_path: Path) -> None:
    """A non-editable install serves the same files: they are package data of coop.server.web."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
        + [str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = tmp_path.glob("coop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT)) for p in WEB.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert shipped and shipped <= names, sorted(shipped - names)


def test_the_dashboards_endpoint_is_for_admins_only(coordinator: Coordinator) -> None:
    url = coordinator.url + "/v1/dashboard"
    assert httpx.get(url).status_code == 401
    _, member_token = coordinator.new_member("mia")
    agent_token = coordinator.admin.create_token(kind="agent", member="mia")["token"]
    for token in (member_token, agent_token):
        refused = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    answer = httpx.get(url, headers={"Authorization": f"Bearer {coordinator.admin_token}"})
    assert answer.status_code == 200 and answer.json() == {"grafana_url": None}
