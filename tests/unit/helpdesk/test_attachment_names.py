"""The attachment file name a helpdesk gets: the last path component, no control
characters, bounded length with the extension kept, a fallback when nothing is left;
and the OTOBO PostMaster pipe's MIME carrying those names."""

from __future__ import annotations

import dataclasses
import email
from email import policy

import pytest

from gateway.helpdesk.filenames import MAX_BYTES, safe_filename
from gateway.helpdesk.mime import safe_mime_filenames
from gateway.model import AttachmentData
from tests.integration.helpdesk.items import item, mail


class TestSafeFilename:
    @pytest.mark.parametrize(("name", "safe"), [
        ("report.pdf", "report.pdf"),
        ("Prüfbericht 2026.pdf", "Prüfbericht 2026.pdf"),
        ("../../etc/x", "x"),
        ("/etc/passwd", "passwd"),
        ("C:\\temp\\x.exe", "x.exe"),
        ("C:x.exe", "x.exe"),
        ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        ("a\x00b.txt", "ab.txt"),
        ("line\r\nbreak\t.txt", "linebreak.txt"),
        ("bell\x07\x1b[31m.txt", "bell[31m.txt"),
        ("invoice\u202etxt.exe", "invoicetxt.exe"),
        ("  spaced.txt  ", "spaced.txt"),
        ("trailing dots...", "trailing dots"),
        (".htaccess", ".htaccess"),
    ])
    def test_names(self, name: str, safe: str) -> None:
        """Directories, drive letters, control and bidi-override characters go; the rest
        of the name stays as it was."""
        assert safe_filename(name, 1) == safe

    @pytest.mark.parametrize("name", ["", "   ", ".", "..", "../..", "/", "C:\\", "\x00\x01",
                                      "dir/", "\u202e"])
    def test_fallback_when_nothing_is_left(self, name: str) -> None:
        """An empty name, or one that is nothing but path or control characters, becomes
        attachment-N (N: the attachment's position)."""
        assert safe_filename(name, 3) == "attachment-3"

    def test_long_name_keeps_its_extension(self) -> None:
        """A name of hundreds of characters is cut to MAX_BYTES (UTF-8), the extension
        kept."""
        safe = safe_filename("a" * 600 + ".pdf", 1)
        assert safe.endswith(".pdf") and len(safe.encode()) == MAX_BYTES
        assert safe == "a" * (MAX_BYTES - 4) + ".pdf"

    def test_long_multibyte_name_is_cut_on_a_character(self) -> None:
        """Cutting never splits a UTF-8 sequence."""
        safe = safe_filename("ü" * 400 + ".docx", 1)
        assert safe.endswith(".docx") and len(safe.encode()) <= MAX_BYTES
        assert set(safe.removesuffix(".docx")) == {"ü"}

    def test_long_extension_is_cut_too(self) -> None:
        """A suffix too long to be an extension is part of the name and cut with it."""
        safe = safe_filename("x." + "y" * 500, 1)
        assert len(safe.encode()) <= MAX_BYTES and safe.startswith("x.yyy")

    def test_safe_names_are_unchanged(self) -> None:
        """Applying it twice changes nothing."""
        for name in ("../../etc/x", "a" * 600 + ".pdf", "", "C:\\temp\\x.exe"):
            once = safe_filename(name, 2)
            assert safe_filename(once, 2) == once


UNSAFE = [AttachmentData(filename="../../etc/x", content_type="text/plain", content=b"1"),
          AttachmentData(filename="C:\\temp\\x.exe", content_type="application/octet-stream",
                         content=b"2"),
          AttachmentData(filename="bad\x00\x1fname.txt", content_type="text/plain",
                         content=b"3"),
          AttachmentData(filename="", content_type="text/plain", content=b"4"),
          AttachmentData(filename="n" * 300 + ".pdf", content_type="application/pdf",
                         content=b"5")]
SAFE = ["x", "x.exe", "badname.txt", "attachment-4", "n" * (MAX_BYTES - 4) + ".pdf"]


def unsafe_item():
    """A hand-off item whose attachments have the customer's unsafe names."""
    return dataclasses.replace(item(mail("files")), attachments=list(UNSAFE))


def mime_with(names: list[str], *, signed: bool = False) -> bytes:
    """A multipart message with one attachment per name (raw filename parameters),
    optionally inside a multipart/signed part."""
    parts = b"".join(
        b"--b1\n"
        b"Content-Type: application/octet-stream; name=\"" + n.encode() + b"\"\n"
        b"Content-Disposition: attachment; filename=\"" + n.encode() + b"\"\n"
        b"Content-Transfer-Encoding: base64\n\nQUJD\n" for n in names)
    inner = (b"Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\n"
             b"Content-Type: text/plain\n\nhello\n" + parts + b"--b1--\n")
    if signed:
        inner = (b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";"
                 b" micalg=sha-256; boundary=\"s1\"\n\n--s1\n" + inner +
                 b"--s1\nContent-Type: application/pkcs7-signature; name=\"smime.p7s\"\n\n"
                 b"sig\n--s1--\n")
    return b"From: a@example.com\nSubject: s\nMIME-Version: 1.0\n" + inner


class TestPipeMime:
    def test_unsafe_names_are_replaced_in_the_message(self) -> None:
        """filename= and name= of each attachment carry the safe name; the rest of the
        message keeps its bytes and line ends."""
        raw = mime_with(["../../etc/x", "C:\\\\temp\\\\x.exe", "ok.txt"])
        out = safe_mime_filenames(raw)
        assert b"../../etc/x" not in out and b"temp" not in out
        assert b"Content-Disposition: attachment; filename=\"x\"\n" in out
        assert b"Content-Type: application/octet-stream; name=\"x.exe\"\n" in out
        assert b"filename=\"ok.txt\"" in out
        assert b"\r\n" not in out
        assert out.startswith(b"From: a@example.com\nSubject: s\nMIME-Version: 1.0\n")

    def test_control_characters_and_rfc2231_names(self) -> None:
        """Encoded names are read decoded and written back safe (RFC 2231 when not ASCII)."""
        raw = (b"From: a@example.com\nMIME-Version: 1.0\n"
               b"Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\n"
               b"Content-Type: text/plain\n\nhi\n--b1\n"
               b"Content-Type: application/pdf\n"
               b"Content-Disposition: attachment; filename*=utf-8''..%2F..%2FPr%C3%BCf%00.pdf\n"
               b"\nQUJD\n--b1--\n")
        out = safe_mime_filenames(raw)
        assert b"%2F" not in out and b"%00" not in out
        msg = email.message_from_bytes(out, policy=policy.default)
        assert [p.get_filename() for p in msg.iter_attachments()] == ["Prüf.pdf"]

    def test_safe_message_is_passed_byte_for_byte(self) -> None:
        """A message whose names are all safe is returned as it came."""
        raw = mime_with(["a.txt", "Bericht 2026.pdf"])
        assert safe_mime_filenames(raw) is raw

    def test_signed_content_is_left_alone(self) -> None:
        """Inside multipart/signed the bytes are signed: names stay (OTOBO's PostMaster
        cleans them when it stores the files) and the signature still verifies."""
        raw = mime_with(["../../etc/x"], signed=True)
        assert safe_mime_filenames(raw) is raw

    def test_pipe_renders_the_safe_names(self, make_confdir) -> None:
        """The otobo-postmaster connector pipes the message with the safe names."""
        from gateway.config import load_config
        from gateway.helpdesk.otobo_pipe import OtoboPostmaster

        cfg = load_config(make_confdir({"60.toml": '[helpdesk]\ntype = "otobo-postmaster"\n'
                                                   'command = ["/bin/true"]\n'}))
        raw = mime_with(["../../etc/x"])
        it = dataclasses.replace(item(mail("s")), mime=raw)
        message, _ = OtoboPostmaster(cfg).render(it)
        assert b"filename=\"x\"" in message and b"../" not in message
        assert it.mime == raw
