"""A follow-up piped into OTOBO's PostMaster names, in its References, an article OTOBO
has in the ticket (the newest one handed over earlier), so OTOBO's own follow-up check
(PostMaster::CheckFollowUpModule###0200-References) files it where deskgate did, even
when deskgate linked it by a Message-ID OTOBO never got (deskgate's auto-response)."""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.policy import compat32
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.config import Config, load_config
from gateway.helpdesk import outbox
from gateway.helpdesk.base import HandoffItem
from gateway.helpdesk.mime import add_reference, split_head
from gateway.helpdesk.otobo_pipe import OtoboPostmaster
from gateway.store import repo
from gateway.store.db import make_engine, migrate
from tests.integration.helpdesk.items import item, mail

FIRST = "<first-article@customer.test>"
AUTO = "<auto-response.42@helpdesk.test>"


@pytest.fixture
def config(make_confdir: Callable[..., Path]) -> Config:
    conf = make_confdir({"60-hd.toml": textwrap.dedent("""
        [helpdesk]
        type = "otobo-postmaster"
        command = ["sh", "-c", "cat >/dev/null"]
        """)})
    return load_config(conf)


def followup(mime: bytes, linked: str = FIRST) -> HandoffItem:
    return dataclasses.replace(item(mime, kind="followup"), helpdesk_message_id=linked)


def head_of(message: bytes) -> str:
    return split_head(message)[0].decode()


class TestRenderedFollowUp:
    """What OTOBO reads from the piped copy of a follow-up."""

    def test_references_gain_the_article_otobo_has(self, config: Config) -> None:
        """Linked only by the auto-response's Message-ID (unknown to OTOBO): References
        keeps that one first and gains the earlier handed-over article's, folded onto a
        line of its own; Subject and In-Reply-To stay as sent."""
        it = followup(mail("Re: Toner empty", in_reply_to=AUTO))
        message, _ = OtoboPostmaster(config).render(it)
        msg = message_from_bytes(message, policy=compat32)
        assert msg.get_all("References") == [f"{AUTO}\n {FIRST}"]
        assert f"References: {AUTO}\n {FIRST}\n" in head_of(message)
        assert (msg["In-Reply-To"], msg["Subject"]) == (AUTO, "Re: Toner empty")
        assert message.endswith(b"\n\nHello helpdesk.\n")

    def test_in_reply_to_only_gets_references(self, config: Config) -> None:
        """An In-Reply-To without References: References is added with the In-Reply-To
        id first (RFC 5322 3.6.4), then the article OTOBO has."""
        mime = mail("Re: Toner empty").replace(b"Subject:", f"In-Reply-To: {AUTO}\nSubject:"
                                               .encode(), 1)
        message, _ = OtoboPostmaster(config).render(followup(mime))
        msg = message_from_bytes(message, policy=compat32)
        assert msg.get_all("References") == [f"{AUTO} {FIRST}"]
        assert msg["In-Reply-To"] == AUTO

    def test_no_references_at_all_gets_one(self, config: Config) -> None:
        """A follow-up deskgate found otherwise (its own ticket number in the Subject)
        carries neither header: References names the article OTOBO has."""
        message, _ = OtoboPostmaster(config).render(
            followup(mail("Re: [Ticket#2026120610000017] Toner empty")))
        msg = message_from_bytes(message, policy=compat32)
        assert msg.get_all("References") == [FIRST]
        assert msg["Subject"] == "Re: [Ticket#2026120610000017] Toner empty"

    def test_a_reference_otobo_has_already_is_not_repeated(self, config: Config) -> None:
        """The article's Message-ID in References or In-Reply-To already: the message
        goes as it is, no duplicate."""
        for mime in (mail("Re: x", in_reply_to=FIRST),
                     mail("Re: x", headers={"References": f"{FIRST} {AUTO}"})):
            it = followup(mime)
            message, _ = OtoboPostmaster(config).render(it)
            assert message.startswith(split_head(it.mime)[0])
            assert head_of(message).count(FIRST) == head_of(it.mime).count(FIRST)

    def test_a_new_ticket_is_left_alone(self, config: Config) -> None:
        """A creation gets no References of deskgate's: it must not join a ticket."""
        it = dataclasses.replace(item(mail("New", in_reply_to=AUTO)), helpdesk_message_id=FIRST)
        message, _ = OtoboPostmaster(config).render(it)
        assert FIRST not in message.decode()

    def test_the_stored_item_is_not_changed(self, config: Config) -> None:
        """Only the piped copy changes: the item's message keeps its References."""
        it = followup(mail("Re: Toner empty", in_reply_to=AUTO))
        before = it.mime
        OtoboPostmaster(config).render(it)
        assert it.mime == before and FIRST.encode() not in it.mime


class TestDeliverLog:
    """The hand-off's log entries say what the pipe did about the link."""

    def test_reference_added_is_logged(self, config: Config) -> None:
        """An Info entry names the Message-ID added to References."""
        res = OtoboPostmaster(config).deliver(followup(mail("Re: x", in_reply_to=AUTO)))
        [entry] = [e for e in res.log if e[1] == "References"]
        assert entry[0] == "Info" and FIRST in entry[2]

    def test_no_article_otobo_has_is_a_notice(self, config: Config) -> None:
        """No earlier handed-over article with a Message-ID: the message goes unchanged
        and a Notice says OTOBO may open a new ticket, and why."""
        it = followup(mail("Re: x", in_reply_to=AUTO), linked="")
        message, _ = OtoboPostmaster(config).render(it)
        assert message.startswith(split_head(it.mime)[0])
        res = OtoboPostmaster(config).deliver(it)
        [notice] = [e for e in res.log if e[0] == "Notice"]
        assert "may open a new ticket" in notice[2] and "Message-ID" in notice[2]


class TestAddReference:
    """The header helper: existing bytes kept, the new id appended, folded."""

    def test_crlf_message_and_folded_references(self) -> None:
        """A folded References of a CRLF message is kept byte for byte, the id follows
        on a continuation line with the message's line end."""
        raw = (b"From: a@b\r\nReferences: <a@x>\r\n\t<b@x>\r\nSubject: s\r\n\r\nbody\r\n")
        assert add_reference(raw, FIRST) == (
            b"From: a@b\r\nReferences: <a@x>\r\n\t<b@x>\r\n " + FIRST.encode()
            + b"\r\nSubject: s\r\n\r\nbody\r\n")

    def test_long_in_reply_to_list_is_folded(self) -> None:
        """A References built from a long In-Reply-To stays within 78 characters a line."""
        ids = " ".join(f"<{'x' * 30}.{n}@example.com>" for n in range(3))
        raw = f"From: a@b\nIn-Reply-To: {ids}\n\nbody\n".encode()
        head = add_reference(raw, FIRST).split(b"\n\n")[0].decode()
        refs = head[head.index("References:"):]
        assert all(len(line) <= 78 for line in refs.split("\n"))
        assert " ".join(refs.removeprefix("References:").split()) == f"{ids} {FIRST}"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'hd.db'}")
    migrate(e)
    yield e
    e.dispose()


class TestLoadedMessageIds:
    """The hand-off table tells which articles of the ticket the helpdesk got."""

    def test_newest_delivered_article_with_a_message_id(self, engine: Engine) -> None:
        """Delivered articles of the ticket, newest first, without empty Message-IDs,
        without rows of other tickets, of the same or later hand-offs."""
        with engine.begin() as conn:
            tid = repo.insert_ticket(conn, number="1", title="t", queue="Raw", state="new",
                                     state_type="new", priority="3 normal", dynamic_fields={})
            other = repo.insert_ticket(conn, number="2", title="u", queue="Raw", state="new",
                                       state_type="new", priority="3 normal",
                                       dynamic_fields={})
            rows = []
            for n, (t, mid, kind) in enumerate(((tid, FIRST, "create"),
                                                (tid, "<second@x>", "followup"),
                                                (tid, "", "followup"),
                                                (other, "<o@x>", "create"),
                                                (tid, "<now@x>", "followup"))):
                aid = repo.insert_article(conn, ticket_id=t, direction="incoming",
                                          sender_type="customer", subject=f"{n}",
                                          message_id=mid)
                rows.append(outbox.enqueue(conn, ticket_id=t, article_id=aid, kind=kind,
                                           helpdesk="otobo-postmaster", decisions={}))
        last: list[outbox.Claimed] = []
        for _ in range(4):
            with engine.begin() as conn:
                for c in outbox.claim(conn, "n1", limit=5, lease=60):
                    if c.id == rows[4]:
                        last.append(c)
                    else:
                        outbox.record_delivered(conn, c, ticket_id="", ticket_number="")
        [c] = last
        with engine.connect() as conn:
            loaded = outbox.load(conn, [c])[c.id]
        assert loaded.delivered_message_ids == (("otobo-postmaster", "<second@x>"),
                                                ("otobo-postmaster", FIRST))
