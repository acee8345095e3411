"""The inventory pages of the dashboard over HTTP: search, filters, sorting, protection."""

from __future__ import annotations

from html.parser import HTMLParser

from tests.conftest import free_port
from tests.peers.lmtp import LmtpClient

ACCOUNTS = """
[[account]]
name = "legacy"
type = "imaps"
host = "127.0.0.1"
port = {port}
login = "helpdesk"
password = "s3cret-imap-pw"
folder = "Support/In"
after_fetch = "keep"
valid = false
comment = "old mailbox"

[[account]]
name = "sales-pop"
type = "pop3s"
host = "127.0.0.1"
port = {port}
login = "sales"
password = "s3cret-pop-pw"
after_fetch = "keep"
valid = false
"""

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


class Table(HTMLParser):
    """The text of each cell of the rows of class 'item' in <table id=ID>."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.inside = False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == self.table_id
        elif self.inside and tag == "tr" and a.get("class") == "item":
            self.rows.append([])
        elif self.inside and tag == "td" and self.rows:
            self.cell = []
        elif self.inside and tag == "br" and self.cell is not None:
            self.cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.inside = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def rows(html: str, table_id: str) -> list[list[str]]:
    t = Table(table_id)
    t.feed(html)
    return t.rows


def msg(n: int, to: str) -> bytes:
    return (f"From: c{n}@customer.test\r\nTo: {to}\r\nSubject: s{n}\r\n"
            f"Message-ID: <d{n}@customer.test>\r\n\r\nbody {n}\r\n").encode()


class TestInventoryPages:
    def test_addresses_search_validity_queue(self, inventory_dashboard):
        """The addresses page searches any shown field and narrows by validity and queue."""
        d = inventory_dashboard()
        status, html = d.request("/addresses")
        assert status == 200
        assert [r[0] for r in rows(html, "addresses")] == [
            "helpdesk@example.org", "old@example.org", "paused@example.org",
            "sales@example.org", "support@example.org"]
        _, html = d.request("/addresses?search=EXAMPLE+SUPPORT")
        assert [r[0] for r in rows(html, "addresses")] == ["support@example.org"]
        _, html = d.request("/addresses?valid=invalid-temporarily")
        assert [r[0] for r in rows(html, "addresses")] == ["paused@example.org"]
        _, html = d.request("/addresses?queue=Support&valid=valid")
        assert [r[0] for r in rows(html, "addresses")] == ["support@example.org"]
        assert 'id="total">1 address<' in html

    def test_removed_address_after_reload(self, inventory_dashboard):
        """An address dropped from the files and reloaded is listed as removed and invalid."""
        d = inventory_dashboard({"70-promo.toml": """
            [[address]]
            email = "promo@example.org"
            queue = "Sales"
            """})
        (d.conf / "70-promo.toml").unlink()
        assert d.rg.call(d.rg.gateway.reload()) is True
        _, html = d.request("/addresses?search=promo")
        assert rows(html, "addresses") == [["promo@example.org", "", "Sales", "invalid", "",
                                            "(removed from configuration)"]]

    def test_sortable_columns(self, inventory_dashboard):
        """A column link sorts ascending, the same link again descending; numbers as numbers."""
        d = inventory_dashboard()
        c = LmtpClient(d.rg.socket_path)
        c.lhlo()
        for n, to in enumerate(["sales@example.org"] + ["support@example.org"] * 11):
            _, data = c.transaction("c@customer.test", [to], msg(n, to))
            assert [x[0] for x in data] == [250]
        c.close()
        _, html = d.request("/queues?sort=-open_tickets")
        assert [(r[0], r[5]) for r in rows(html, "queues")] == [
            ("Support", "11"), ("Sales", "1"), ("Raw", "0"), ("Junk", "0")]
        assert 'href="/queues?sort=open_tickets"' in html
        _, html = d.request("/queues?sort=open_tickets")
        assert [r[0] for r in rows(html, "queues")][-2:] == ["Sales", "Support"]
        assert 'href="/queues?sort=-open_tickets"' in html
        _, html = d.request("/addresses?sort=-email")
        assert [r[0] for r in rows(html, "addresses")] == [
            "support@example.org", "sales@example.org", "paused@example.org",
            "old@example.org", "helpdesk@example.org"]
        _, html = d.request("/queues?sort=nonsense")
        assert [r[0] for r in rows(html, "queues")] == ["Raw", "Support", "Sales", "Junk"]

    def test_accounts_without_secrets_with_check_buttons(self, inventory_dashboard):
        """The accounts page lists settings and a Check button per account, never a secret."""
        port = free_port()
        d = inventory_dashboard({"50-accounts.toml": ACCOUNTS.format(port=port)})
        _, html = d.request("/accounts?search=support/in")
        got = rows(html, "accounts")
        assert [r[0] for r in got] == ["legacy"]
        assert got[0][1:6] == ["imaps", "127.0.0.1", str(port), "helpdesk", "Support/In"]
        assert 'name="account" value="legacy"' in html
        assert 'method="post" action="/accounts/check"' in html
        _, html = d.request("/accounts")
        assert len(rows(html, "accounts")) == 2
        assert "s3cret" not in html

    def test_filters_in_evaluation_order(self, inventory_dashboard):
        """The filters page shows the evaluation order, conditions and settings; searchable."""
        d = inventory_dashboard(policies=POLICIES)
        _, html = d.request("/filters")
        got = rows(html, "filters")
        assert [r[:2] for r in got] == [["1", "010-spam"], ["2", "020-vip"]]
        assert got[0][2] == "policies/010-spam.toml"
        assert got[0][3] == "yes"
        assert got[0][4] == "X-Spam-Flag ~ ^yes$"
        assert got[0][5] == "X-Deskgate-Queue = Junk"
        _, html = d.request("/filters?search=VERY+HIGH")
        assert [r[1] for r in rows(html, "filters")] == ["020-vip"]

    def test_pages_protected_like_the_dashboard(self, inventory_dashboard):
        """With a token set, lists and the check need it; a POST without the form's CSRF
        token or from another site is refused."""
        d = inventory_dashboard({"50-accounts.toml": ACCOUNTS.format(port=free_port())},
                                dashboard_extra='token = "t0ken"\n')
        for path in ("/addresses", "/queues", "/accounts", "/filters"):
            assert d.request(path, session="anonymous")[0] == 401
            assert d.request(path + "?token=t0ken", session=path)[0] == 200
        assert d.request("/accounts/check", data={"account": "legacy"},
                         session="anonymous")[0] == 401
        token = d.csrf("?token=t0ken")
        form = {"account": "legacy", "csrf": token}
        status, _ = d.request("/accounts/check?token=t0ken", data={"account": "legacy"})
        assert status == 403                    # no CSRF token
        status, _ = d.request("/accounts/check?token=t0ken", data=form,
                              headers={"Origin": "http://evil.test"})
        assert status == 403
        status, _ = d.request("/accounts/check?token=t0ken", data=form,
                              headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 403
        status, _ = d.request("/accounts/check?token=t0ken", data=form,
                              headers={"Origin": "null"})
        assert status == 403
        status, html = d.request("/accounts/check?token=t0ken", data={**form, "account": "nobody"})
        assert status == 404 and "nobody" in html
        _, html = d.request("/accounts?token=t0ken")
        assert 'action="/accounts/check"' in html and "t0ken" not in html
