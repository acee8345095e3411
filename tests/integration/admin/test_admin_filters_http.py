"""The filter form over plain HTTP: dry run, save into policies/500-admin.toml or in
place, errors at their row with the files untouched, delete."""

from __future__ import annotations

import tomllib

from gateway.cli.tickets import list_tickets
from tests.integration.admin.conftest import message

POLICY = """\
# Spam first (hand-written).
[[filter]]
name = "010-spam"
stop_after_match = true
match = [{ header = "X-Spam-Flag", value = "^yes$" }]
set = { "X-Deskgate-Queue" = "Junk" }
"""


def filter_form(d, **over: str) -> dict[str, str]:
    data = {"csrf": d.csrf(path="/admin/filter"), "original": "", "name": "100-promo",
            "comment": "", "action": "save",
            "c0_group": "match", "c0_header": "Subject", "c0_kind": "value",
            "c0_pattern": r"promo\s+(\d+)", "c1_group": "match", "c1_header": "",
            "c1_kind": "value", "c1_pattern": "",
            "s0_header": "X-Deskgate-Queue", "s0_value": "Sales",
            "s1_header": "X-Deskgate-Title", "s1_value": "Promo [***]",
            "s2_header": "", "s2_value": "", "message": ""}
    return {**data, **over}


def queues(d) -> list[tuple[str, str]]:
    with d.rg.gateway.engine.connect() as conn:
        return [(t["queue"], t["title"]) for t in list_tickets(conn)]


class TestFilterForm:
    def test_dry_run_writes_nothing_then_save_and_deliver(self, admin_dashboard):
        """The dry run shows the new filter matching a pasted message and its decision
        without writing; Save writes policies/500-admin.toml and mail follows it."""
        d = admin_dashboard(policies={"010-spam.toml": POLICY})
        before = d.digest()
        pasted = "From: c@customer.test\nTo: support@example.org\nSubject: promo 42\n\nhi\n"
        status, html = d.request("/admin/filter", data=filter_form(
            d, action="dry-run", message=pasted))
        assert status == 200, html
        assert d.digest() == before
        assert '<tr class="dry-filter ok">\n  <td>100-promo</td><td>yes</td>' in html
        assert "Queue = Sales" in html and "Title = Promo 42" in html
        assert "action: new; queue: Sales" in html
        status, html = d.request("/admin/filter", data=filter_form(d))
        assert status == 200 and "Saved, checked and reloaded." in html
        written = tomllib.loads((d.root / "policies" / "500-admin.toml").read_text())
        assert written == {"filter": [{
            "name": "100-promo", "match": [{"header": "Subject", "value": r"promo\s+(\d+)"}],
            "set": {"X-Deskgate-Queue": "Sales", "X-Deskgate-Title": "Promo [***]"}}]}
        assert d.deliver("support@example.org", message(
            1, "support@example.org").replace(b"Subject: s1", b"Subject: promo 7")) == [250]
        assert queues(d) == [("Sales", "Promo 7")]

    def test_dry_run_takes_a_message_as_large_as_the_form_allows(self, admin_dashboard):
        """A pasted message just under the dry run's 1 MiB is tried, not refused by the
        web server's own body limit (URL-encoding makes the request up to three times
        larger); one over it gets the form's own error."""
        from gateway.web.admin_filters import MAX_MESSAGE

        d = admin_dashboard(policies={"010-spam.toml": POLICY})
        head = "From: c@customer.test\r\nTo: support@example.org\r\nSubject: promo 42\r\n\r\n"
        body = ("a=b&c%\r\n" * (MAX_MESSAGE // 8))[:MAX_MESSAGE - len(head) - 1000]
        status, html = d.request("/admin/filter", data=filter_form(
            d, action="dry-run", message=head + body))
        assert status == 200, html[:500]
        assert '<tr class="dry-filter ok">\n  <td>100-promo</td><td>yes</td>' in html
        status, html = d.request("/admin/filter", data=filter_form(
            d, action="dry-run", message=head + body + "x" * 2000))
        assert status == 422 and f"of at most {MAX_MESSAGE} bytes" in html

    def test_invalid_regex_at_its_row_files_untouched(self, admin_dashboard):
        """An invalid regular expression is shown at its condition row; nothing is
        written, the dry run refuses the same way."""
        d = admin_dashboard(policies={"010-spam.toml": POLICY})
        before = d.digest()
        for action in ("save", "dry-run"):
            status, html = d.request("/admin/filter", data=filter_form(
                d, action=action, c0_pattern="promo(", message="Subject: x\n\nb\n"))
            assert status == 422, html
            assert 'id="error-c0"' in html and "invalid regular expression" in html
        assert d.digest() == before

    def test_edit_in_place_negate_and_delete(self, admin_dashboard):
        """Editing a hand-written filter changes its file in place (comment kept); a
        negated condition is written as not = true; delete removes it."""
        d = admin_dashboard(policies={"010-spam.toml": POLICY})
        _, html = d.request("/admin/filter?name=010-spam")
        assert 'value="^yes$"' in html and 'id="stop_after_match" checked' in html
        data = filter_form(d, original="010-spam", name="010-spam", stop_after_match="on",
                           c0_header="X-Spam-Flag", c0_pattern="^yes$",
                           c1_header="From", c1_kind="email", c1_pattern=r"boss@customer\.test",
                           c1_not="on", s0_value="Junk", s1_header="")
        status, html = d.request("/admin/filter", data=data)
        assert status == 200, html
        text = (d.root / "policies" / "010-spam.toml").read_text()
        assert text.startswith("# Spam first (hand-written).\n")
        assert tomllib.loads(text)["filter"][0]["match"] == [
            {"header": "X-Spam-Flag", "value": "^yes$"},
            {"header": "From", "email": r"boss@customer\.test", "not": True}]
        assert not (d.root / "policies" / "500-admin.toml").exists()
        status, html = d.request("/admin/filter", data={
            "csrf": d.csrf(path="/admin/filter"), "original": "010-spam", "action": "delete"})
        assert status == 200 and "filter 010-spam removed" in html
        assert d.rg.gateway.config.filters == ()

    def test_unknown_x_header_at_its_set_row(self, admin_dashboard):
        """A typo in a set header is shown at that row."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/filter", data=filter_form(
            d, s1_header="X-Deskgate-Qeueu", s1_value="Junk"))
        assert status == 422 and 'id="error-s1"' in html and "unknown X-header" in html
        assert d.digest() == before


class TestFilterFormInput:
    def test_unknown_group_or_kind_is_refused_not_read_as_match(self, admin_dashboard):
        """A condition whose list or test is none of the choices (a client other than
        the form) is refused at its row; it was saved as `match`/`value`, turning an
        `any` into an AND."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/filter", data=filter_form(d, c0_group="Any"))
        assert status == 422 and 'id="error-c0"' in html
        assert "&#39;Any&#39; is neither match nor any" in html
        status, html = d.request("/admin/filter", data=filter_form(d, c0_kind="mail"))
        assert status == 422 and "&#39;mail&#39; is neither value nor email" in html
        assert d.digest() == before

    def test_error_shown_at_the_row_that_has_it_after_a_blank_row(self, admin_dashboard):
        """A bad regex typed into the second of the blank rows (the first left empty)
        is shown next to that condition as the form shows it again, not next to a
        blank row; the same for a set row."""
        d = admin_dashboard()
        before = d.digest()
        status, html = d.request("/admin/filter", data=filter_form(
            d, c2_group="match", c2_header="From", c2_kind="value", c2_pattern="(unclosed"))
        assert status == 422 and d.digest() == before
        row = html.split('id="c1_pattern"', 1)[1].split("</tr>", 1)[0]
        assert 'value="(unclosed"' in row and 'id="error-c1"' in row
        status, html = d.request("/admin/filter", data=filter_form(
            d, s2_header="", s3_header="X-Deskgate-Bogus", s3_value="x"))
        assert status == 422 and d.digest() == before
        row = html.split('id="s2_header"', 1)[1].split("</tr>", 1)[0]
        assert 'value="X-Deskgate-Bogus"' in row and 'id="error-s2"' in row
