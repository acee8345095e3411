"""The dashboard in a real headless browser (Debian's chromium driven by Selenium)."""

from __future__ import annotations

import pytest

from tests.integration.ops.ops_web import message
from tests.peers.browser import ARTIFACTS, chromium, requires_chromium

pytestmark = requires_chromium


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path, width=1280, page_timeout=30) as drv:
        yield drv


class TestDashboardInBrowser:
    def test_overview_filter_errors_open_detail(self, dashboard, browser):
        """Load the overview, follow 'with errors', filter by priority in the form, open the
        failing communication and see its Error entry and ticket link; save a screenshot."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import Select, WebDriverWait

        d = dashboard("[lmtp]\ntrusted = true\n")
        for n in range(1, 4):
            assert d.deliver(message(n)) == [250]
        assert d.deliver(message(9, extra="X-OTOBO-Queue: Nowhere\r\n")) == [250]

        browser.get(d.base + "/log")
        assert "Communication log" in browser.title
        assert browser.find_element(By.ID, "failed").text == "0"
        assert "Incoming" in browser.find_element(By.ID, "counts").text

        browser.find_element(By.LINK_TEXT, "Communications").click()
        WebDriverWait(browser, 30).until(ec.url_contains("/log/list"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#communications tr.comm")
        assert len(rows) == 8                   # a message and a connection each

        Select(browser.find_element(By.ID, "priority")).select_by_visible_text("Error")
        browser.find_element(By.ID, "apply").click()
        WebDriverWait(browser, 30).until(ec.url_contains("priority=Error"))
        WebDriverWait(browser, 30).until(
            ec.text_to_be_present_in_element((By.ID, "total"), "1 communication"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#communications tr.comm")
        assert len(rows) == 1
        assert "priority=Error" in browser.current_url
        assert browser.find_element(By.ID, "total").text == "1 communication"

        rows[0].find_element(By.CSS_SELECTOR, "a.detail").click()
        WebDriverWait(browser, 30).until(ec.url_matches(r"/log/\d+"))
        assert "Communication #" in browser.find_element(By.TAG_NAME, "h1").text
        entries = browser.find_element(By.CSS_SELECTOR, "table.entries").text
        assert "Queue" in entries and "Nowhere" in entries and "Error" in entries
        ticket_link = browser.find_element(By.CSS_SELECTOR, "a.ticket-link")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-log-detail.png"))

        ticket_link.click()
        WebDriverWait(browser, 30).until(ec.url_contains("/tickets/"))
        assert "Hello, message 9." in browser.find_element(By.CSS_SELECTOR, "pre.body").text
        browser.get(d.base + "/log")
        browser.save_screenshot(str(ARTIFACTS / "dashboard-overview.png"))
        assert (ARTIFACTS / "dashboard-log-detail.png").stat().st_size > 1000
