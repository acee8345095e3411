"""otobo-rest / znuny-rest: hand-offs through a real OTOBO's GenericTicketConnectorREST."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.helpdesk.base import HandoffError
from gateway.helpdesk.otobo_rest import OtoboRest, pending_time
from gateway.model import AttachmentData
from tests.integration.helpdesk.items import item, mail
from tests.peers.ca import TestCA
from tests.peers.otobo import AGENT, AGENT_PASSWORD, Otobo

pytestmark = pytest.mark.otobo

MakeConfig = Callable[..., Config]
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


def rest(make: MakeConfig, url: str, password: str = AGENT_PASSWORD,
         type_: str = "otobo-rest") -> OtoboRest:
    return OtoboRest(make(f'type = "{type_}"', f'url = "{url}"', f'user = "{AGENT}"',
                          f'password = "{password}"', 'timeout = "30s"'))


class TestRestCreateAndFollowUp:
    """TicketCreate and TicketUpdate put the message where deskgate decided."""

    def test_create_then_follow_up_with_attachment_and_dynamic_field(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """Create lands with queue/priority/title/customer/dynamic field and an attachment
        whose bytes OTOBO keeps; the follow-up is an article of the same ticket."""
        c = rest(helpdesk_config, otobo.start_rest())
        first = item(mail("Invoice wrong", "See attached.\n",
                          attachments=[AttachmentData("invoice.pdf", "application/pdf", PDF)]),
                     decisions={"Queue": "Support", "Priority": "4 high",
                                "CustomerNo": "ACME", "DynamicField-Server": "erp01"})
        res = c.deliver(first)
        assert res.detail == "created"
        t = otobo.ticket("Invoice wrong")
        assert (res.ticket_id, res.ticket_number) == (str(t["id"]), t["tn"])
        assert (t["queue"], t["priority"], t["state"]) == ("Support", "4 high", "new")
        assert (t["customer_user"], t["customer_id"]) == ("alice@example.com", "ACME")
        assert otobo.dynamic_fields(t["id"]) == {"Server": "erp01"}
        [a] = otobo.articles(t["id"])
        assert (a["from"], a["subject"], a["body"]) == ("alice@example.com", "Invoice wrong",
                                                        "See attached.")
        [att] = otobo.attachments(a["id"])
        assert (att["filename"], att["content_type"], att["content"]) == (
            "invoice.pdf", "application/pdf", PDF)

        reply = item(mail("Re: Invoice wrong", "Second page.\n",
                          in_reply_to=first.article["message_id"],
                          attachments=[AttachmentData("page2.bin", "application/octet-stream",
                                                      b"\x00\xff" * 300)]),
                     kind="followup", helpdesk_ticket_id=res.ticket_id,
                     decisions={"FollowUp-Priority": "5 very high",
                                "FollowUp-DynamicField-Contract": "C-17"})
        res2 = c.deliver(reply)
        assert (res2.ticket_id, res2.ticket_number, res2.detail) == (
            res.ticket_id, res.ticket_number, "updated")
        [t2] = otobo.tickets()
        assert t2["priority"] == "5 very high" and t2["state"] == "new"
        assert otobo.dynamic_fields(t2["id"]) == {"Server": "erp01", "Contract": "C-17"}
        arts = otobo.articles(t2["id"])
        assert [x["body"] for x in arts] == ["See attached.", "Second page."]
        assert otobo.attachments(arts[1]["id"])[0]["content"] == b"\x00\xff" * 300

    def test_follow_up_reopens_a_closed_ticket(self, otobo: Otobo,
                                               helpdesk_config: MakeConfig) -> None:
        """Like OTOBO's PostMaster: a follow-up to a closed ticket sets followup_state."""
        c = rest(helpdesk_config, otobo.start_rest())
        res = c.deliver(item(mail("Done already"), decisions={"State": "closed successful"}))
        assert otobo.ticket("Done already")["state"] == "closed successful"
        c.deliver(item(mail("Re: Done already"), kind="followup",
                       helpdesk_ticket_id=res.ticket_id))
        assert otobo.ticket("Done already")["state"] == "open"

    def test_follow_up_found_by_ticket_number_in_subject(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A follow-up without a known helpdesk id finds the ticket by [Ticket#N]."""
        otobo.read_mail(mail("Opened in OTOBO"))
        t = otobo.ticket("Opened in OTOBO")
        c = rest(helpdesk_config, otobo.start_rest(), type_="znuny-rest")
        res = c.deliver(item(mail(f"Re: [Ticket#{t['tn']}] Opened in OTOBO", "Reply.\n"),
                             kind="followup"))
        assert (res.ticket_id, res.ticket_number) == (str(t["id"]), t["tn"])
        assert len(otobo.articles(t["id"])) == 2

    def test_crypto_results_in_the_history(self, otobo: Otobo,
                                           helpdesk_config: MakeConfig) -> None:
        """Decryption and signature results are in the article's history comment."""
        c = rest(helpdesk_config, otobo.start_rest())
        it = item(mail("Signed"), crypto={"encrypted": True, "decrypted": True, "signed": True,
                                          "signature_valid": True, "method": "pgp",
                                          "signer": "alice@example.com"})
        res = c.deliver(it)
        names = [h["name"] for h in otobo.history(int(res.ticket_id))]
        assert (f"%%deskgate {it.key} (decrypted (PGP); signature valid by "
                "alice@example.com)") in names

    def test_unknown_dynamic_field_is_skipped_with_a_warning(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A dynamic field OTOBO does not have is left out; the log says so."""
        c = rest(helpdesk_config, otobo.start_rest())
        res = c.deliver(item(mail("DF test"), decisions={"DynamicField-Server": "s1",
                                                         "DynamicField-Nope": "x"}))
        assert otobo.dynamic_fields(int(res.ticket_id)) == {"Server": "s1"}
        assert ("Warn", "DynamicField", "OTOBO has no dynamic field 'Nope': value 'x' not "
                "passed on") in res.log


class TestRestExactlyOnce:
    """A retry first looks for what an earlier attempt already delivered."""

    def test_retry_after_lost_answer_creates_no_second_ticket(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """The same item delivered again with attempts=1 is found, not created again."""
        c = rest(helpdesk_config, otobo.start_rest())
        it = item(mail("Lost answer (urgent) + more"))
        first = c.deliver(it)
        again = c.deliver(dataclasses.replace(it, attempts=1))
        assert (again.ticket_id, again.ticket_number, again.detail) == (
            first.ticket_id, first.ticket_number, "found")
        assert len(otobo.tickets()) == 1

    def test_retry_of_follow_up_adds_no_second_article(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A follow-up delivered again with attempts=1 is found on the ticket."""
        c = rest(helpdesk_config, otobo.start_rest())
        created = c.deliver(item(mail("Thread")))
        fu = item(mail("Re: Thread", "again\n"), kind="followup",
                  helpdesk_ticket_id=created.ticket_id)
        c.deliver(fu)
        assert c.deliver(dataclasses.replace(fu, attempts=2)).detail == "found"
        assert len(otobo.articles(int(created.ticket_id))) == 2

    def test_retry_of_same_title_other_key_creates(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A retry whose earlier attempts never reached OTOBO creates its ticket, even when
        another ticket has the same title."""
        c = rest(helpdesk_config, otobo.start_rest())
        c.deliver(item(mail("Same title")))
        res = c.deliver(item(mail("Same title"), attempts=3))
        assert res.detail == "created"
        assert len(otobo.tickets()) == 2


class TestRestFailures:
    """Errors map to temporary or permanent HandoffErrors with OTOBO's reason."""

    def test_otobo_down_is_temporary(self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """plackup stopped: connection refused, temporary."""
        c = rest(helpdesk_config, otobo.start_rest())
        otobo.stop_rest()
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("Nobody home")))
        assert e.value.temporary and "cannot reach http://127.0.0.1:" in str(e.value)

    def test_wrong_password_is_temporary_and_not_shown(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A refused login: temporary, OTOBO's reason, no password in the text."""
        c = rest(helpdesk_config, otobo.start_rest(), password="Wr0ngPassw0rd")
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("Bad login")))
        assert e.value.temporary
        assert str(e.value) == ("SessionCreate: OTOBO refused the login of 'root@localhost': "
                                "SessionCreate.AuthFail: SessionCreate: Authorization failing!")
        assert "Wr0ngPassw0rd" not in str(e.value)
        assert otobo.tickets() == []

    def test_unknown_queue_is_permanent(self, otobo: Otobo,
                                        helpdesk_config: MakeConfig) -> None:
        """OTOBO's validation error (no such queue): permanent, with its message."""
        c = rest(helpdesk_config, otobo.start_rest())
        it = dataclasses.replace(item(mail("Nowhere")), queue="NoSuchQueue")
        with pytest.raises(HandoffError) as e:
            c.deliver(it)
        assert not e.value.temporary
        assert "TicketCreate.InvalidParameter" in str(e.value)
        assert "Queue parameter is invalid" in str(e.value)

    def test_expired_session_is_renewed(self, otobo: Otobo,
                                        helpdesk_config: MakeConfig) -> None:
        """When OTOBO forgets the session, the connector logs in again and carries on."""
        c = rest(helpdesk_config, otobo.start_rest())
        c.deliver(item(mail("Before")))
        otobo.query("delete from sessions returning 1")
        c.deliver(item(mail("After")))
        assert [t["title"] for t in otobo.tickets()] == ["Before", "After"]


class TestRestTls:
    """https with the certificate checked against [helpdesk] tls_ca_file."""

    def test_private_ca(self, otobo: Otobo, helpdesk_config: MakeConfig,
                        tmp_path: Path) -> None:
        """With tls_ca_file the private CA's certificate is accepted; without it the
        system store refuses it: a temporary error that says so."""
        ca = TestCA(tmp_path / "ca")
        server = ca.issue("otobo", hosts=("localhost",), filename="otobo")
        url = otobo.start_rest(tls=(server.cert, server.key))
        assert url.startswith("https://localhost:")
        base = ['type = "otobo-rest"', f'url = "{url}"', f'user = "{AGENT}"',
                f'password = "{AGENT_PASSWORD}"']
        res = OtoboRest(helpdesk_config(*base, f'tls_ca_file = "{ca.ca_path}"')).deliver(
            item(mail("Over TLS")))
        assert res.detail == "created" and otobo.ticket("Over TLS")["queue"] == "Raw"
        with pytest.raises(HandoffError) as e:
            OtoboRest(helpdesk_config(*base)).deliver(item(mail("Untrusted TLS")))
        assert e.value.temporary and "CERTIFICATE_VERIFY_FAILED" in str(e.value)


class TestRestCheck:
    """`check` logs in and searches."""

    def test_check_against_real_otobo(self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """Login and search succeed; queues are reported as unchecked."""
        res = rest(helpdesk_config, otobo.start_rest()).check()
        assert [(s, k) for s, k, _ in res] == [("ok", "login"), ("ok", "search"),
                                               ("warn", "queues")]

    def test_check_with_wrong_password_fails(self, otobo: Otobo,
                                             helpdesk_config: MakeConfig) -> None:
        """A refused login fails the check without the password in the text."""
        res = rest(helpdesk_config, otobo.start_rest(), password="Wr0ngPassw0rd").check()
        assert res[0][:2] == ("fail", "login") and "Wr0ngPassw0rd" not in res[0][2]


class TestPendingTime:
    """OTOBO's pending-time header forms become TicketCreate's PendingTime."""

    def test_forms(self) -> None:
        """+Nd/h/m relative, absolute date-time, anything else None."""
        assert pending_time("+2d") == {"Diff": 2880}
        assert pending_time("+90") == {"Diff": 2}
        assert pending_time("2026-12-24 10:30:00") == {"Year": 2026, "Month": 12, "Day": 24,
                                                        "Hour": 10, "Minute": 30}
        assert pending_time("tomorrow") is None
