"""The queue and mail-account forms over plain HTTP: written as the file had them,
secrets kept or replaced but never shown, errors at their field."""

from __future__ import annotations

import re
import stat
import tomllib

from tests.conftest import free_port
from tests.integration.admin.conftest import message

ACCOUNT = """\
# The old support mailbox.
[[account]]
name = "legacy"
type = "imaps"
host = "127.0.0.1"
port = {port}
login = "helpdesk"
password = "s3cret-imap-pw"
interval = "10m"
valid = false
"""


def entry_form(d, path: str, **values: str) -> dict[str, str]:
    return {"csrf": d.csrf(path=path), "original": "", **values}


def account_values(d, port: int, **over: str) -> dict[str, str]:
    base = {"name": "legacy", "type": "imaps", "host": "127.0.0.1", "port": str(port),
            "login": "helpdesk", "password": "", "folder": "INBOX", "dispatch": "to",
            "queue": "", "interval": "10m", "after_fetch": "delete", "comment": "",
            "oauth2.token_url": "", "oauth2.client_id": "", "oauth2.client_secret": "",
            "oauth2.refresh_token": "", "oauth2.scope": "", "oauth2.grant": "refresh_token"}
    return entry_form(d, "/admin/account", original="legacy", **{**base, **over})


class TestQueueForm:
    def test_add_queue_then_route_to_it(self, admin_dashboard):
        """A new queue goes to conf.d/50-admin-queues.toml; an address then sends mail
        into it."""
        d = admin_dashboard()
        status, html = d.request("/admin/queue", data=entry_form(
            d, "/admin/queue", name="Billing", address="", follow_up="reject",
            sign="none", encrypt="never", auto_response_new="", auto_response_followup="",
            auto_response_reject="", comment="invoices"))
        assert status == 200, html
        written = tomllib.loads((d.conf / "50-admin-queues.toml").read_text())
        assert written == {"queue": [{"name": "Billing", "follow_up": "reject",
                                      "comment": "invoices"}]}
        assert d.rg.gateway.config.queue_by_name("Billing") is not None
        status, _ = d.request("/admin/address", data={
            "csrf": d.csrf(), "original": "", "email": "billing@example.org",
            "queue": "Billing", "valid": "valid", "display_name": "", "comment": ""})
        assert status == 200
        assert d.deliver("billing@example.org", message(3, "billing@example.org")) == [250]

    def test_queue_address_must_be_valid(self, admin_dashboard):
        """Giving a queue an address that is not valid is refused at that field."""
        d = admin_dashboard()
        d.request("/admin/address", data={
            "csrf": d.csrf(), "original": "promo@example.org", "email": "promo@example.org",
            "queue": "Sales", "valid": "invalid", "display_name": "",
            "comment": "spring flyer"})
        before = d.digest()
        status, html = d.request("/admin/queue", data=entry_form(
            d, "/admin/queue", original="Junk", name="Junk", address="promo@example.org",
            follow_up="reject", sign="none", encrypt="never", auto_response_new="",
            auto_response_followup="", auto_response_reject="", comment=""))
        assert status == 422 and 'id="error-address"' in html
        assert d.digest() == before

    def test_queue_name_with_a_line_break_refused(self, admin_dashboard):
        """A queue name with a newline (it would break log lines and the X-Deskgate-Queue
        header) is refused with 422 at the name field; nothing is written."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/queue", data=entry_form(
            d, "/admin/queue", name="A\nB", address="", follow_up="possible",
            sign="none", encrypt="never", auto_response_new="", auto_response_followup="",
            auto_response_reject="", comment=""))
        assert status == 422, html
        m = re.search(r'id="error-name">([^<]*)<', html)
        assert m and "contains a control character" in m.group(1), html
        assert d.digest() == before
        assert d.rg.gateway.config.queue_by_name("A\nB") is None

    def test_display_name_with_a_line_break_refused(self, admin_dashboard):
        """The address form refuses a display name with a newline at its field (422)."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/address", data={
            "csrf": d.csrf(), "original": "", "email": "new@example.org", "queue": "Raw",
            "valid": "valid", "display_name": "Help\r\nBcc: x@evil.test", "comment": ""})
        assert status == 422, html
        m = re.search(r'id="error-display_name">([^<]*)<', html)
        assert m and "contains a control character" in m.group(1), html
        assert d.digest() == before


class TestAccountForm:
    def test_secret_kept_unless_given_and_never_shown(self, admin_dashboard):
        """The form never shows the password; saving with it empty keeps it, only the
        changed keys are rewritten (interval stays "10m") and the file keeps its mode;
        a new password is redacted in the change record and leaves the file readable
        by its owner only."""
        port = free_port()
        d = admin_dashboard()
        accounts = d.conf / "30-accounts.toml"
        accounts.write_text(ACCOUNT.format(port=port))
        accounts.chmod(0o644)
        assert d.rg.call(d.rg.gateway.reload()) is True
        status, html = d.request("/admin/account?name=legacy")
        assert status == 200 and "s3cret" not in html and 'value="10m"' in html
        status, html = d.request("/admin/account", data=account_values(
            d, port, comment="moved", folder="INBOX"))
        assert status == 200, html
        text = (d.conf / "30-accounts.toml").read_text()
        assert text == ACCOUNT.format(port=port) + 'comment = "moved"\n'
        assert stat.S_IMODE(accounts.stat().st_mode) == 0o644
        status, html = d.request("/admin/account", data=account_values(
            d, port, comment="moved", password="n3w-pw"))
        assert status == 200
        assert "password *** → ***" in html and "n3w-pw" not in html
        assert 'password = "n3w-pw"' in accounts.read_text()
        assert stat.S_IMODE(accounts.stat().st_mode) == 0o600

    def test_new_account_with_oauth2_file_is_private(self, admin_dashboard):
        """A new account with an [account.oauth2] table goes to a 0600 file; a missing
        client id is shown at its field."""
        d = admin_dashboard()
        port = free_port()
        values = account_values(d, port, name="o365", login="desk@example.org",
                                **{"oauth2.token_url": "https://login.example/token",
                                   "oauth2.refresh_token": "r-tok"})
        values["original"] = ""
        before = d.digest()
        status, html = d.request("/admin/account", data=values)
        assert status == 422 and 'id="error-oauth2-client_id"' in html
        assert d.digest() == before
        values["oauth2.client_id"] = "app-1"
        values["csrf"] = d.csrf(path="/admin/account")
        status, html = d.request("/admin/account", data=values)
        assert status == 200, html
        path = d.conf / "50-admin-accounts.toml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        acc = tomllib.loads(path.read_text())["account"][0]
        assert acc["oauth2"] == {"token_url": "https://login.example/token",
                                 "client_id": "app-1", "refresh_token": "r-tok"}
        assert d.rg.gateway.config.account_by_name("o365").oauth2.client_id == "app-1"
