"""What the browser tests share: Debian's chromium driven by Playwright, a logged-in tab, screenshots.

Importing this module skips the importing test module when chromium or Playwright is
missing. Screenshots go to ``test-artifacts/browser/``, or to the folder named by
``FEISHU_HIRE_SCREENSHOTS`` (``FEISHU_HIRE_SCREENSHOTS=docs/screenshots`` renews the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("FEISHU_HIRE_SCREENSHOTS") or ROOT / "test-artifacts" / "browser")

if not Path(CHROMIUM).exists():
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); the browser test cannot run here",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module", name="browser")
def launched_browser() -> Iterator[Any]:
    """Headless chromium for the module: import this into a test module, and ask for ``browser``."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        sync_api.expect.set_options(timeout=30_000)  # the api-server shares two cores with the tasks
        yield launched
        launched.close()


def logged_in(browser: Any, url: str, login: tuple[str, str]) -> Any:
    """A tab of its own (its own cookies) logged in to the Airflow at ``url`` as ``login``."""
    tab = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True).new_page()
    tab.set_default_timeout(30_000)
    user, password = login
    tab.goto(url)
    tab.locator("input[name=username]").fill(user)
    tab.locator("input[name=password]").fill(password)
    tab.locator("button[type=submit]").click()
    tab.wait_for_url(url + "/")
    return tab


def shot(page: Any, name: str) -> None:
    """The visible 1400x900 only: the README's pictures stay small."""
    page.screenshot(path=str(SHOTS / f"{name}.png"))
