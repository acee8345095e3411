"""Pure MIME helpers of the crypto stages: exact signed bytes, entity split, 7-bit
re-encoding, opaque re-serialisation, clearsigned text, permission checks, the
split of a CMS signature into one copy per signer."""

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


class TestCmsSplitSigners:
    def test_input_that_is_no_signed_data_is_passed_on_unchanged(self):
        """Garbage, truncated DER, a lone INTEGER and deep indefinite nesting are handed
        to openssl as they are, never raised."""
        from gateway.crypto.smime import cms_split_signers

        deep = b"\x30\x80" * 5000
        for der in (b"", b"\x00", b"not DER at all", b"\x30\x82\x05\x6f\x06\x09",
                    b"\x02\x01\x05", deep):
            assert cms_split_signers(der) == [der]

    def test_two_signer_infos_become_two_copies(self):
        """A hand-built SignedData with two SignerInfos (one of them BER indefinite
        length) gives two ContentInfos, each with the other fields byte for byte."""
        from gateway.crypto.smime import cms_split_signers

        oid = b"\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02"
        head = b"\x02\x01\x01" + b"\x31\x00" + b"\x30\x80\x06\x01\x01\x00\x00"
        si1, si2 = b"\x30\x03\x02\x01\x01", b"\x30\x80\x02\x01\x02\x00\x00"
        sd = b"\x30" + bytes([len(head) + 2 + len(si1) + len(si2)]) + head \
            + b"\x31" + bytes([len(si1) + len(si2)]) + si1 + si2
        der = b"\x30\x80" + oid + b"\xa0\x80" + sd + b"\x00\x00\x00\x00"

        def wrap(si: bytes) -> bytes:
            inner = b"\x30" + bytes([len(head) + 2 + len(si)]) + head \
                + b"\x31" + bytes([len(si)]) + si
            body = oid + b"\xa0" + bytes([len(inner)]) + inner
            return b"\x30" + bytes([len(body)]) + body

        assert cms_split_signers(der) == [wrap(si1), wrap(si2)]
