"""8-bit bodies leave DKIM-signed in a form no relay has to re-encode: checked on what
smtp-sink received, directly and behind a Postfix that downgrades to 7 bits."""

from __future__ import annotations

import smtplib
from email import message_from_bytes
from email.policy import compat32
from pathlib import Path

import dkim as dkimpy
import pytest

from gateway.outbound.dkim import dns_record, generate_key, key_pem
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers import postfix as pfmod
from tests.peers.require import missing_peer
from tests.peers.smarthost import SmtpSink

TEXT = "Grüße aus Köln,\nIhre Bestellung ist unterwegs. Größe: 42, Preis: 5 €\n"
MSG_8BIT = (b"From: Agent Smith <agent@internal.test>\r\nTo: Customer <cust@customer.test>\r\n"
            b"Subject: Your order\r\nX-Deskgate-Queue: Support\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            b"\r\n" + TEXT.replace("\n", "\r\n").encode())
# Signed by the client: deskgate must not re-encode it, so it stays 8-bit.
SIGNED_8BIT = (b"From: Agent Smith <agent@internal.test>\r\nTo: cust@customer.test\r\n"
               b"Subject: signed\r\nX-Deskgate-Queue: Support\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/signed; protocol="application/pgp-signature"; '
               b'micalg=pgp-sha256; boundary="s"\r\n\r\n--s\r\n'
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
               b"\r\n" + "Grüße\r\n".encode() + b"--s\r\n"
               b"Content-Type: application/pgp-signature\r\n\r\nSIG\r\n--s--\r\n")


@pytest.fixture
def dkim_files(tmp_path: Path):
    """A [[dkim]] file for example.org and the DNS lookup that verifies its signatures."""
    key = generate_key()
    path = tmp_path / "dkim.pem"
    path.write_bytes(key_pem(key))
    path.chmod(0o600)
    toml = f'[[dkim]]\ndomain = "example.org"\nselector = "s1"\nkey_file = "{path}"\n'
    record = dns_record(key).encode()

    def verify(data: bytes) -> bool:
        try:
            return bool(dkimpy.DKIM(data).verify(
                dnsfunc=lambda name, timeout=5: record
                if name == b"s1._domainkey.example.org." else None))
        except dkimpy.DKIMException:
            return False

    return {"45-dkim.toml": toml}, verify


def _sink(tmp_path: Path, name: str, options: list[str]) -> SmtpSink:
    if not SmtpSink.available():
        missing_peer("smtp-sink (Postfix) not installed")
    return SmtpSink(tmp_path / name, options=options)


def _mail_args(sink: SmtpSink) -> str:
    """The MAIL FROM line's parameters as smtp-sink recorded them (X-Mail-Args)."""
    raw = next(iter(sorted(sink.dump_dir.glob("*")))).read_bytes().decode("latin-1")
    return next(ln[13:] for ln in raw.splitlines() if ln.startswith("X-Mail-Args: "))


def _text(data: bytes) -> str:
    """The decoded text body (smtp-sink's dump ends in one more line break)."""
    part = message_from_bytes(data, policy=compat32)
    return part.get_payload(decode=True).decode("utf-8").replace("\r\n", "\n")[:-1]


def _send(cfg, rg, msg: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
        s.sendmail("agent@internal.test", ["cust@customer.test"], msg)
    wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")


class TestEightBitBody:
    def test_8bit_text_arrives_quoted_printable_and_verifies(
            self, tmp_path, outbound_config, run_gateway, dkim_files):
        """An 8-bit text body is signed and sent as quoted-printable (7-bit): the
        signature verifies on what smtp-sink received, the text is unchanged."""
        files, verify = dkim_files
        with _sink(tmp_path, "sink", []) as sink:
            cfg = outbound_config(sink.port, files=files)
            rg = run_gateway(cfg)
            _send(cfg, rg, MSG_8BIT)
            data = sink.messages()[0].data
        assert data.isascii() and b"Content-Transfer-Encoding: quoted-printable" in data
        assert verify(data)
        assert _text(data) == TEXT
        assert "BODY=8BITMIME" not in _mail_args(sink)

    def test_signature_survives_a_relay_that_downgrades_to_7bit(
            self, tmp_path, outbound_config, run_gateway, dkim_files):
        """deskgate → Postfix → a next hop without 8BITMIME (smtp-sink -8): Postfix
        would re-encode an 8-bit body; what arrives still verifies."""
        if not pfmod.available():
            missing_peer("Postfix binaries missing or not running as root")
        files, verify = dkim_files
        with _sink(tmp_path, "sink", ["-8"]) as sink, pfmod.postfix_dir() as base:
            pf = pfmod.Postfix(base, "inet:127.0.0.1:1", sink_domain="discard.test")
            pf.start_relaying({"customer.test": sink.port})
            try:
                cfg = outbound_config(pf.port, files=files)
                rg = run_gateway(cfg)
                _send(cfg, rg, MSG_8BIT)
                wait_for(lambda: sink.messages(), what="the message behind Postfix")
                data = sink.messages()[0].data
            finally:
                pf.stop()
        assert verify(data)
        assert _text(data) == TEXT

    def test_8bit_that_must_stay_is_announced_body_8bitmime(
            self, tmp_path, outbound_config, run_gateway, dkim_files):
        """A part deskgate must not re-encode (inside multipart/signed) stays 8-bit:
        MAIL FROM carries BODY=8BITMIME, which smtp-sink offers; it verifies."""
        files, verify = dkim_files
        with _sink(tmp_path, "sink", []) as sink:
            cfg = outbound_config(sink.port, files=files)
            rg = run_gateway(cfg)
            _send(cfg, rg, SIGNED_8BIT)
            data = sink.messages()[0].data
        assert "Grüße".encode() in data
        assert "BODY=8BITMIME" in _mail_args(sink)
        assert verify(data)


# An application's HTML on one line: 7-bit, but longer than the 998 octets a line may
# have (RFC 5322 2.1.1).
LONG_LINE = "<p>" + "Ihre Bestellung ist unterwegs. " * 60 + "</p>"
MSG_LONG_LINE = (b"From: Agent Smith <agent@internal.test>\r\nTo: cust@customer.test\r\n"
                 b"Subject: Your order\r\nX-Deskgate-Queue: Support\r\nMIME-Version: 1.0\r\n"
                 b"Content-Type: text/html; charset=us-ascii\r\n\r\n"
                 + LONG_LINE.encode() + b"\r\n")


class TestLongBodyLines:
    def test_signature_survives_a_relay_that_breaks_long_lines(
            self, tmp_path, outbound_config, run_gateway, dkim_files):
        """A 7-bit body line over 998 octets: deskgate → Postfix (which breaks lines
        over smtp_line_length_limit) → smtp-sink; what arrives still verifies and
        decodes to the same text."""
        if not pfmod.available():
            missing_peer("Postfix binaries missing or not running as root")
        files, verify = dkim_files
        with _sink(tmp_path, "sink", []) as sink, pfmod.postfix_dir() as base:
            pf = pfmod.Postfix(base, "inet:127.0.0.1:1", sink_domain="discard.test")
            pf.start_relaying({"customer.test": sink.port})
            try:
                cfg = outbound_config(pf.port, files=files)
                rg = run_gateway(cfg)
                _send(cfg, rg, MSG_LONG_LINE)
                wait_for(lambda: sink.messages(), what="the message behind Postfix")
                data = sink.messages()[0].data
            finally:
                pf.stop()
        assert max(len(ln) for ln in data.replace(b"\r\n", b"\n").split(b"\n")) <= 998
        assert verify(data)
        assert _text(data) == LONG_LINE + "\n"
