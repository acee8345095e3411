"""The admin pages over plain HTTP: who may change things, CSRF, and the address form
writing the files, validating, reloading and logging."""

from __future__ import annotations

import time
import tomllib

from sqlalchemy import select

from gateway.store.tables import CommEntry, Communication
from tests.integration.admin.conftest import ADMIN, EXTRA, VIEWER, message


def change_log(d, at_least: int = 1) -> list[tuple[str, str]]:
    """(key, value) of the communication-log entries of dashboard changes (written
    asynchronously: waits up to 10 s for `at_least` of them)."""
    deadline = time.monotonic() + 10
    while True:
        with d.rg.gateway.engine.connect() as conn:
            rows = conn.execute(select(CommEntry.key, CommEntry.value).join(
                Communication, Communication.id == CommEntry.communication_id)
                .where(Communication.account_type == "Config",
                       Communication.account == "dashboard").order_by(CommEntry.id)).all()
        if len(rows) >= at_least or time.monotonic() > deadline:
            return [(r[0], r[1]) for r in rows]
        time.sleep(0.05)


def form(d, **values: str) -> dict[str, str]:
    base = {"csrf": d.csrf(), "original": "", "email": "", "display_name": "", "queue": "",
            "valid": "valid", "comment": ""}
    return {**base, **values}


class TestAccess:
    def test_refused_without_credentials_even_on_loopback(self, admin_dashboard):
        """A login-free loopback dashboard shows the lists but no admin page, GET or POST."""
        d = admin_dashboard(users="")
        assert d.request("/addresses", user=None)[0] == 200
        status, html = d.request("/admin/address", user=None)
        assert status == 403 and "role = &#34;admin&#34;" in html
        before = d.digest()
        status, _ = d.request("/admin/address", user=None,
                              data={"email": "new@example.org", "valid": "valid"})
        assert status == 403
        assert d.digest() == before

    def test_viewer_and_token_only_read(self, admin_dashboard):
        """A viewer (the default role) and the bearer token see the lists but get 403 on
        the forms; the admin gets the form and an edit link per address."""
        d = admin_dashboard(extra='token = "t0ken"\n')
        assert d.request("/addresses", user=VIEWER)[0] == 200
        assert d.request("/admin/address", user=VIEWER)[0] == 403
        assert d.request("/admin/address?token=t0ken", user=None)[0] == 403
        _, html = d.request("/addresses", user=VIEWER)
        assert "/admin/address" not in html
        status, html = d.request("/addresses")
        assert status == 200 and 'href="/admin/address?email=promo%40example.org"' in html
        assert d.request("/admin/address")[0] == 200
        before = d.digest()
        data = form(d, email="new@example.org")
        assert d.request("/admin/address", data=data, user=VIEWER)[0] == 403
        assert d.digest() == before

    def test_post_needs_csrf_token_and_same_site(self, admin_dashboard):
        """Without the form's token, with another user's token, from another origin or
        another site, a POST is refused and no file changes."""
        d = admin_dashboard()
        before = d.digest()
        data = form(d, email="new@example.org")
        del data["csrf"]
        assert d.request("/admin/address", data=data)[0] == 403
        assert d.request("/admin/address", data={**data, "csrf": d.csrf(VIEWER, "/log")}
                         )[0] == 403
        good = form(d, email="new@example.org")
        assert d.request("/admin/address", data=good,
                         headers={"Origin": "http://evil.test"})[0] == 403
        assert d.request("/admin/address", data=good,
                         headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
        assert d.digest() == before
        assert d.request("/admin/address", data=good)[0] == 200
        assert d.digest() != before

    def test_account_check_needs_the_csrf_token(self, admin_dashboard):
        """The account check's form carries the token too; a POST without it is refused."""
        d = admin_dashboard()
        assert d.request("/accounts/check", data={"account": "x"}, user=VIEWER)[0] == 403
        token = d.csrf(VIEWER, "/log")
        assert d.request("/accounts/check", data={"account": "x", "csrf": d.csrf(ADMIN, "/log")},
                         user=VIEWER)[0] == 403
        assert d.request("/accounts/check", data={"account": "x", "csrf": token},
                         user=VIEWER)[0] == 404


class TestAddressForm:
    def test_removed_address_has_no_edit_link(self, admin_dashboard):
        """An address removed from the files (still listed, from the database) offers
        no edit link; the configured ones do."""
        d = admin_dashboard()
        (d.conf / "20-extra.toml").unlink()
        assert d.rg.call(d.rg.gateway.reload()) is True
        _, html = d.request("/addresses")
        assert "promo@example.org" in html and 'id="edit-promo@example.org"' not in html
        assert 'id="edit-sales@example.org"' in html

    def test_add_address_then_deliver(self, admin_dashboard):
        """A new address goes to conf.d/50-admin-addresses.toml, the gateway reloads and
        accepts mail for it into its queue; the log records who added what."""
        d = admin_dashboard()
        assert d.rcpt("new@example.org") == 550
        status, html = d.request("/admin/address", data=form(
            d, email="New@Example.org", display_name="New desk", queue="Sales",
            comment="from the form"))
        assert status == 200, html
        assert "Saved, checked and reloaded." in html
        assert "conf.d/50-admin-addresses.toml" in html
        written = tomllib.loads((d.conf / "50-admin-addresses.toml").read_text())
        assert written == {"address": [{"email": "New@Example.org", "display_name": "New desk",
                                        "queue": "Sales", "comment": "from the form"}]}
        assert d.rcpt("new@example.org") == 250
        assert d.deliver("new@example.org", message(1, "new@example.org")) == [250]
        from gateway.cli.tickets import list_tickets

        with d.rg.gateway.engine.connect() as conn:
            assert [t["queue"] for t in list_tickets(conn)] == ["Sales"]
        entries = change_log(d, 4)
        assert ("User", ADMIN[0]) in entries
        assert ("Change", "address New@Example.org added") in entries
        assert ("Change", "address New@Example.org: queue (unset) → 'Sales'") in entries

    def test_invalid_temporarily_in_place_keeps_comments(self, admin_dashboard):
        """Editing an address of a hand-written file changes it there, keeping its
        comments and order; RCPT then gets 450."""
        d = admin_dashboard()
        assert d.rcpt("promo@example.org") == 250
        status, html = d.request("/admin/address", data=form(
            d, original="promo@example.org", email="promo@example.org", queue="Sales",
            valid="invalid-temporarily", comment="spring flyer"))
        assert status == 200, html
        text = (d.conf / "20-extra.toml").read_text()
        assert text == EXTRA.replace('comment = "spring flyer"\n',
                                     'comment = "spring flyer"\nvalid = "invalid-temporarily"\n')
        assert not (d.conf / "50-admin-addresses.toml").exists()
        assert d.rcpt("promo@example.org") == 450
        entries = change_log(d, 3)
        assert ("Change", "address promo@example.org: valid (unset) → "
                "'invalid-temporarily'") in entries

    def test_address_used_by_a_queue_stays_valid(self, admin_dashboard):
        """Invalidating an address a queue uses is refused next to the validity field
        (deskgate check's rule) and leaves every file byte-identical."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/address", data=form(
            d, original="support@example.org", email="support@example.org",
            display_name="Example Support", queue="Support", valid="invalid"))
        assert status == 422
        assert 'id="error-valid"' in html and "queue &#39;Support&#39; uses it" in html
        assert d.digest() == before
        assert d.rcpt("support@example.org") == 250

    def test_bad_email_shown_next_to_the_field(self, admin_dashboard):
        """A value the validator refuses is shown at its field; nothing is written."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/address", data=form(d, email="not an address"))
        assert status == 422
        assert 'id="error-email"' in html and "is not an e-mail address" in html
        assert d.digest() == before
        assert change_log(d, 0) == []

    def test_duplicate_refused(self, admin_dashboard):
        """Adding an address that exists is refused at the address field."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/address", data=form(d, email="sales@example.org"))
        assert status == 422 and 'id="error-email"' in html
        assert d.digest() == before


class TestConcurrentChanges:
    def test_form_older_than_the_files_is_refused(self, admin_dashboard):
        """A form shown before another change (here an editor's) carries the old
        version: its save is refused with 409 and writes nothing."""
        import re

        d = admin_dashboard()
        _, html = d.request("/admin/address?email=promo%40example.org")
        version = re.search(r'name="version" value="([0-9a-f]+)"', html).group(1)
        data = form(d, original="promo@example.org", email="promo@example.org",
                    queue="Sales", comment="edited in the form", version=version)
        (d.conf / "20-extra.toml").write_text(EXTRA.replace("spring flyer", "by hand"))
        before = d.digest()
        status, html = d.request("/admin/address", data=data)
        assert status == 409 and "changed since this form was shown" in html
        assert d.digest() == before
        _, html = d.request("/admin/address?email=promo%40example.org")
        data["version"] = re.search(r'name="version" value="([0-9a-f]+)"', html).group(1)
        assert d.request("/admin/address", data=data)[0] == 200
        assert "edited in the form" in (d.conf / "20-extra.toml").read_text()

    def test_two_saves_at_once_second_gets_409(self, admin_dashboard):
        """Two admins save the same form version at once: one save is written, the other
        is refused with 409 (as a form older than the files) and writes nothing."""
        import re
        import threading

        d = admin_dashboard()
        dash = next(s for s in d.rg.gateway.services if s.name == "dashboard")
        _, html = d.request("/admin/address?email=promo%40example.org")
        version = re.search(r'name="version" value="([0-9a-f]+)"', html).group(1)
        forms = {who: form(d, original="promo@example.org", email="promo@example.org",
                           queue="Sales", comment=f"by {who}", version=version)
                 for who in ("a", "b")}
        d.rg.call(dash.save_lock.acquire())     # both pass the version check, then wait
        results: dict[str, tuple[int, str]] = {}
        threads = [threading.Thread(target=lambda w=w: results.__setitem__(
            w, d.request("/admin/address", data=forms[w]))) for w in forms]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(dash.save_lock._waiters or ()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)

        async def release() -> None:
            dash.save_lock.release()

        d.rg.call(release())
        for t in threads:
            t.join(60)
        statuses = sorted(s for s, _ in results.values())
        assert statuses == [200, 409], results
        loser = next(h for s, h in results.values() if s == 409)
        assert "changed since this form was read" in loser
        text = (d.conf / "20-extra.toml").read_text()
        winner = next(w for w, (s, _) in results.items() if s == 200)
        assert f'comment = "by {winner}"' in text and text.count("comment = ") == 1
        assert len([e for e in change_log(d, 3) if e[0] == "User"]) == 1


class TestAddressFormInput:
    def test_unknown_validity_is_refused_not_read_as_valid(self, admin_dashboard):
        """A validity that is none of the three (a client other than the form) is
        refused at the field; it was saved as valid, putting an invalid address back
        into service."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/address", data=form(
            d, original="old@example.org", email="old@example.org", queue="Support",
            valid="Invalid"))
        assert status == 422 and 'id="error-valid"' in html
        assert "&#39;Invalid&#39; is not one of valid, invalid, invalid-temporarily" in html
        assert d.digest() == before
        assert d.rcpt("old@example.org") == 550
