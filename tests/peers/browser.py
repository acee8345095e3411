"""Headless Debian chromium driven by Selenium, for the dashboard tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.peers.require import import_peer, requires_peer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

requires_chromium = requires_peer(
    None if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
    else "Debian's chromium and chromium-driver are not installed (make system-deps)")


@contextmanager
def chromium(tmp_path: Path, *, width: int = 1280, page_timeout: float = 30) -> Iterator[Any]:
    """A headless chromium WebDriver with its own profile; quits chromium and the driver."""
    webdriver: Any = import_peer("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},1000", f"--user-data-dir={tmp_path / 'chromium'}",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(arg)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log"))
    drv = webdriver.Chrome(service=service, options=opts)
    drv.set_page_load_timeout(page_timeout)
    try:
        yield drv
    finally:
        drv.quit()
