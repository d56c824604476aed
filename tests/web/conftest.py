"""A real headless browser for the dashboard's tests: Debian's chromium driven by Playwright.

Playwright comes from PyPI; its own browser download is never used. ``COOP_TEST_CHROMIUM`` names
another Chromium binary. ``make test`` installs chromium (scripts/services/chromium.sh); without it
these tests skip, and under ``CI=true`` fail. Screenshots go to ``test-artifacts/web/`` (git-ignored).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
EXPECT_S = 30  # the longest a page may take to show what the API already says


def chromium_path() -> str | None:
    return os.environ.get("COOP_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module; each test opens its own contexts (one per member)."""
    require_service(
        importlib.util.find_spec("playwright") is not None, "playwright is not installed (pip install -e '.[dev]')"
    )
    executable = chromium_path()
    require_service(executable is not None, "chromium is not installed (scripts/services/chromium.sh up)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_S * 1000)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


class Console:
    """What the page reported: script errors fail the test that reads them."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(browser: Any, url: str, token: str, path: str = "/ui/") -> Any:
    """A new tab (its own sessionStorage) signed in through the form, as a person does."""
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True).new_page()
    page.console_log = Console(page)
    page.goto(url + path)
    page.fill("#token", token)
    page.click("form button[type=submit]")
    expect(page.locator("header.top .who")).to_be_visible()
    return page


def goto(page: Any, path: str) -> None:
    """In-app navigation (the SPA's own router), keeping the tab's sessionStorage and state."""
    page.evaluate("p => { history.pushState(null, '', p); dispatchEvent(new PopStateEvent('popstate')); }", path)
