"""Pure MIME helpers of the crypto stages: exact signed bytes, entity split, 7-bit
re-encoding, opaque re-serialisation, clearsigned text, permission checks."""

from __future__ import annotations

import base64
from email import message_from_bytes
from pathlib import Path

import pytest

from gateway.crypto.inbound import canonical, first_part_bytes
from gateway.crypto.keystore import KeyStoreError, check_private
from gateway.crypto.outbound import as_message, seven_bit, split_message
from gateway.crypto.pgp import clearsigned_text
from gateway.outbound.rewrite import serialize

SIGNED = (b'Content-Type: multipart/signed; boundary="outer"\r\n\r\npreamble\r\n'
          b'--outer\r\nContent-Type: multipart/mixed; boundary="inner"\r\n\r\n'
          b"--inner\r\nContent-Type: text/plain\r\n\r\nhello  \r\n--inner--\r\n"
          b"\r\n--outer\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n"
          b"--outer--\r\n")


class TestFirstPartBytes:
    def test_exact_bytes_of_first_part(self):
        """The first part is returned byte for byte, nested multiparts and spaces included."""
        part = first_part_bytes(SIGNED, "outer")
        assert part == (b'Content-Type: multipart/mixed; boundary="inner"\r\n\r\n'
                        b"--inner\r\nContent-Type: text/plain\r\n\r\nhello  \r\n--inner--\r\n")

    def test_lf_line_endings(self):
        """LF-only input is found too; canonical() turns it into CRLF."""
        lf = SIGNED.replace(b"\r\n", b"\n")
        part = first_part_bytes(lf, "outer")
        assert part is not None and canonical(part) == first_part_bytes(SIGNED, "outer")

    def test_missing_boundary(self):
        """No such boundary: None, not an exception."""
        assert first_part_bytes(SIGNED, "nope") is None


class TestSplitMessage:
    def test_content_headers_move_into_the_entity(self):
        """Content-* go into the entity; other headers (folded ones too) stay outside."""
        raw = (b"From: a@b.test\r\nSubject: long\r\n folded\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody\r\n")
        outer, entity = split_message(raw)
        assert outer == [b"From: a@b.test", b"Subject: long\r\n folded"]
        assert entity == b"Content-Type: text/plain;\r\n charset=utf-8\r\n\r\nbody\r\n"

    def test_default_content_type(self):
        """A message without Content-Type gets the RFC 2045 default in its entity."""
        _, entity = split_message(b"From: a@b.test\r\n\r\nplain\r\n")
        assert entity.startswith(b"Content-Type: text/plain; charset=us-ascii\r\n\r\n")


class TestSevenBit:
    def test_ascii_untouched(self):
        """7-bit entities are signed exactly as they are."""
        e = b"Content-Type: text/plain\r\n\r\nhello\r\n"
        assert seven_bit(e) is e

    def test_eight_bit_part_becomes_base64(self):
        """An 8-bit body is re-encoded as base64 and decodes back to the same bytes."""
        body = "Grüße\r\n".encode()
        out = seven_bit(b"Content-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
        assert out.isascii()
        msg = message_from_bytes(out)
        assert msg["Content-Transfer-Encoding"] == "base64"
        assert msg.get_payload(decode=True) == body


class TestAsMessage:
    def test_serialisation_is_byte_exact(self):
        """The pipeline re-serialises ctx.msg; the signed structure must come back unchanged."""
        data = b"From: a@b.test\r\nMIME-Version: 1.0\r\n" + SIGNED
        assert serialize(as_message(data)) == data


class TestClearsigned:
    def test_dash_escaped_lines(self):
        """The cleartext loses the armor and the '- ' dash escapes."""
        block = ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nhello\n- -- sig\n"
                 "-----BEGIN PGP SIGNATURE-----\n" + base64.b64encode(b"x").decode()
                 + "\n-----END PGP SIGNATURE-----")
        assert clearsigned_text(block) == "hello\n-- sig"


class TestPermissions:
    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
    def test_group_or_world_readable_refused(self, tmp_path: Path, mode: int):
        """Key material readable by group or others is refused, naming the fix."""
        p = tmp_path / "k.key"
        p.write_text("x")
        p.chmod(mode)
        with pytest.raises(KeyStoreError, match="chmod 600"):
            check_private(p)

    def test_owner_only_accepted(self, tmp_path: Path):
        """0600 is fine."""
        p = tmp_path / "k.key"
        p.write_text("x")
        p.chmod(0o600)
        check_private(p)
