"""Postmaster policy through the whole inbound pipeline: filters, loops, bounces."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from gateway.store.tables import Article, CommEntry, Communication
from tests.integration.policy.conftest import (
    add_outgoing,
    deliver,
    set_state,
    ticket,
    ticket_count,
)
from tests.peers.lmtp import LmtpClient
from tests.unit.policy.mails import dsn, mail

# Four filters after OTOBO's PostMaster.t F1-F4 (our own addresses and values).
F1_F4 = r"""
[[filter]]
name = "F1"
match = [{ header = "Subject", value = "incident" },
         { header = "From", email = "monitor@noc\\.customer\\.test" }]
set = { "X-Deskgate-Queue" = "Support", "X-Deskgate-DynamicField-Source" = "noc" }

[[filter]]
name = "F2"
match = [{ header = "Subject", value = "incident" },
         { header = "To", email = "support@example\\.org" }]
set = { "X-OTOBO-DynamicField-Channel" = "support" }

[[filter]]
name = "F3"
match = [{ header = "Subject", value = "incident" },
         { header = "To", email = "sales@example\\.org" }]
set = { "X-OTRS-DynamicField-Channel" = "sales", "X-Deskgate-Priority" = "5 very high" }

[[filter]]
name = "F4"
match = [{ header = "To", email = "support@example\\.org", not = true }]
set = { "X-Deskgate-Ignore" = "yes" }
"""


class TestOtoboFilters:
    def test_f1_f4_queue_dynamic_fields_and_ignore(self, gateway_for):
        """F1/F2 route and fill fields; F4 drops mail to another address, keeps support's."""
        gw = gateway_for({"10-f.toml": F1_F4})
        kept = deliver(gw, mail("Incident: disk full on db1", frm="monitor@noc.customer.test",
                                to="Support <support@example.org>"))
        assert kept.action == "new"
        t = ticket(gw, kept.ticket_number)
        assert t["queue"] == "Support"
        assert t["dynamic_fields"] == {"Source": "noc", "Channel": "support"}
        assert t["priority"] == "3 normal"
        dropped = deliver(gw, mail("Incident: disk full on db1", frm="monitor@noc.customer.test",
                                   to="sales@example.org"), rcpts=("sales@example.org",))
        assert dropped.action == "ignore"
        assert ticket_count(gw) == 1

    def test_f4_over_lmtp_answers_250(self, make_confdir, run_gateway):
        """Through the LMTP door an ignored message is answered 250 and stores no ticket."""
        from gateway.config import load_config

        cfg = load_config(make_confdir(policies={"10-f.toml": F1_F4}))
        rg = run_gateway(cfg)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _rcpt, data = c.transaction("monitor@noc.customer.test", ["sales@example.org"],
                                    mail("incident", to="sales@example.org"))
        c.close()
        assert [d[0] for d in data] == [250]
        assert "dropped" in data[0][1]
        assert ticket_count(rg.gateway) == 0


class TestCapturesAndTitles:
    def test_named_capture_from_body_into_dynamic_field_and_title(self, gateway_for):
        """A named group of a Body condition fills a dynamic field and the title."""
        pol = r"""
            [[filter]]
            name = "010-asset"
            match = [{ header = "Body", value = "asset(?: tag)?:\\s*(?P<asset>[A-Z]{3}-\\d{4})" }]
            [filter.set]
            "X-Deskgate-DynamicField-Asset" = "[**\\asset**]"
            "X-Deskgate-Title" = "Broken asset [***]"
        """
        gw = gateway_for({"10-a.toml": pol})
        out = deliver(gw, mail("help", body="Hello,\nasset tag: PRN-0042 is broken.\n"))
        t = ticket(gw, out.ticket_number)
        assert t["dynamic_fields"] == {"Asset": "PRN-0042"}
        assert t["title"] == "Broken asset PRN-0042"

    def test_title_and_followup_title(self, gateway_for):
        """X-Deskgate-Title names a new ticket; FollowUp-Title renames it on a follow-up."""
        gw = gateway_for()
        first = deliver(gw, mail("printer", headers=[("X-Deskgate-Title", "Printer floor 3")]),
                        trusted=True)
        assert ticket(gw, first.ticket_number)["title"] == "Printer floor 3"
        n = first.ticket_number
        deliver(gw, mail(f"Re: [Ticket#{n}] printer",
                         headers=[("X-Deskgate-Title", "ignored on follow-ups")]), trusted=True)
        assert ticket(gw, n)["title"] == "Printer floor 3"
        deliver(gw, mail(f"Re: [Ticket#{n}] printer",
                         headers=[("X-OTOBO-FollowUp-Title", "Printer floor 3 (toner)")]),
                trusted=True)
        t = ticket(gw, n)
        assert t["title"] == "Printer floor 3 (toner)"
        assert len(t["articles"]) == 3

    def test_untrusted_headers_do_not_route(self, gateway_for):
        """Untrusted X-Deskgate-Queue is stripped; the same header trusted routes."""
        gw = gateway_for()
        raw = mail("x", headers=[("X-Deskgate-Queue", "Sales")])
        assert ticket(gw, deliver(gw, raw).ticket_number)["queue"] == "Support"
        raw2 = mail("x", headers=[("X-Deskgate-Queue", "Sales")])
        assert ticket(gw, deliver(gw, raw2, trusted=True).ticket_number)["queue"] == "Sales"


class TestLoopStored:
    def test_loop_flag_on_article(self, gateway_for):
        """A Precedence: bulk message is stored with loop = true; a plain one with false."""
        gw = gateway_for()
        a = deliver(gw, mail("newsletter", headers=[("Precedence", "bulk")]))
        b = deliver(gw, mail("question", headers=[("Auto-Submitted", "no")]))
        assert ticket(gw, a.ticket_number)["articles"][0]["loop"] is True
        assert ticket(gw, b.ticket_number)["articles"][0]["loop"] is False


class TestBounces:
    def test_dsn_recorded_on_outgoing_article_and_threaded(self, gateway_for):
        """A DSN marks our outgoing article failed and becomes a follow-up; state kept."""
        gw = gateway_for()
        first = deliver(gw, mail("please call me"))
        n = first.ticket_number
        out_id = add_outgoing(gw, n, "<answer1@helpdesk.test>", to="gone@customer.test")
        set_state(gw, n, "closed successful")
        res = deliver(gw, dsn("<answer1@helpdesk.test>"))
        assert res.action == "followup" and res.ticket_number == n
        t = ticket(gw, n)
        assert t["state"] == "closed successful"
        outgoing = next(a for a in t["articles"] if a["id"] == out_id)
        assert outgoing["transmission_status"] == "failed"
        assert "5.1.1" in outgoing["transmission_error"]
        assert "Recipient address rejected" in outgoing["transmission_error"]
        bounce = t["articles"][-1]
        assert bounce["subject"] == "Undelivered Mail Returned to Sender"
        assert bounce["loop"] is True

    def test_dsn_text_is_recorded_unfolded_and_on_one_line(self, gateway_for):
        """A DSN whose Diagnostic-Code is folded and holds ESC and DEL: the outgoing
        article's transmission error reads it unfolded (one space where it was folded)
        with the controls escaped as the outbound side escapes them. Before, it held
        two spaces and the raw ESC and DEL."""
        gw = gateway_for()
        n = deliver(gw, mail("please call me")).ticket_number
        out_id = add_outgoing(gw, n, "<answer3@helpdesk.test>", to="gone@customer.test")
        deliver(gw, dsn("<answer3@helpdesk.test>", diagnostic=(
            "smtp; 550 5.1.1 <gone@customer.test>:\r\n Recipient address rejected:"
            " \x1b[31mgone\x7f")))
        with gw.engine.connect() as conn:
            error = conn.execute(select(Article.transmission_error).where(
                Article.id == out_id)).scalar_one()
        assert error == ("gone@customer.test: 5.1.1 550 5.1.1 <gone@customer.test>: "
                         "Recipient address rejected: \\x1b[31mgone\\x7f")

    def test_dsn_with_headers_only(self, gateway_for):
        """A DSN returning only the headers (text/rfc822-headers) is matched too."""
        gw = gateway_for()
        n = deliver(gw, mail("hi")).ticket_number
        out_id = add_outgoing(gw, n, "<answer2@helpdesk.test>")
        assert deliver(gw, dsn("<answer2@helpdesk.test>", returned="headers")
                       ).ticket_number == n
        with gw.engine.connect() as conn:
            assert conn.execute(select(Article.transmission_status).where(
                Article.id == out_id)).scalar() == "failed"

    def test_unknown_dsn_opens_ticket_as_loop(self, gateway_for):
        """A DSN about nothing of ours opens a new ticket, flagged as loop."""
        gw = gateway_for()
        res = deliver(gw, dsn("<never-sent@elsewhere.test>"))
        assert res.action == "new"
        assert ticket(gw, res.ticket_number)["articles"][0]["loop"] is True


BROKEN = """
[[filter]]
name = "010-broken"
match = [{ header = "Subject", value = "printer(" }]
set = { "X-Deskgate-Queue" = "Junk" }
"""

GOOD = """
[[filter]]
name = "010-printer"
match = [{ header = "Subject", value = "printer" }]
set = { "X-Deskgate-Queue" = "Sales" }
"""


class TestReload:
    def test_broken_policy_keeps_running_one(self, gateway_for):
        """A reload with an invalid policy is refused and logged; the old filters stay."""
        gw = gateway_for({"10-p.toml": GOOD})
        assert ticket(gw, deliver(gw, mail("printer jam")).ticket_number)["queue"] == "Sales"
        pfile = gw.config.root / "policies" / "10-p.toml"
        pfile.write_text(BROKEN)
        assert asyncio.run(gw.reload()) is False
        assert ticket(gw, deliver(gw, mail("printer jam")).ticket_number)["queue"] == "Sales"
        gw.writer.submit(lambda conn: None).result(10)   # the failure log is written
        with gw.engine.connect() as conn:
            comm = conn.execute(select(Communication.id).where(
                Communication.account_type == "Config")).scalar()
            assert comm is not None
            text = conn.execute(select(CommEntry.value).where(
                CommEntry.communication_id == comm)).scalar()
        assert "filter[010-broken].match[0].value" in text
        pfile.write_text(GOOD.replace('"Sales"', '"Junk"'))
        assert asyncio.run(gw.reload()) is True
        assert ticket(gw, deliver(gw, mail("printer jam")).ticket_number)["queue"] == "Junk"
