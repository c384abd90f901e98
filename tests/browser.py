"""Headless Chromium for tests that look at a web page the way a person does: Debian's chromium and
chromium-driver on PATH, driven by selenium (the `test` extra), or the test is skipped with the reason.

A page of a single-page app is rendered by script after it loads, so `Pages.open` waits for the
texts a test expects (not for the load event) and screenshots every page it checks: into the
test's folder, and into $KNIGHTCTL_SCREENSHOTS when that names a folder, for a person to look at.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

WAIT_S = 30  # a cold UI's first page loads its whole bundle; on a busy two-core machine that takes a while
WINDOW = (1920, 1080)  # wide enough that the runs table's columns and the side panels all fit
SCREENSHOTS_ENV = "KNIGHTCTL_SCREENSHOTS"


def unavailable() -> str | None:
    """Why no browser test can run here, or None when selenium, chromium and chromedriver are all present."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (it is in the test extra: pip install -e '.[test]')"
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH (Debian: apt-get install chromium chromium-driver)"
    return None


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A selenium WebDriver on a fresh headless Chromium profile (so no earlier visit's settings), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start;
    # --disable-dev-shm-usage: a container's /dev/shm is often 64 MB, too small for a page's renderer.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    options.binary_location = shutil.which("chromium") or "chromium"
    # The driver on PATH, named: selenium would otherwise ask Selenium Manager, which downloads one.
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


class Pages:
    """One browser's pages, each opened, waited for and screenshotted under a name, in order."""

    def __init__(self, driver: Any, folder: Path) -> None:
        self.driver, self.folder, self.count = driver, folder, 0
        folder.mkdir(parents=True, exist_ok=True)
        extra = os.environ.get(SCREENSHOTS_ENV)
        self.extra = Path(extra) if extra else None

    def open(self, url: str, name: str, *texts: str) -> str:
        """Go to `url`, wait until the page shows every one of `texts`, screenshot it; the page's text."""
        self.driver.get(url)
        return self.wait_for(name, *texts)

    def wait_for(self, name: str, *texts: str) -> str:
        """Wait until the current page shows every one of `texts` and screenshot it as `name`; the page's text."""
        self.wait_until(name, lambda: missing_from(self.text(), texts), "not shown")
        return self.text()

    def wait_for_links(self, name: str, links: dict[str, str]) -> None:
        """Wait until the current page links to each URL of `links` with the text it maps to (a link's text can
        change once the page has fetched more: an id first, then the name it stands for); screenshot it."""
        self.wait_until(
            name, lambda: {url: text for url, text in links.items() if self.links().get(url) != text}, "not linked"
        )

    def wait_until(self, name: str, unmet: Callable[[], object], says: str) -> None:
        """Wait until `unmet()` is empty and screenshot the page as `name`. Fails with what is still unmet, the
        page's text and a screenshot of it."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, WAIT_S, poll_frequency=0.25).until(lambda driver: not unmet())
        except TimeoutException:
            shot = self.shoot(f"{name}-timed-out")
            pytest.fail(
                f"{name}: {unmet()} {says} after {WAIT_S} s at {self.driver.current_url} (screenshot {shot});"
                f" the page reads:\n{self.text()[:3000]}"
            )
        self.shoot(name)

    def links(self) -> dict[str, str]:
        """Every link on the page: its URL and its text."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        try:
            return {link.get_attribute("href"): link.text for link in self.driver.find_elements(By.TAG_NAME, "a")}
        except WebDriverException:  # a link replaced while read (StaleElementReference): read again next poll
            return {}

    def text(self) -> str:
        """What the page shows as text (hidden elements excluded)."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.by import By

        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:  # between two renders the body can be replaced under us: read again next poll
            return ""

    def shoot(self, name: str) -> Path:
        """Screenshot the window as NN-name.png in the test's folder (and in $KNIGHTCTL_SCREENSHOTS)."""
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.extra / path.name)
        return path


def missing_from(text: str, texts: tuple[str, ...] | list[str]) -> list[str]:
    """Those of `texts` that `text` does not contain."""
    return [wanted for wanted in texts if wanted not in text]
