"""otobo-postmaster: deskgate's hand-off piped into a real OTOBO's PostMaster::Read."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from gateway.config import Config
from gateway.helpdesk.base import HandoffError
from gateway.helpdesk.otobo_pipe import OtoboPostmaster
from tests.integration.helpdesk.items import item, mail
from tests.peers.otobo import Otobo

pytestmark = pytest.mark.otobo

MakeConfig = Callable[..., Config]


def pipe(make: MakeConfig, argv: list[str], timeout: str = "60s") -> OtoboPostmaster:
    return OtoboPostmaster(make('type = "otobo-postmaster"', f"command = {json.dumps(argv)}",
                                f'timeout = "{timeout}"'))


class TestPipeCreate:
    """A new ticket through the PostMaster takes deskgate's decisions."""

    def test_create_lands_with_queue_priority_state_title_and_dynamic_field(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """Queue, priority, state, title, customer and a dynamic field come from the decisions."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        it = item(mail("Printer on fire"), decisions={
            "Queue": "Support", "Priority": "5 very high", "State": "open",
            "Title": "Printer 42 on fire", "CustomerUser": "alice@example.com",
            "CustomerNo": "ACME", "DynamicField-Server": "print01"})
        res = c.deliver(it)
        assert res.ticket_id == "" and "exit 0" in res.detail
        assert res.log[0][:2] == ("Info", "Headers")
        assert "X-OTOBO-Queue: Support, X-OTOBO-Priority: 5 very high" in res.log[0][2]
        t = otobo.ticket("Printer 42 on fire")
        assert (t["queue"], t["priority"], t["state"]) == ("Support", "5 very high", "open")
        assert (t["customer_user"], t["customer_id"]) == ("alice@example.com", "ACME")
        assert otobo.dynamic_fields(t["id"]) == {"Server": "print01"}
        [a] = otobo.articles(t["id"])
        assert a["message_id"] == it.article["message_id"]
        assert a["sender_type"] == "customer"

    def test_item_queue_is_the_mapped_helpdesk_queue(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """The item's queue (after [helpdesk.queues]) wins over the deskgate queue name."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        it = dataclasses.replace(item(mail("Mapped queue"), decisions={"Queue": "Sales"}),
                                 queue="Misc")
        c.deliver(it)
        assert otobo.ticket("Mapped queue")["queue"] == "Misc"

    def test_unknown_queue_falls_back_in_otobo(self, otobo: Otobo,
                                               helpdesk_config: MakeConfig) -> None:
        """OTOBO puts mail for a queue it does not have into its default queue (exit 0)."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        c.deliver(dataclasses.replace(item(mail("Lost queue")), queue="NoSuchQueue"))
        assert otobo.ticket("Lost queue")["queue"] == "Raw"

    def test_non_ascii_title_survives(self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A non-ASCII title travels as an RFC 2047 header and arrives decoded."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        c.deliver(item(mail("Drucker"), decisions={"Title": "Drücker brennt: Ünïcödé €"}))
        assert otobo.ticket("Drücker brennt: Ünïcödé €")["queue"] == "Raw"

    def test_senders_own_otobo_headers_do_not_reach_otobo(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """X-OTOBO-/X-OTRS-/X-Deskgate- headers in the message are removed, folded ones too."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        mime = mail("Sneaky", headers={"X-OTOBO-Queue": "Junk", "X-OTRS-Priority": "1 very low",
                                       "X-Deskgate-State": "closed successful"})
        mime = mime.replace(b"X-OTOBO-Queue: Junk\n",
                            b"X-OTOBO-Queue:\n Junk\nx-otobo-dynamicfield-server: evil\n")
        c.deliver(item(mime, decisions={"Queue": "Support"}))
        t = otobo.ticket("Sneaky")
        assert (t["queue"], t["priority"], t["state"]) == ("Support", "3 normal", "new")
        assert otobo.dynamic_fields(t["id"]) == {}
        [a] = otobo.articles(t["id"])
        src = otobo.plain(a["id"])
        assert "Junk" not in src and "evil" not in src and "X-OTRS-" not in src
        assert "X-OTOBO-Queue: Support" in src

    def test_decrypted_message_is_marked(self, otobo: Otobo,
                                         helpdesk_config: MakeConfig) -> None:
        """Crypto results travel as X-OTOBO-BodyDecrypted/Crypted/Signed headers."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        mime = mail("Secret", headers={"X-OTOBO-BodyDecrypted": "forged"})
        c.deliver(item(mime, crypto={"encrypted": True, "decrypted": True, "signed": True,
                                     "signature_valid": True, "signer": "alice@example.com",
                                     "method": "smime"}))
        [a] = otobo.articles(otobo.ticket("Secret")["id"])
        src = otobo.plain(a["id"])
        assert "X-OTOBO-BodyDecrypted: yes" in src and "forged" not in src
        assert "X-OTOBO-Signed: Good signature from alice@example.com" in src


class TestPipeFollowUp:
    """Follow-ups reach the ticket OTOBO created for the first message."""

    def test_follow_up_by_in_reply_to(self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A reply to the first Message-ID becomes an article of the same ticket, with the
        FollowUp- decisions applied and the new-ticket ones not."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        first = item(mail("Broken mouse"), decisions={"Queue": "Support"})
        c.deliver(first)
        reply = item(mail("Re: Broken mouse", "Still broken.\n",
                          in_reply_to=first.article["message_id"]),
                     kind="followup", queue="Support",
                     decisions={"Queue": "Junk", "Priority": "1 very low",
                                "FollowUp-Priority": "4 high", "FollowUp-State": "open"})
        c.deliver(reply)
        [t] = otobo.tickets()
        assert (t["queue"], t["priority"], t["state"]) == ("Support", "4 high", "open")
        assert [a["body"] for a in otobo.articles(t["id"])] == ["Hello helpdesk.\n",
                                                               "Still broken.\n"]

    def test_state_keep_no_and_visibility_as_deskgate_decided(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """FollowUp-State-Keep: no keeps nothing in deskgate, and OTOBO (which would keep
        the state for 'no') moves the pending ticket to open too; IsVisibleForCustomer
        off arrives as an article the customer does not see."""
        c = pipe(helpdesk_config, otobo.postmaster_command())
        first = item(mail("Waiting mouse"), decisions={
            "State": "pending reminder", "State-PendingTime": "+2d",
            "IsVisibleForCustomer": "off"})
        first = dataclasses.replace(first, article={**first.article,
                                                    "is_visible_for_customer": False})
        c.deliver(first)
        assert otobo.ticket("Waiting mouse")["state"] == "pending reminder"
        reply = item(mail("Re: Waiting mouse", "Any news?\n",
                          in_reply_to=first.article["message_id"]),
                     kind="followup", queue="Raw",
                     decisions={"FollowUp-State-Keep": "no",
                                "FollowUp-IsVisibleForCustomer": "yes"})
        c.deliver(reply)
        [t] = otobo.tickets()
        assert t["state"] == "open"
        assert [a["visible"] for a in otobo.articles(t["id"])] == [0, 1]

    def test_follow_up_by_ticket_number_in_subject(
            self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """A message with [Ticket#N] of a ticket OTOBO created itself threads into it."""
        otobo.read_mail(mail("Made in OTOBO"))
        tn = otobo.ticket("Made in OTOBO")["tn"]
        c = pipe(helpdesk_config, otobo.postmaster_command())
        c.deliver(item(mail(f"Re: [Ticket#{tn}] Made in OTOBO", "More.\n"), kind="followup"))
        [t] = otobo.tickets()
        assert len(otobo.articles(t["id"])) == 2


class TestPipeFailures:
    """Failures of the command are temporary HandoffErrors that say why."""

    def test_exit_1_is_temporary_with_stderr(self, helpdesk_config: MakeConfig) -> None:
        """Exit 1: temporary, the command's stderr in the text."""
        c = pipe(helpdesk_config, ["sh", "-c", "cat >/dev/null; echo 'no such queue' >&2; exit 1"])
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("x")))
        assert e.value.temporary
        assert "exited 1" in str(e.value) and "no such queue" in str(e.value)

    def test_otobo_without_database_is_temporary(self, otobo: Otobo,
                                                 helpdesk_config: MakeConfig) -> None:
        """OTOBO whose database is gone fails: temporary, with OTOBO's error message."""
        otobo.drop()
        c = pipe(helpdesk_config, otobo.postmaster_command())
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("DB gone")))
        assert e.value.temporary
        assert f"exited 1: DBI connect('dbname={otobo.db};" in str(e.value)

    def test_exit_75_is_temporary(self, helpdesk_config: MakeConfig) -> None:
        """EX_TEMPFAIL (OTOBO's answer to an unexpected error): temporary, says so."""
        c = pipe(helpdesk_config, ["sh", "-c", "cat >/dev/null; echo 'DB busy' >&2; exit 75"])
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("x")))
        assert e.value.temporary
        assert str(e.value) == ("sh -c exited 75 (EX_TEMPFAIL, try again later): DB busy")

    def test_timeout_kills_the_command(self, helpdesk_config: MakeConfig) -> None:
        """A command that hangs is killed after [helpdesk] timeout: temporary."""
        c = pipe(helpdesk_config, ["sh", "-c", "sleep 30"], timeout="1s")
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("slow")))
        assert e.value.temporary and "did not finish within 1 s" in str(e.value)

    def test_runs_as_the_configured_user_and_group(
            self, helpdesk_config: MakeConfig) -> None:
        """[helpdesk] user/group: the command runs with that uid and gid."""
        c = OtoboPostmaster(helpdesk_config(
            'type = "otobo-postmaster"',
            'command = ["sh", "-c", "cat >/dev/null; echo $(id -un):$(id -gn) >&2; exit 3"]',
            'user = "nobody"', 'group = "nogroup"'))
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("x")))
        assert str(e.value) == "sh -c exited 3: nobody:nogroup"

    def test_missing_command_is_temporary(self, helpdesk_config: MakeConfig) -> None:
        """A command that does not exist: temporary (an admin fixes the path)."""
        c = pipe(helpdesk_config, ["/nonexistent/otobo.Console.pl", "Maint::PostMaster::Read"])
        with pytest.raises(HandoffError) as e:
            c.deliver(item(mail("x")))
        assert e.value.temporary and "cannot run" in str(e.value)


class TestPipeCheck:
    """`check` runs the console harmlessly and reports."""

    def test_check_reaches_otobo(self, otobo: Otobo, helpdesk_config: MakeConfig) -> None:
        """The real console: executable, database check ok."""
        res = pipe(helpdesk_config, otobo.postmaster_command()).check()
        assert [s for s, _, _ in res] == ["ok", "ok"], res
        assert "Maint::Database::Check" in res[1][2]

    def test_check_flags_untrusted_and_missing(self, otobo: Otobo,
                                               helpdesk_config: MakeConfig) -> None:
        """--untrusted fails the check; a missing command fails at once."""
        res = pipe(helpdesk_config, [*otobo.postmaster_command(), "--untrusted"]).check()
        assert ("fail", "trust") in [(s, k) for s, k, _ in res]
        res = pipe(helpdesk_config, ["/nonexistent/console"]).check()
        assert res == [("fail", "command", "/nonexistent/console not found")]
