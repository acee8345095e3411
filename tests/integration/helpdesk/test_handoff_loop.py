"""Looping mail through the whole hand-off: an auto-reply deskgate recognises (here only
by `X-Autoreply: yes`, which OTOBO's own loop check does not know) is stored with its
loop flag, the hand-off item carries it, and a real OTOBO (PostMaster pipe and REST)
and a real Request Tracker send no auto-response to it, while they do answer ordinary
mail in the same setup."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import Config, load_config
from gateway.helpdesk import items, outbox
from gateway.helpdesk.base import HandoffItem
from gateway.helpdesk.otobo_pipe import OtoboPostmaster
from gateway.helpdesk.otobo_rest import OtoboRest
from gateway.helpdesk.rt_rest2 import RtRest2
from gateway.helpdesk.webhook import document
from gateway.model import Envelope
from tests.integration.helpdesk.items import mail
from tests.peers.otobo import AGENT, AGENT_PASSWORD, Otobo
from tests.peers.rt import RtServer

SUPPORT = "support@example.org"
AUTO_REPLY = {"X-Autoreply": "yes"}
# A filter clearing the loop flag of mail from one sender (deskgate's `Loop: no`).
CLEAR_LOOP = """
[[filter]]
name = "010-not-a-loop"
match = [{ header = "From", value = "robot@example.com" }]
[filter.set]
"X-Deskgate-Loop" = "no"
"""


def stored_item(make_confdir: Callable[..., Path], helpdesk: str, raw: bytes,
                policies: dict[str, str] | None = None) -> tuple[Config, HandoffItem]:
    """Deliver `raw` to support@ through deskgate's pipeline (hand-off worker not running)
    and build the item the worker would hand off."""
    cfg = load_config(make_confdir({"50-helpdesk.toml": textwrap.dedent(helpdesk)},
                                   policies=policies))
    gw = Gateway(cfg)
    try:
        gw.prepare_store()
        outcome = asyncio.run(gw.pipeline.deliver(
            Envelope(mail_from="x@example.com", recipients=(SUPPORT,),
                     raw=raw.replace(b"\n", b"\r\n"))))
        assert outcome.handoff_id is not None, outcome
        with gw.engine.begin() as conn:
            [claimed] = outbox.claim(conn, "test-node", limit=5, lease=60)
        built = items.read_items(gw.engine, gw.runtime, [claimed])[claimed.id]
        assert isinstance(built, HandoffItem), built
        return cfg, built
    finally:
        gw.close()


PIPE_DUMMY = f"""
[helpdesk]
type = "otobo-postmaster"
command = {json.dumps(["sh", "-c", "cat > /dev/null"])}
"""


class TestStoredFlag:
    """The article's stored loop flag reaches the item and what each connector sends."""

    def test_auto_reply_is_handed_over_as_a_loop(
            self, make_confdir: Callable[..., Path]) -> None:
        """X-Autoreply: yes alone: item.article.loop is true, the pipe adds X-OTOBO-Loop:
        yes, the webhook document says article.loop = true."""
        cfg, it = stored_item(make_confdir, PIPE_DUMMY,
                              mail("Out of office", to=SUPPORT, headers=AUTO_REPLY))
        assert it.article["loop"] is True
        assert "Loop" not in it.decisions
        message, _ = OtoboPostmaster(cfg).render(it)
        assert b"\r\nX-OTOBO-Loop: yes\r\n" in message
        assert document(it)["article"]["loop"] is True

    def test_a_filters_loop_no_is_kept(self, make_confdir: Callable[..., Path]) -> None:
        """A filter's Loop: no cleared the flag: no loop marker is handed over."""
        cfg, it = stored_item(make_confdir, PIPE_DUMMY,
                              mail("Build report", sender="robot@example.com", to=SUPPORT,
                                   headers=AUTO_REPLY), policies={"10.toml": CLEAR_LOOP})
        assert it.article["loop"] is False
        message, _ = OtoboPostmaster(cfg).render(it)
        assert b"X-OTOBO-Loop" not in message
        assert document(it)["article"]["loop"] is False

    def test_ordinary_mail_is_no_loop(self, make_confdir: Callable[..., Path]) -> None:
        """A customer's mail: loop false, no marker."""
        cfg, it = stored_item(make_confdir, PIPE_DUMMY, mail("Printer", to=SUPPORT))
        assert it.article["loop"] is False
        assert b"X-OTOBO-Loop" not in OtoboPostmaster(cfg).render(it)[0]


# ---------------------------------------------------------------- real OTOBO

def otobo_auto_responses(otobo: Otobo, queue: str = "Support") -> None:
    """Give `queue` OTOBO's default auto reply and auto follow up (a fresh OTOBO's queues
    have none)."""
    [q] = otobo.query("select id from queue where name = %s", queue)
    for ar in (1, 3):      # "default reply (after new ticket ...)", "default follow-up"
        otobo.query("insert into queue_auto_response (queue_id, auto_response_id, create_time,"
                    " create_by, change_time, change_by) values (%s, %s, now(), 1, now(), 1)"
                    " returning id", q["id"], ar)


def auto_answers(otobo: Otobo, ticket_id: int) -> list[str]:
    """The auto-responses OTOBO recorded on a ticket (history types)."""
    return [h["type"] for h in otobo.history(ticket_id)
            if h["type"] in ("SendAutoReply", "SendAutoFollowUp")]


@pytest.mark.otobo
class TestOtoboSendsNoAutoResponse:
    """A real OTOBO whose queue Support answers new tickets and follow-ups."""

    def test_postmaster_pipe(self, otobo: Otobo, make_confdir: Callable[..., Path]) -> None:
        """Through Maint::PostMaster::Read: the customer's mail gets OTOBO's auto reply,
        the auto-reply deskgate recognised gets none (a Misc history entry says why)."""
        otobo_auto_responses(otobo)
        conf = f"""
            [helpdesk]
            type = "otobo-postmaster"
            command = {json.dumps(otobo.postmaster_command())}
            """
        for subject, headers in (("Printer broken", {}), ("Out of office", AUTO_REPLY)):
            cfg, it = stored_item(make_confdir, conf, mail(subject, to=SUPPORT,
                                                           headers=headers))
            OtoboPostmaster(cfg).deliver(it)
        assert auto_answers(otobo, otobo.ticket("Printer broken")["id"]) == ["SendAutoReply"]
        looped = otobo.ticket("Out of office")
        assert auto_answers(otobo, looped["id"]) == []
        assert len(otobo.articles(looped["id"])) == 1
        assert any("doesn't want an auto-response" in h["name"]
                   for h in otobo.history(looped["id"]))

    @pytest.mark.parametrize("type_", ["otobo-rest"])
    def test_rest_create_and_follow_up(self, otobo: Otobo, make_confdir: Callable[..., Path],
                                       type_: str) -> None:
        """Through TicketCreate / TicketUpdate: the customer's mail gets the auto reply and
        the auto follow up, the auto-reply and its follow-up get neither."""
        otobo_auto_responses(otobo)
        conf = f"""
            [helpdesk]
            type = "{type_}"
            url = "{otobo.start_rest()}"
            user = "{AGENT}"
            password = "{AGENT_PASSWORD}"
            timeout = "30s"
            """
        for subject, headers in (("Printer broken", {}), ("Out of office", AUTO_REPLY)):
            cfg, it = stored_item(make_confdir, conf, mail(subject, to=SUPPORT,
                                                           headers=headers))
            c = OtoboRest(cfg)
            res = c.deliver(it)
            follow = dataclasses.replace(it, kind="followup", key=f"dg-{uuid.uuid4().hex}",
                                         helpdesk_ticket_id=res.ticket_id)
            c.deliver(follow)
        ordinary = otobo.ticket("Printer broken")
        assert auto_answers(otobo, ordinary["id"]) == ["SendAutoReply", "SendAutoFollowUp"]
        looped = otobo.ticket("Out of office")
        assert auto_answers(otobo, looped["id"]) == []
        assert [a["sender_type"] for a in otobo.articles(looped["id"])] == [
            "customer", "customer"]


# ---------------------------------------------------------------- real RT

@pytest.mark.rt
@pytest.mark.postgres
class TestRtSendsNoAutoReply:
    """RT's stock scrip "On Create Autoreply To Requestors" on a real RT 5."""

    def test_create(self, rt5: RtServer, make_confdir: Callable[..., Path]) -> None:
        """The customer's new ticket gets RT's auto-reply (an outgoing mail recorded to
        the requestor), the auto-reply deskgate recognised gets none."""
        root = make_confdir().parent
        (root / "rt.token").write_text(rt5.token + "\n")
        (root / "rt.token").chmod(0o600)
        conf = f"""
            [helpdesk]
            type = "rt-rest2"
            url = "{rt5.url}"
            token_file = "rt.token"
            timeout = "20s"
            """
        tag = uuid.uuid4().hex[:8]
        got: dict[str, str] = {}
        for subject, headers in ((f"Printer broken {tag}", {}),
                                 (f"Out of office {tag}", AUTO_REPLY)):
            cfg, it = stored_item(make_confdir, conf, mail(subject, to=SUPPORT,
                                                           headers=headers))
            got[subject] = RtRest2(cfg).deliver(it).ticket_id

        def mailed(tid: str) -> list[str]:
            return [a.headers for tx in rt5.database.transactions(int(tid), ("EmailRecord",))
                    for a in tx.attachments[:1]]

        ordinary = mailed(got[f"Printer broken {tag}"])
        assert len(ordinary) == 1 and "alice@example.com" in ordinary[0]
        assert mailed(got[f"Out of office {tag}"]) == []
