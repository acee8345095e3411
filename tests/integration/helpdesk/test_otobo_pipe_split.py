"""A reply to deskgate's auto-response, piped into a real OTOBO: deskgate links it by the
auto-response's Message-ID, which OTOBO never got; it still becomes an article of the
OTOBO ticket of the first message, not a ticket of its own."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from gateway.config import load_config
from gateway.store.tables import Article
from tests.integration.helpdesk.test_handoff_otobo import delivered, msg
from tests.integration.helpdesk.test_handoff_webhook import deliver, handoffs, wait_for
from tests.integration.outbound.conftest import outbound_toml
from tests.peers.otobo import Otobo
from tests.peers.smarthost import AuthSink

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

pytestmark = [pytest.mark.otobo, pytest.mark.slow]

DESK = """
[[queue]]
name = "Desk"
address = "desk@example.org"
auto_response_new = "Dear {customer},\\nwe opened ticket {ticket_number} ({title}).\\n"

[[address]]
email = "desk@example.org"
display_name = "Example Desk"
queue = "Desk"
"""


@pytest.fixture
def sink() -> Iterator[AuthSink]:
    s = AuthSink().start()
    try:
        yield s
    finally:
        s.stop()


def auto_response_id(rg: RunningGateway) -> str:
    with rg.gateway.engine.connect() as conn:
        return str(conn.execute(select(Article.message_id).where(
            Article.direction == "outgoing")).scalar_one_or_none() or "")


class TestReplyToTheAutoResponse:
    def test_reply_lands_in_the_same_otobo_ticket(
            self, otobo: Otobo, sink: AuthSink, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """The customer answers deskgate's auto-response (In-Reply-To only, no ticket
        number): deskgate and OTOBO both file it into the first message's ticket."""
        conf = make_confdir({
            "40-outbound.toml": outbound_toml(sink.port), "45-desk.toml": DESK,
            "50-helpdesk.toml": f"""
            [helpdesk]
            type = "otobo-postmaster"
            command = {json.dumps(otobo.postmaster_command())}
            retry = "0.5s*40"
            poll_interval = "0.2s"
            [helpdesk.queues]
            Desk = "Misc"
            """})
        rg = run_gateway(load_config(conf))
        assert deliver(rg, msg("s1", "Toner empty"), rcpt="desk@example.org") == 250
        assert delivered(rg, 1), handoffs(rg)
        assert wait_for(lambda: bool(auto_response_id(rg)), 30)
        auto = auto_response_id(rg)
        assert auto not in {a["message_id"] for a in otobo.articles()}
        assert deliver(rg, msg("s2", "Re: Toner empty", f"In-Reply-To: {auto}\r\n"),
                       rcpt="desk@example.org") == 250
        assert delivered(rg, 2), handoffs(rg)
        assert [h["kind"] for h in handoffs(rg)] == ["followup", "create"]
        [t] = otobo.tickets()
        arts = otobo.articles(t["id"])
        assert [a["body"].strip() for a in arts] == ["It is broken (s1).",
                                                     "It is broken (s2)."]
        # OTOBO shows what the customer wrote: the Subject as sent
        assert arts[1]["subject"] == "Re: Toner empty"
