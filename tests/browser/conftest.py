"""Browser fixtures: Playwright driving Debian's Chromium (/usr/bin/chromium), headless.

Without a browser these tests skip with the reason, except when CHAT_TEST_REQUIRE_BROWSER=1
(CI sets it): then they fail. Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHAT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CHAT_TEST_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (CHAT_TEST_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope, not session: Playwright's sync API keeps an event loop running in this thread,
    # and the asyncio tests that run after this module need it stopped.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    except Exception as e:
        pw.stop()
        _unavailable(f"Chromium at {CHROMIUM} did not start: {e}")
    yield chromium
    chromium.close()
    pw.stop()


class Seen:
    """What a page did besides rendering: uncaught errors and dialogs (answered with `accept`)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.accept = False

    def dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.accept() if self.accept else dialog.dismiss()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (its own localStorage) at desktop size; fails on uncaught page errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    page = context.new_page()
    seen = Seen()
    page.on("pageerror", lambda e: seen.errors.append(str(e)))
    page.on("dialog", seen.dialog)
    page.seen = seen  # type: ignore[attr-defined]
    yield page
    context.close()
    assert not seen.errors, f"uncaught errors in the page: {seen.errors}"
