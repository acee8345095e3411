"""The PostMaster pipe's fallback when decrypting the stored message again fails for good
(the helpdesk's key removed since it came in): the message is rebuilt from what deskgate
stored for the article, its text, its HTML and its attachments, not its text alone."""

from __future__ import annotations

import asyncio
import email
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.config import load_config
from gateway.crypto.keystore import stores_for
from gateway.helpdesk import items, outbox
from gateway.helpdesk.base import HandoffItem
from gateway.model import Envelope
from gateway.store.tables import Attachment
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, SUPPORT_PASS, crlf
from tests.peers.gpg import GpgPeer, kill_agent, short_home

PLAIN = "The VPN drops every 5 minutes, see the log attached."
HTML = "<p>The VPN drops <b>every 5 minutes</b>, see <img src=\"cid:graph@cust\"></p>"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 2


@dataclass
class Stored:
    gateway: Gateway
    home: Path


@pytest.fixture
def stored(make_confdir: Callable[..., Path]) -> Iterator[Stored]:
    """A gateway handing off through the PostMaster pipe (its worker not running) that
    stored a PGP/MIME message whose plaintext has an HTML part, an inline image and a
    PDF attachment, decrypted on arrival with the helpdesk's key."""
    home = short_home("dgs")
    cust, admin = GpgPeer(), GpgPeer()
    gws: list[Gateway] = []
    try:
        cust.gen_key(f"Customer <{CUSTOMER}>")
        admin.gen_key(f"Example Support <{SUPPORT}>", passphrase=SUPPORT_PASS)
        cust.import_(admin.export(SUPPORT))
        conf = make_confdir({
            "50-helpdesk.toml": f"""
                [helpdesk]
                type = "otobo-postmaster"
                command = {json.dumps(["sh", "-c", "cat > /dev/null"])}
                retry = "1s, 1s"
                """,
            "51-crypto.toml": f"""
                [crypto]
                gnupg_home = "{home}"
                """})
        cfg = load_config(conf)
        stores = stores_for(cfg)
        stores.pgp.import_(admin.export_secret(SUPPORT, SUPPORT_PASS), SUPPORT_PASS)
        stores.pgp.import_(cust.export(CUSTOMER))
        inner = crlf(
            b'Content-Type: multipart/mixed; boundary="mix"\n\n'
            b'--mix\nContent-Type: multipart/alternative; boundary="alt"\n\n'
            b"--alt\nContent-Type: text/plain; charset=utf-8\n\n" + PLAIN.encode() + b"\n"
            b'--alt\nContent-Type: multipart/related; boundary="rel"\n\n'
            b"--rel\nContent-Type: text/html; charset=utf-8\n\n" + HTML.encode() + b"\n"
            b"--rel\nContent-Type: image/png\nContent-ID: <graph@cust>\n"
            b'Content-Disposition: inline; filename="graph.png"\n'
            b"Content-Transfer-Encoding: base64\n\n"
            + email.base64mime.body_encode(PNG).encode() + b"\n--rel--\n"
            b"\n--alt--\n"
            b"\n--mix\nContent-Type: application/pdf; name=\"vpn-log.pdf\"\n"
            b'Content-Disposition: attachment; filename="vpn-log.pdf"\n'
            b"Content-Transfer-Encoding: base64\n\n"
            + email.base64mime.body_encode(PDF).encode() + b"\n--mix--\n")
        raw = crlf(
            b"From: Customer <cust@customer.test>\nTo: support@example.org\n"
            b"Subject: vpn broken\nMessage-ID: <pgp-html@customer.test>\n"
            b"Date: Mon, 02 Dec 2024 10:00:00 +0000\n"
            b"MIME-Version: 1.0\nContent-Type: multipart/encrypted; "
            b'protocol="application/pgp-encrypted"; boundary="enc"\n\n'
            b"--enc\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n"
            b"\n--enc\nContent-Type: application/octet-stream\n\n"
            + cust.encrypt(inner, SUPPORT) + b"\n--enc--\n")
        gw = Gateway(cfg)
        gws.append(gw)
        gw.prepare_store()
        outcome = asyncio.run(gw.pipeline.deliver(
            Envelope(mail_from=CUSTOMER, recipients=(SUPPORT,), raw=raw)))
        assert outcome.handoff_id is not None, outcome
        yield Stored(gw, home)
    finally:
        for g in gws:
            g.close()
        cust.close()
        admin.close()
        kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def hand_off_item(s: Stored) -> tuple[HandoffItem, str]:
    """The item the worker builds for the stored article's outbox row, and its note."""
    with s.gateway.engine.begin() as conn:
        [claimed] = outbox.claim(conn, "test-node", limit=5, lease=60)
    built = items.read_items(s.gateway.engine, s.gateway.runtime, [claimed])[claimed.id]
    assert isinstance(built, HandoffItem), built
    return built, items.take_note(claimed)


def leaves(msg: Message) -> list[Message]:
    return [p for p in msg.walk() if not p.is_multipart()]


class TestStoredFormAfterTheKeyIsGone:
    """Decrypting again fails for good: the helpdesk gets what deskgate stored."""

    def test_the_html_and_the_attachments_are_handed_over(self, stored: Stored) -> None:
        """The handed-over message holds the stored text, the HTML and every stored
        attachment (bytes, name, type, Content-ID, disposition), keeps the original
        headers, and the attempt's note still says decrypting again failed."""
        with stored.gateway.engine.connect() as conn:
            atts = {r.filename: r for r in conn.execute(select(Attachment)).all()}
        assert {bytes(a.content) for a in atts.values()} == {PDF, PNG}
        assert (atts["graph.png"].content_id, atts["graph.png"].disposition) == (
            "graph@cust", "inline")
        removed = stores_for(stored.gateway.runtime.config).pgp.remove(SUPPORT)
        assert any(k.secret for k in removed)

        item, note = hand_off_item(stored)

        assert item.mime is not None
        msg = email.message_from_bytes(item.mime)
        assert b"BEGIN PGP MESSAGE" not in item.mime
        assert msg["Subject"] == "vpn broken"
        assert msg["Message-ID"] == "<pgp-html@customer.test>"
        assert msg.get_content_type() == "multipart/mixed"
        parts = leaves(msg)
        texts = {p.get_content_type(): p.get_payload(decode=True) for p in parts
                 if p.get_content_maintype() == "text"}
        assert PLAIN.encode() in texts["text/plain"]
        assert HTML.encode() in texts["text/html"]
        files = {p.get_filename(): p for p in parts if p.get_content_maintype() != "text"}
        assert set(files) == set(atts)
        for name, a in atts.items():
            part = files[name]
            assert part.get_payload(decode=True) == bytes(a.content) == (
                PDF if a.content_type == "application/pdf" else PNG)
            assert part.get_content_type() == a.content_type
            assert (part.get_content_disposition() or "attachment") == a.disposition
            if a.content_id:
                assert part["Content-ID"] == f"<{a.content_id.strip('<>')}>"
        assert "the stored text of the article with its HTML and 2 attachments" in note
        assert "decrypting the stored message again failed (permanent error)" in note
        assert "no secret key" in note.lower()
        assert item.crypto.get("decrypted") is True

    def test_text_only_article_stays_text_plain(self, stored: Stored) -> None:
        """Without stored HTML and attachments the stored text goes as text/plain."""
        from gateway.store.tables import Article

        with stored.gateway.engine.begin() as conn:
            conn.execute(Attachment.__table__.delete())
            conn.execute(Article.__table__.update().values(body_html=None))
        stores_for(stored.gateway.runtime.config).pgp.remove(SUPPORT)

        item, note = hand_off_item(stored)

        assert item.mime is not None
        msg = email.message_from_bytes(item.mime)
        assert msg.get_content_type() == "text/plain"
        assert PLAIN.encode() in msg.get_payload(decode=True)
        assert msg["Subject"] == "vpn broken"
        assert "as text/plain (no attachments, no HTML)" in note
        assert "permanent error" in note
