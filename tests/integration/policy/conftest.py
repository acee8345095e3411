"""Fixtures of the policy integration tests: a Gateway on SQLite with policies, and
helpers to deliver messages through its pipeline and read tickets back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.app import Gateway
from gateway.cli.tickets import ticket_detail
from gateway.config import load_config
from gateway.model import Envelope, Outcome
from gateway.store import repo
from gateway.store.tables import Ticket

POLICY_QUEUES = """
[[queue]]
name = "Possible"
address = "possible@example.org"
follow_up = "possible"

[[queue]]
name = "Reject"
address = "reject@example.org"
follow_up = "reject"

[[queue]]
name = "NewTicket"
address = "newticket@example.org"
follow_up = "new-ticket"

[[address]]
email = "possible@example.org"
queue = "Possible"

[[address]]
email = "reject@example.org"
queue = "Reject"

[[address]]
email = "newticket@example.org"
queue = "NewTicket"
"""


@pytest.fixture
def gateway_for(make_confdir: Callable[..., Path]) -> Iterator[Callable[..., Gateway]]:
    """gateway_for(policies={...}, conf={...}) → a Gateway with a migrated SQLite store."""
    made: list[Gateway] = []

    def make(policies: dict[str, str] | None = None,
             conf: dict[str, str] | None = None) -> Gateway:
        files = {"40-policy-queues.toml": POLICY_QUEUES, **(conf or {})}
        gw = Gateway(load_config(make_confdir(files, policies=policies or {})))
        gw.prepare_store()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


def deliver(gw: Gateway, raw: bytes, *, rcpts: tuple[str, ...] = ("support@example.org",),
            trusted: bool = False) -> Outcome:
    """One message through the whole inbound pipeline (as `deskgate deliver` does)."""
    env = Envelope(mail_from="carla@customer.test", recipients=rcpts, raw=raw,
                   source="STDIN", account="test", trusted=trusted)
    outcome = asyncio.run(gw.pipeline.deliver(env))
    assert all(r.ok for r in outcome.replies), outcome
    return outcome


def ticket(gw: Gateway, number: str) -> dict[str, Any]:
    with gw.engine.connect() as conn:
        t = ticket_detail(conn, number)
        assert t is not None, number
        row = repo.ticket_by_number(conn, number)
        t["id"] = row.id
        t["linked_ticket_id"] = row.linked_ticket_id
        t["state_type"] = row.state_type
        t["pending_until"] = row.pending_until
        return t


def set_state(gw: Gateway, number: str, state: str) -> None:
    with gw.engine.begin() as conn:
        conn.execute(update(Ticket).where(Ticket.number == number).values(
            state=state, state_type=gw.config.postmaster.states[state]))


def ticket_count(gw: Gateway) -> int:
    with gw.engine.connect() as conn:
        return len(conn.execute(select(Ticket.id)).all())


def add_outgoing(gw: Gateway, number: str, message_id: str,
                 to: str = "carla@customer.test") -> int:
    """An agent's answer as the outbound side stores it."""
    with gw.engine.begin() as conn:
        t = repo.ticket_by_number(conn, number)
        return repo.insert_article(
            conn, ticket_id=t.id, direction="outgoing", sender_type="agent",
            from_addr="Example Support <support@example.org>", from_email="support@example.org",
            to_addr=to, subject=f"[Ticket#{number}] answer", message_id=message_id,
            body="We are on it.", transmission_status="sent")
