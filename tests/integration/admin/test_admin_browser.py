"""The admin pages in a real headless browser (Debian's chromium driven by Selenium)
against the running gateway, with mail over LMTP to see each change take effect."""

from __future__ import annotations

import urllib.parse

import pytest

from tests.integration.admin.conftest import ADMIN, VIEWER, message
from tests.peers.browser import ARTIFACTS, chromium, requires_chromium

pytestmark = requires_chromium


def login_url(base: str, user: tuple[str, str], path: str) -> str:
    """base with the user's basic-auth credentials (chromium keeps them for the origin)."""
    u = urllib.parse.urlsplit(base)
    return f"{u.scheme}://{user[0]}:{user[1]}@{u.netloc}{path}"


@pytest.fixture
def browser(tmp_path):
    (tmp_path / "admin").mkdir()
    with chromium(tmp_path / "admin", width=1280, page_timeout=60) as drv:
        yield drv


@pytest.fixture
def viewer_browser(tmp_path):
    (tmp_path / "viewer").mkdir()
    with chromium(tmp_path / "viewer", width=1280, page_timeout=60) as drv:
        yield drv


class TestAdminInBrowser:
    def test_add_address_deliver_then_pause_it(self, admin_dashboard, browser):
        """Add an address in the form and deliver to it over LMTP; set it
        invalid-temporarily in the form and see 450 at RCPT; the saved page lists the
        changes; screenshots of the form and the result."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import Select, WebDriverWait

        d = admin_dashboard()
        assert d.rcpt("desk@example.org") == 550
        browser.get(login_url(d.base, ADMIN, "/addresses"))
        browser.find_element(By.ID, "add-address").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "email")))
        browser.find_element(By.ID, "email").send_keys("desk@example.org")
        browser.find_element(By.ID, "display_name").send_keys("Front desk")
        Select(browser.find_element(By.ID, "queue")).select_by_visible_text("Support")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "admin-address-form.png"))
        browser.find_element(By.ID, "save").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "verdict")))
        assert browser.find_element(By.ID, "verdict").text == "Saved, checked and reloaded."
        changes = browser.find_element(By.ID, "changes").text
        assert "address desk@example.org added" in changes
        assert "queue (unset) → 'Support'" in changes
        browser.save_screenshot(str(ARTIFACTS / "admin-address-saved.png"))
        assert d.deliver("desk@example.org", message(1, "desk@example.org")) == [250]

        browser.get(d.base + "/addresses?search=desk")
        browser.find_element(By.ID, "edit-desk@example.org").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "valid")))
        assert browser.find_element(By.ID, "display_name").get_attribute("value") == "Front desk"
        Select(browser.find_element(By.ID, "valid")).select_by_visible_text(
            "invalid-temporarily")
        browser.find_element(By.ID, "save").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "verdict")))
        assert "valid (unset) → 'invalid-temporarily'" in browser.find_element(
            By.ID, "changes").text
        assert d.rcpt("desk@example.org") == 450

    def test_address_a_queue_uses_cannot_be_invalidated(self, admin_dashboard, browser):
        """Invalidating support@ (queue Support uses it) shows the error at the validity
        field and leaves the files byte-identical."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import Select, WebDriverWait

        d = admin_dashboard()
        before = d.digest()
        browser.get(login_url(d.base, ADMIN, "/admin/address?email=support%40example.org"))
        Select(browser.find_element(By.ID, "valid")).select_by_visible_text("invalid")
        browser.find_element(By.ID, "save").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "error-valid")))
        assert "queue 'Support' uses it" in browser.find_element(By.ID, "error-valid").text
        assert browser.find_element(By.ID, "valid").get_attribute("value") == "invalid"
        browser.save_screenshot(str(ARTIFACTS / "admin-address-error.png"))
        assert d.digest() == before
        assert d.rcpt("support@example.org") == 250

    def test_viewer_cannot_reach_the_forms(self, admin_dashboard, viewer_browser):
        """A viewer sees the addresses without add or edit links and gets 'Not allowed'
        on the form's URL."""
        from selenium.webdriver.common.by import By

        d = admin_dashboard()
        viewer_browser.get(login_url(d.base, VIEWER, "/addresses"))
        assert viewer_browser.find_elements(By.CSS_SELECTOR, "table#addresses tr.item")
        assert not viewer_browser.find_elements(By.ID, "add-address")
        assert not viewer_browser.find_elements(By.CSS_SELECTOR, "a.edit")
        viewer_browser.get(d.base + "/admin/address")
        assert viewer_browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"

    def test_cross_origin_post_refused(self, admin_dashboard, browser):
        """A page of another origin posting the address form (with a valid CSRF token
        copied into it) to the logged-in admin's dashboard is refused; no file changes."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        d = admin_dashboard()
        browser.get(login_url(d.base, ADMIN, "/admin/address"))
        token = browser.find_element(By.NAME, "csrf").get_attribute("value")
        before = d.digest()
        page = (f'<form method="post" action="{d.base}/admin/address" id="f">'
                f'<input name="csrf" value="{token}"><input name="email" '
                'value="evil@example.org"><input name="valid" value="valid">'
                '<button id="go">go</button></form>')
        browser.get("data:text/html," + urllib.parse.quote(page))
        browser.find_element(By.ID, "go").click()
        # the refusal page, not the data: page still shown while the POST is answered
        WebDriverWait(browser, 30).until(ec.url_contains("/admin/address"))
        WebDriverWait(browser, 30).until(
            ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "refused"))
        assert d.digest() == before
        assert d.rcpt("evil@example.org") == 550


class TestFilterFormInBrowser:
    def test_add_filter_dry_run_save_deliver(self, admin_dashboard, browser):
        """Fill a filter in the form, dry-run it on a pasted message (nothing written),
        save it, deliver over LMTP and find the ticket where the filter sent it; an
        invalid regex is shown at its row and leaves the files byte-identical."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import Select, WebDriverWait

        from gateway.cli.tickets import list_tickets

        d = admin_dashboard()
        before = d.digest()
        browser.get(login_url(d.base, ADMIN, "/filters"))
        browser.find_element(By.ID, "add-filter").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "name")))
        browser.find_element(By.ID, "name").send_keys("100-invoices")
        browser.find_element(By.ID, "stop_after_match").click()
        browser.find_element(By.ID, "c0_header").send_keys("Subject")
        browser.find_element(By.ID, "c0_pattern").send_keys(r"invoice\s+(\d+")
        browser.find_element(By.ID, "c1_header").send_keys("From")
        Select(browser.find_element(By.ID, "c1_kind")).select_by_visible_text("email")
        browser.find_element(By.ID, "c1_pattern").send_keys(r"spam@customer\.test")
        browser.find_element(By.ID, "c1_not").click()
        browser.find_element(By.ID, "s0_header").send_keys("X-Deskgate-Queue")
        browser.find_element(By.ID, "s0_value").send_keys("Sales")
        browser.find_element(By.ID, "s1_header").send_keys("X-Deskgate-Title")
        browser.find_element(By.ID, "s1_value").send_keys("Invoice [***]")
        browser.find_element(By.ID, "message").send_keys(
            "From: c@customer.test\nTo: support@example.org\nSubject: invoice 981\n\nhi\n")
        browser.find_element(By.ID, "save").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "error-c0")))
        assert "invalid regular expression" in browser.find_element(By.ID, "error-c0").text
        assert d.digest() == before

        pattern = browser.find_element(By.ID, "c0_pattern")
        pattern.clear()
        pattern.send_keys(r"invoice\s+(\d+)")
        browser.find_element(By.ID, "dry-run").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "dry-decision")))
        assert "queue: Sales" in browser.find_element(By.ID, "dry-decision").text
        assert "Title = Invoice 981" in browser.find_element(By.ID, "dry-params").text
        assert d.digest() == before
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "admin-filter-dry-run.png"))
        browser.find_element(By.ID, "save").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "verdict")))
        assert "filter 100-invoices added" in browser.find_element(By.ID, "changes").text
        assert (d.root / "policies" / "500-admin.toml").exists()

        msg = message(5, "support@example.org").replace(b"Subject: s5", b"Subject: invoice 77")
        assert d.deliver("support@example.org", msg) == [250]
        with d.rg.gateway.engine.connect() as conn:
            assert [(t["queue"], t["title"]) for t in list_tickets(conn)] == [
                ("Sales", "Invoice 77")]


class TestKeysInBrowser:
    def test_upload_smime_key_with_passphrase_then_decrypt(self, admin_dashboard, browser,
                                                           tmp_path):
        """Upload a certificate and its passphrase-protected key in the keys page; mail
        encrypted to it by openssl and delivered over LMTP is stored decrypted."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        from tests.integration.admin.test_admin_keys import (
            PASSPHRASE,
            body_of_first_ticket,
            encrypted_mail,
            smime_material,
        )

        d = admin_dashboard()
        cert, key = smime_material(tmp_path)
        key_file = tmp_path / "support.key"
        key_file.write_bytes(key)
        browser.get(login_url(d.base, ADMIN, "/log"))
        browser.find_element(By.ID, "nav-keys").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "smime-cert")))
        browser.find_element(By.ID, "smime-cert").send_keys(str(cert))
        browser.find_element(By.ID, "smime-key").send_keys(str(key_file))
        browser.find_element(By.ID, "smime-passphrase").send_keys(PASSPHRASE)
        browser.find_element(By.ID, "smime-upload").click()
        WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "done")))
        assert "imported with its private key" in browser.find_element(By.ID, "done").text
        rows = browser.find_elements(By.CSS_SELECTOR, "table#smime tr.item")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [
            "support@example.org"]
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "admin-keys.png"))
        assert d.deliver("support@example.org", encrypted_mail(tmp_path, cert)) == [250]
        assert "The vault code is 4711." in body_of_first_ticket(d)
