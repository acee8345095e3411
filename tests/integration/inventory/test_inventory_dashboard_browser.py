"""The inventory pages in a real headless browser (Debian's chromium driven by Selenium)."""

from __future__ import annotations

import pytest

from tests.integration.inventory.conftest import account_toml
from tests.peers.browser import ARTIFACTS, chromium, requires_chromium
from tests.peers.lmtp import LmtpClient

pytestmark = [pytest.mark.dovecot, requires_chromium]

POLICIES = {"010-spam.toml": """
    [[filter]]
    name = "010-spam"
    stop_after_match = true
    match = [{ header = "X-Spam-Flag", value = "^yes$" }]
    set = { "X-Deskgate-Queue" = "Junk" }
    """, "020-vip.toml": """
    [[filter]]
    name = "020-vip"
    match = [{ header = "From", email = "boss@customer\\\\.test" }]
    set = { "X-Deskgate-Priority" = "5 very high" }
    """}


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path, width=1400, page_timeout=60) as drv:
        yield drv


def msg(n: int, to: str) -> bytes:
    return (f"From: c{n}@customer.test\r\nTo: {to}\r\nSubject: s{n}\r\n"
            f"Message-ID: <b{n}@customer.test>\r\n\r\nbody {n}\r\n").encode()


class TestInventoryInBrowser:
    def test_search_sort_and_check(self, mailbox, inventory_dashboard, browser):
        """Navigate the four lists, search and filter addresses, sort queues by open tickets,
        search filters, and press an account's Check button; save screenshots."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import Select, WebDriverWait

        def texts(table: str, col: int = 0) -> list[str]:
            return [r.find_elements(By.TAG_NAME, "td")[col].text for r in
                    browser.find_elements(By.CSS_SELECTOR, f"table#{table} tr.item")]

        def wait_url(part: str) -> None:
            WebDriverWait(browser, 30).until(ec.url_contains(part))

        mailbox.append("helpdesk", [msg(n, "support@example.org") for n in range(4)])
        d = inventory_dashboard({"50-accounts.toml": account_toml(mailbox, "imaps") +
                                 account_toml(mailbox, "pop3s", name="badpw",
                                              password="wrong-password")},
                                policies=POLICIES)
        c = LmtpClient(d.rg.socket_path)
        c.lhlo()
        for n, to in enumerate(["sales@example.org"] + ["support@example.org"] * 2):
            _, data = c.transaction("c@customer.test", [to], msg(n, to))
            assert [x[0] for x in data] == [250]
        c.close()
        ARTIFACTS.mkdir(exist_ok=True)

        browser.get(d.base + "/log")
        browser.find_element(By.LINK_TEXT, "Addresses").click()
        wait_url("/addresses")
        assert "System addresses" in browser.title
        assert len(texts("addresses")) == 5
        box = browser.find_element(By.ID, "search")
        box.send_keys("Example Support")
        browser.find_element(By.ID, "apply").click()
        wait_url("search=Example+Support")
        assert texts("addresses") == ["support@example.org"]
        browser.find_element(By.ID, "search").clear()
        Select(browser.find_element(By.ID, "valid")).select_by_visible_text("invalid-temporarily")
        browser.find_element(By.ID, "apply").click()
        wait_url("valid=invalid-temporarily")
        assert texts("addresses") == ["paused@example.org"]
        browser.save_screenshot(str(ARTIFACTS / "inventory-addresses.png"))

        browser.find_element(By.LINK_TEXT, "Queues").click()
        wait_url("/queues")
        browser.find_element(By.ID, "sort-open_tickets").click()
        wait_url("sort=open_tickets")
        assert texts("queues", 5) == ["0", "0", "1", "2"]
        browser.find_element(By.ID, "sort-open_tickets").click()
        wait_url("sort=-open_tickets")
        assert texts("queues") == ["Support", "Sales", "Raw", "Junk"]
        assert "▼" in browser.find_element(By.ID, "sort-open_tickets").text
        browser.save_screenshot(str(ARTIFACTS / "inventory-queues.png"))

        browser.find_element(By.LINK_TEXT, "Filters").click()
        wait_url("/filters")
        assert texts("filters", 1) == ["010-spam", "020-vip"]
        browser.find_element(By.ID, "search").send_keys("very high")
        browser.find_element(By.ID, "apply").click()
        wait_url("search=very+high")
        assert texts("filters", 1) == ["020-vip"]

        browser.find_element(By.LINK_TEXT, "Accounts").click()
        wait_url("/accounts")
        assert texts("accounts") == ["box", "badpw"]
        assert "wrong-password" not in browser.page_source
        browser.save_screenshot(str(ARTIFACTS / "inventory-accounts.png"))
        browser.find_element(By.ID, "check-box").click()
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.ID, "steps")))
        verdict = browser.find_element(By.ID, "verdict")
        assert "works: 4 messages waiting" in verdict.text
        browser.save_screenshot(str(ARTIFACTS / "inventory-account-check.png"))
        browser.back()
        wait_url("/accounts")
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "check-badpw")))
        browser.find_element(By.ID, "check-badpw").click()
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.ID, "steps")))
        assert "does not work" in browser.find_element(By.ID, "verdict").text
        assert "login as helpdesk refused" in browser.find_element(By.ID, "steps").text
        assert mailbox.count("helpdesk") == 4
