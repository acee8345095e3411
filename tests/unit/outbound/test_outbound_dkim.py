"""DKIM signatures made with `cryptography` verify with dkimpy; tampering is caught."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import dkim as dkimpy
import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.outbound.dkim import (
    DkimKey,
    dns_record,
    generate_key,
    include_headers,
    key_pem,
    keys_for,
    load_private_key,
    sign,
)

MSG = (b"From: \"Example Support\" <support@example.org>\r\nTo: cust@customer.test\r\n"
       b"Subject: Your ticket\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
       b"Message-ID: <abc@example.org>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello  there \r\n\r\n\r\n")


def dns_for(*keys: DkimKey):
    records = {f"{k.selector}._domainkey.{k.domain}.".encode(): dns_record(k.key).encode()
               for k in keys}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def verify(data: bytes, dnsfunc, idx: int = 0) -> bool:
    """dkimpy's verdict; a mismatch it reports by raising counts as a failure."""
    try:
        return bool(dkimpy.DKIM(data).verify(idx=idx, dnsfunc=dnsfunc))
    except dkimpy.DKIMException:
        return False


class TestSignVerify:
    @pytest.mark.parametrize("ed", [False, True], ids=["rsa", "ed25519"])
    def test_signature_verifies_with_dkimpy(self, ed):
        """An RSA or Ed25519 signature verifies with dkimpy given the printed DNS record."""
        k = DkimKey("example.org", "s1", generate_key(ed))
        signed = sign(MSG, [k])
        assert signed.endswith(MSG)
        assert b"c=relaxed/relaxed" in signed
        assert (b"a=ed25519-sha256" if ed else b"a=rsa-sha256") in signed
        assert verify(signed, dns_for(k))

    def test_rotated_selectors_both_verify(self):
        """Two keys of one domain (old and new selector) both sign and both verify."""
        old = DkimKey("example.org", "s2025", generate_key())
        new = DkimKey("example.org", "s2026", generate_key(True))
        signed = sign(MSG, [old, new])
        assert signed.count(b"DKIM-Signature:") == 2
        dnsfunc = dns_for(old, new)
        assert verify(signed, dnsfunc, 0) and verify(signed, dnsfunc, 1)

    @pytest.mark.parametrize("change", [
        (b"Subject: Your ticket", b"Subject: Your ticket!"),
        (b"To: cust@customer.test", b"To: other@customer.test"),
        (b"Hello  there", b"Hello there!"),
    ], ids=["subject", "to", "body"])
    def test_change_after_signing_fails(self, change):
        """A header or body change after signing makes verification fail."""
        k = DkimKey("example.org", "s1", generate_key())
        signed = sign(MSG, [k])
        assert verify(signed, dns_for(k))
        assert not verify(signed.replace(*change), dns_for(k))

    @pytest.mark.parametrize("added", [b"Cc: intruder@evil.test\r\n",
                                       b"Reply-To: intruder@evil.test\r\n",
                                       b"From: intruder@evil.test\r\n"])
    def test_added_oversigned_header_fails(self, added):
        """Adding a Cc, Reply-To or second From after signing breaks the signature."""
        k = DkimKey("example.org", "s1", generate_key())
        signed = sign(MSG, [k])
        head, _, body = signed.partition(b"\r\n\r\n")
        assert not verify(head + b"\r\n" + added.rstrip(b"\r\n") + b"\r\n\r\n" + body,
                          dns_for(k))

    @pytest.mark.parametrize("added", [b"Sender: intruder@evil.test",
                                       b"Content-Type: text/html; charset=utf-8",
                                       b"MIME-Version: 1.0",
                                       b"Content-Transfer-Encoding: base64"],
                             ids=["sender", "content-type", "mime-version", "cte"])
    def test_second_instance_added_on_top_fails(self, added):
        """A second Sender, Content-Type, MIME-Version or Content-Transfer-Encoding put on
        top of the signed ones (where a reader takes the first) breaks the signature."""
        k = DkimKey("example.org", "s1", generate_key())
        msg = MSG.replace(b"MIME-Version:", b"Sender: support@example.org\r\n"
                          b"Content-Transfer-Encoding: 7bit\r\nMIME-Version:")
        signed = sign(msg, [k])
        assert verify(signed, dns_for(k))
        sig, _, rest = signed.partition(b"From:")
        assert not verify(sig + added + b"\r\nFrom:" + rest, dns_for(k))

    def test_list_unsubscribe_post_is_signed(self):
        """List-Unsubscribe-Post is signed when present (RFC 8058 4 asks for it)."""
        k = DkimKey("example.org", "s1", generate_key(True))
        msg = MSG.replace(b"MIME-Version:", b"List-Unsubscribe: <https://example.org/u>\r\n"
                          b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version:")
        signed = sign(msg, [k])
        changed = signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two")
        assert verify(signed, dns_for(k)) and not verify(changed, dns_for(k))

    @pytest.mark.parametrize("bits", [2048, 4096])
    def test_signature_lines_are_folded(self, bits):
        """The DKIM-Signature field is folded into lines of at most 78 characters (RFC 5322
        2.1.1), also with a 4096-bit key and many signed headers, so no relay breaks a
        line of it; it still verifies."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        k = DkimKey("example.org", "s2026-01", rsa.generate_private_key(65537, bits))
        msg = MSG.replace(b"To: cust@customer.test\r\n", b"".join(
            b"To: c%d@customer.test\r\n" % i for i in range(400)))
        signed = sign(msg, [k])
        field = signed[:signed.index(b"\r\nFrom:")]
        assert max(len(line) for line in field.split(b"\r\n")) <= 78, field
        assert b"h=from:from:" in field.replace(b"\r\n\t", b"")
        assert verify(signed, dns_for(k))

    def test_relaxed_canonicalization_tolerates_refolding(self):
        """Whitespace changes that relaxed canonicalization ignores keep it valid."""
        k = DkimKey("example.org", "s1", generate_key())
        signed = sign(MSG, [k])
        refolded = signed.replace(b"Subject: Your ticket", b"Subject:  Your\r\n ticket")
        assert verify(refolded, dns_for(k))

    def test_oversigned_list(self):
        """Each listed header is signed once more than it occurs; absent ones once."""
        headers = [(b"From", b"x"), (b"To", b"y"), (b"Subject", b"z"), (b"X-Other", b"w")]
        inc = include_headers(headers)
        assert inc.count(b"from") == 2 and inc.count(b"to") == 2
        assert inc.count(b"cc") == 1 and inc.count(b"references") == 1
        assert inc.count(b"sender") == 1
        assert b"x-other" not in inc and b"content-type" not in inc
        inc = include_headers([*headers, (b"Content-Type", b"text/plain")])
        assert inc.count(b"content-type") == 2
        assert b"received" not in include_headers([*headers, (b"Received", b"from x")])


class TestKeygen:
    @pytest.mark.parametrize("ed", [False, True], ids=["rsa", "ed25519"])
    def test_keygen_writes_private_key_and_prints_record(self, tmp_path: Path, ed):
        """`deskgate dkim keygen` writes a 0600 key whose printed TXT record verifies."""
        out = tmp_path / "k.pem"
        args = [sys.executable, "-m", "gateway", "dkim", "keygen", "example.org", "sel",
                "--out", str(out)] + (["--ed25519"] if ed else [])
        res = subprocess.run(args, capture_output=True, text=True, check=True, cwd=tmp_path,
                             env={"PYTHONPATH": str(Path.cwd()), "PATH": "/usr/bin:/bin"})
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        line = res.stdout.strip()
        assert line.startswith("sel._domainkey.example.org. IN TXT")
        strings = [part for i, part in enumerate(line.split('"')) if i % 2 == 1]
        record = "".join(strings)
        assert record.startswith("v=DKIM1; k=" + ("ed25519" if ed else "rsa") + "; p=")
        # a TXT string holds at most 255 characters: RSA-2048's record needs two of them
        assert max(len(x) for x in strings) <= 255
        assert len(strings) == (1 if ed else 2)
        assert line.endswith(" )") and " IN TXT ( " in line
        k = DkimKey("example.org", "sel", load_private_key(out))
        signed = sign(MSG, [k])
        assert verify(signed, lambda name, timeout=5: record.encode()
                      if name == b"sel._domainkey.example.org." else None)


class TestKeyChoice:
    """Which keys sign a From domain: the domain's own, else a parent's with subdomains."""

    @staticmethod
    def rt(*keys: DkimKey):
        from types import SimpleNamespace

        table: dict[str, list[DkimKey]] = {}
        for k in keys:
            table.setdefault(k.domain, []).append(k)
        return SimpleNamespace(dkim=table)

    def test_exact_domain_only_by_default(self):
        k = DkimKey("example.org", "s1", generate_key(True))
        rt = self.rt(k)
        assert keys_for(rt, "support@example.org") == [k]
        assert keys_for(rt, "support@EXAMPLE.org") == [k]
        assert keys_for(rt, "support@eu.example.org") == []
        assert keys_for(rt, "support@badexample.org") == []

    def test_subdomains_signed_with_the_parent_key(self):
        parent = DkimKey("example.org", "s1", generate_key(True), subdomains=True)
        rt = self.rt(parent)
        assert keys_for(rt, "support@eu.example.org") == [parent]
        assert keys_for(rt, "support@a.b.example.org") == [parent]
        assert keys_for(rt, "support@org") == []
        assert keys_for(rt, "support@notexample.org") == []
        # d= is the parent domain, and it verifies against the parent's record
        msg = MSG.replace(b"support@example.org", b"support@eu.example.org")
        signed = sign(msg, keys_for(rt, "support@eu.example.org"))
        assert b"d=example.org;" in signed and verify(signed, dns_for(parent))

    def test_own_key_of_the_subdomain_wins(self):
        parent = DkimKey("example.org", "s1", generate_key(True), subdomains=True)
        own = DkimKey("eu.example.org", "s1", generate_key(True))
        rt = self.rt(parent, own)
        assert keys_for(rt, "support@eu.example.org") == [own]


class TestStageLog:
    """What the DKIM stage writes into the message's communication log."""

    @staticmethod
    def run(from_email: str, *keys: DkimKey):
        from email import message_from_bytes
        from email.policy import compat32
        from types import SimpleNamespace

        from gateway.outbound.context import OutboundContext
        from gateway.outbound.dkim import dkim_stage

        table: dict[str, list[DkimKey]] = {}
        for k in keys:
            table.setdefault(k.domain, []).append(k)
        ctx = OutboundContext(mail_from=from_email, recipients=["cust@customer.test"],
                              raw=MSG)
        ctx.msg = message_from_bytes(MSG.replace(b"support@example.org",
                                                 from_email.encode()), policy=compat32)
        ctx.from_email = from_email
        dkim_stage(ctx, SimpleNamespace(dkim=table))
        return ctx, [(e.priority, e.key, e.value) for e in ctx.log.entries]

    def test_signed_names_the_selector(self):
        """A signed message's log names selector, domain and algorithm."""
        ctx, entries = self.run("support@example.org",
                                DkimKey("example.org", "s1", generate_key(True)))
        assert ctx.data.startswith(b"DKIM-Signature:")
        assert entries == [("Info", "DKIM", "signed with s1._domainkey.example.org "
                                            "(ed25519-sha256)")]

    def test_unsigned_says_why(self):
        """With [[dkim]] keys configured, a message whose From domain has none goes out
        unsigned and its log says so, naming the domain (as OpenDKIM's 'no signing
        domain match'); without any [[dkim]] nothing is logged."""
        ctx, entries = self.run("support@other.test",
                                DkimKey("example.org", "s1", generate_key(True)))
        assert b"DKIM-Signature" not in ctx.data
        assert entries == [("Info", "DKIM", "not signed: no [[dkim]] key for other.test "
                                            "(the From domain)")]
        ctx, entries = self.run("support@other.test")
        assert b"DKIM-Signature" not in ctx.data and entries == []


class TestInternationalisedDomain:
    """A [[dkim]] domain given in Unicode signs and is published by its A-labels."""

    @pytest.fixture
    def table(self, make_confdir, tmp_path: Path):
        from gateway.outbound.dkim import load_keys

        key = tmp_path / "k.pem"
        key.write_bytes(key_pem(generate_key(True)))
        key.chmod(0o600)
        conf = make_confdir({"40-dkim.toml": f'[[dkim]]\ndomain = "Exämple.org"\n'
                                             f'selector = "s1"\nkey_file = "{key}"\n'
                                             f'[[dkim]]\ndomain = "xn--bcher-kva.example"\n'
                                             f'selector = "s1"\nkey_file = "{key}"\n'})
        return load_keys(load_config(conf))

    def test_signature_names_the_a_label_domain(self, table):
        """d= is the A-label form (RFC 6376 3.5), and the signature verifies against the
        record published under that name."""
        from types import SimpleNamespace

        rt = SimpleNamespace(dkim=table)
        keys = keys_for(rt, "support@exämple.org")
        assert [k.domain for k in keys] == ["xn--exmple-cua.org"]
        msg = MSG.replace(b"support@example.org", "support@exämple.org".encode())
        signed = sign(msg, keys)
        assert b"d=xn--exmple-cua.org;" in signed
        record = dns_record(keys[0].key).encode()
        assert verify(signed, lambda name, timeout=5: record
                      if name == b"s1._domainkey.xn--exmple-cua.org." else None)

    def test_from_domain_in_either_form_finds_the_key(self, table):
        """A From domain written in A-labels finds the key configured in Unicode, and
        the other way round."""
        from types import SimpleNamespace

        rt = SimpleNamespace(dkim=table)
        assert keys_for(rt, "support@xn--exmple-cua.org") == keys_for(rt, "support@exämple.org")
        assert len(keys_for(rt, "support@xn--exmple-cua.org")) == 1
        assert len(keys_for(rt, "support@Bücher.example")) == 1

    def test_zone_line_uses_a_labels(self):
        """The zone-file line keygen prints names the A-label domain (a zone file holds no
        Unicode names)."""
        from gateway.outbound.dkim import zone_line

        line = zone_line("exämple.org", "s1", "v=DKIM1; k=ed25519; p=AAAA")
        assert line.startswith("s1._domainkey.xn--exmple-cua.org. IN TXT"), line


class TestFoldLongLines:
    def test_long_line_folded_at_whitespace_and_still_verifies(self):
        """A header line over 998 octets is folded at whitespace; the body is untouched."""
        from gateway.outbound.headers import fold_long_lines

        long_cc = b"Cc: " + b", ".join(b"p%d@customer.test" % i for i in range(80))
        msg = MSG.replace(b"Subject:", long_cc + b"\r\nX-Token: " + b"t" * 1200
                          + b"\r\nSubject:")
        folded = fold_long_lines(msg)
        lines = folded.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        # the token has no whitespace to fold it at: it stays one long word
        assert [ln for ln in lines if len(ln) > 998] == [b" " + b"t" * 1200]
        assert folded.replace(b"\r\n ", b" ") == msg
        k = DkimKey("example.org", "s1", generate_key(True))
        assert verify(sign(folded, [k]), dns_for(k))

    def test_short_lines_unchanged(self):
        """A message whose lines are all short comes back as the same object."""
        from gateway.outbound.headers import fold_long_lines

        assert fold_long_lines(MSG) is MSG


def _msg(head: bytes, body: bytes):
    from email import message_from_bytes
    from email.policy import compat32

    return message_from_bytes(head + b"\r\n" + body, policy=compat32)


HEAD_8BIT = (b"From: support@example.org\r\nTo: cust@customer.test\r\nSubject: Bestellung\r\n"
             b"MIME-Version: 1.0\r\n")


class TestSevenBitBody:
    def test_8bit_text_becomes_quoted_printable_with_the_same_text(self):
        """An 8-bit text part is re-encoded quoted-printable; it decodes to the same text."""
        from email import message_from_bytes
        from email.policy import compat32

        from gateway.outbound.dkim import seven_bit_body
        from gateway.outbound.rewrite import serialize

        text = "Grüße aus Köln,\r\nIhre Bestellung ist unterwegs. " + "ä" * 60 + "\r\n"
        msg = _msg(HEAD_8BIT + b"Content-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n", text.encode())
        out = serialize(seven_bit_body(msg))
        assert out.isascii() and b"Content-Transfer-Encoding: quoted-printable" in out
        assert max(len(ln) for ln in out.split(b"\r\n")) <= 78
        back = message_from_bytes(out, policy=compat32)
        assert back.get_payload(decode=True).decode("utf-8").replace("\r\n", "\n") \
            == text.replace("\r\n", "\n")

    def test_8bit_binary_part_becomes_base64(self):
        """A non-text part sent 8-bit is re-encoded base64, its bytes unchanged."""
        from email import message_from_bytes
        from email.policy import compat32

        from gateway.outbound.dkim import seven_bit_body
        from gateway.outbound.rewrite import serialize

        blob = bytes(range(128, 256)) * 2
        body = (b"--b\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n--b\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n"
                b"\r\n" + blob + b"\r\n--b--\r\n")
        out = serialize(seven_bit_body(_msg(
            HEAD_8BIT + b'Content-Type: multipart/mixed; boundary="b"\r\n', body)))
        assert out.isascii()
        parts = message_from_bytes(out, policy=compat32).get_payload()
        assert parts[1]["Content-Transfer-Encoding"] == "base64"
        assert parts[1].get_payload(decode=True) == blob
        assert parts[0].get_payload() == "plain ascii"

    def test_non_mime_8bit_body_gets_mime_headers(self):
        """A body without MIME headers that has 8-bit bytes is declared UTF-8 text and
        re-encoded."""
        from gateway.outbound.dkim import seven_bit_body
        from gateway.outbound.rewrite import serialize

        head = b"From: support@example.org\r\nTo: cust@customer.test\r\nSubject: x\r\n"
        out = serialize(seven_bit_body(_msg(head, "Grüße\r\n".encode())))
        assert out.isascii()
        assert b"MIME-Version: 1.0" in out and b'charset="utf-8"' in out
        assert b"Gr=C3=BC=C3=9Fe" in out

    def test_7bit_lines_over_998_octets_are_re_encoded(self):
        """A 7-bit part with a line over 998 octets (RFC 5322 2.1.1) is re-encoded, text
        quoted-printable and the rest base64, so no relay has to break the line; the
        content is unchanged. A message without MIME headers gets them."""
        from email import message_from_bytes
        from email.policy import compat32

        from gateway.outbound.dkim import seven_bit_body
        from gateway.outbound.rewrite import serialize

        html = "<p>" + "Ihre Bestellung ist unterwegs. " * 40 + "</p>\r\n"
        blob = b'{"items": [' + b"1, " * 500 + b"2]}"
        body = (b"--b\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n" + html.encode()
                + b"--b\r\nContent-Type: application/json\r\n"
                b"Content-Transfer-Encoding: 7bit\r\n\r\n" + blob + b"\r\n--b--\r\n")
        out = serialize(seven_bit_body(_msg(
            HEAD_8BIT + b'Content-Type: multipart/mixed; boundary="b"\r\n', body)))
        assert max(len(ln) for ln in out.split(b"\r\n")) <= 78
        parts = message_from_bytes(out, policy=compat32).get_payload()
        assert parts[0]["Content-Transfer-Encoding"] == "quoted-printable"
        assert parts[0].get_payload(decode=True).decode().replace("\r\n", "\n") \
            == html.rstrip()      # the last line break belongs to the boundary
        assert parts[0].get_param("charset") == "us-ascii"
        assert parts[1]["Content-Transfer-Encoding"] == "base64"
        assert parts[1].get_payload(decode=True) == blob

        head = b"From: support@example.org\r\nTo: cust@customer.test\r\nSubject: x\r\n"
        out = serialize(seven_bit_body(_msg(head, html.encode())))
        assert max(len(ln) for ln in out.split(b"\r\n")) <= 78
        assert b"MIME-Version: 1.0" in out and b"quoted-printable" in out

    def test_signed_parts_and_ascii_messages_are_left_alone(self):
        """Inside multipart/signed nothing is re-encoded (it would break that signature);
        an all-ASCII message serializes byte for byte as before."""
        from gateway.outbound.dkim import seven_bit_body
        from gateway.outbound.rewrite import serialize

        signed = (b"--s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Transfer-Encoding: 8bit\r\n\r\n" + "Grüße\r\n".encode()
                  + b"--s\r\nContent-Type: application/pgp-signature\r\n\r\nSIG\r\n--s--\r\n")
        head = HEAD_8BIT + (b'Content-Type: multipart/signed; protocol="application/pgp-'
                            b'signature"; micalg=pgp-sha256; boundary="s"\r\n')
        assert serialize(seven_bit_body(_msg(head, signed))) == serialize(_msg(head, signed))
        assert serialize(seven_bit_body(_msg(MSG.partition(b"\r\n\r\n")[0] + b"\r\n",
                                             b"Hello  there \r\n"))) \
            == serialize(_msg(MSG.partition(b"\r\n\r\n")[0] + b"\r\n", b"Hello  there \r\n"))


class TestConfiguredNames:
    """[[dkim]] domain and selector are checked as `dkim keygen` checks them."""

    @pytest.fixture
    def key_file(self, tmp_path: Path) -> Path:
        p = tmp_path / "k.pem"
        p.write_bytes(key_pem(generate_key(True)))
        p.chmod(0o600)
        return p

    @pytest.mark.parametrize(("domain", "selector", "key", "words"), [
        ("example.org", "bad sel", "selector", "'bad sel' is not a selector"),
        ("example.org", "s1;h=x", "selector", "is not a selector"),
        ("example.org", "s1.", "selector", "is not a selector"),
        ("example.org", "", "selector", "is not a selector"),
        ("example.org", "-s1", "selector", "is not a selector"),
        ("bad domain", "s1", "domain", "'bad domain' is not a domain name"),
        ("example..org", "s1", "domain", "is not a domain name"),
        ('example.org"; x=', "s1", "domain", "is not a domain name"),
        ("localhost", "s1", "domain", "is not a domain name"),
    ])
    def test_name_dns_cannot_hold_is_refused(self, make_confdir, key_file, domain, selector,
                                             key, words):
        """A selector or domain that is no DNS name (it would be written into s= or d= of
        every signature) fails `check` with the file, the key and the reason."""
        conf = make_confdir({"40-dkim.toml": f'[[dkim]]\ndomain = {json.dumps(domain)}\n'
                                             f'selector = {json.dumps(selector)}\n'
                                             f'key_file = "{key_file}"\n'})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        errs = [str(e) for e in exc.value.errors]
        assert len(errs) == 1, errs
        assert errs[0].startswith(f"{conf / '40-dkim.toml'}: dkim[0].{key}: "), errs
        assert words in errs[0], errs

    def test_rsa_key_under_1024_bits_is_refused(self, make_confdir, tmp_path):
        """An RSA key shorter than 1024 bits (RFC 8301 3.2: verifiers refuse it) fails
        `check` with its size; a 1024-bit one passes."""
        for bits in (512, 1024):
            key = tmp_path / f"k{bits}.pem"
            subprocess.run(["openssl", "genrsa", "-out", str(key), str(bits)], check=True,
                           capture_output=True)
            key.chmod(0o600)
        conf = make_confdir({"40-dkim.toml": "".join(
            f'[[dkim]]\ndomain = "example.org"\nselector = "s{bits}"\n'
            f'key_file = "{tmp_path}/k{bits}.pem"\n' for bits in (512, 1024))})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        errs = [str(e) for e in exc.value.errors]
        assert errs == [f"{conf / '40-dkim.toml'}: dkim[0].key_file: {tmp_path}/k512.pem: "
                        "an RSA key of 512 bits; DKIM needs at least 1024 (RFC 8301), "
                        "2048 is recommended (deskgate dkim keygen writes 2048)"], errs

    def test_unusable_key_file_is_named_with_what_is_wrong(self, make_confdir, tmp_path):
        """A key file that is no PEM key, or one encrypted with a passphrase, fails `check`
        with a reason an administrator can act on (not the library's words)."""
        junk, enc = tmp_path / "junk.pem", tmp_path / "enc.pem"
        junk.write_text("p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n")
        subprocess.run(["openssl", "genrsa", "-aes256", "-passout", "pass:x", "-out",
                        str(enc), "2048"], check=True, capture_output=True)
        for f in (junk, enc):
            f.chmod(0o600)
        conf = make_confdir({"40-dkim.toml": "".join(
            f'[[dkim]]\ndomain = "example.org"\nselector = "{f.stem}"\nkey_file = "{f}"\n'
            for f in (junk, enc))})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        errs = [str(e) for e in exc.value.errors]
        where = f"{conf / '40-dkim.toml'}"
        assert errs == [
            f"{where}: dkim[0].key_file: {junk}: not a PEM private key (RSA or Ed25519, "
            "such as `deskgate dkim keygen` or opendkim-genkey write)",
            f"{where}: dkim[1].key_file: {enc}: encrypted with a passphrase, which deskgate "
            f"cannot give; write it unencrypted (openssl pkey -in {enc} -out NEW.pem), "
            "owner-only"], errs

    def test_check_warns_of_keys_receivers_may_not_verify(self, make_confdir, tmp_path):
        """`check` passes but warns: a domain signed with Ed25519 only (receivers without
        RFC 8463 see it unsigned), an RSA key under 2048 bits (RFC 8301 recommends
        2048) or over 4096 (verifiers need not go beyond)."""
        from gateway.outbound.dkim import dkim_warnings

        keys = {}
        for name, bits in (("ed", 0), ("r1024", 1024), ("r2048", 2048), ("r4160", 4160)):
            keys[name] = tmp_path / f"{name}.pem"
            if bits:
                subprocess.run(["openssl", "genrsa", "-out", str(keys[name]), str(bits)],
                               check=True, capture_output=True)
            else:
                keys[name].write_bytes(key_pem(generate_key(True)))
            keys[name].chmod(0o600)
        entries = [("only-ed.example", "ed"), ("both.example", "ed"),
                   ("both.example", "r2048"), ("small.example", "r1024"),
                   ("big.example", "r4160")]
        conf = make_confdir({"40-dkim.toml": "".join(
            f'[[dkim]]\ndomain = "{d}"\nselector = "{k}"\nkey_file = "{keys[k]}"\n'
            for d, k in entries)})
        assert dkim_warnings(load_config(conf)) == [
            ("dkim[0].key_file", "only-ed.example is signed with Ed25519 alone: receivers "
             "that do not verify Ed25519 (RFC 8463) see its mail as unsigned; add an RSA "
             "key (deskgate dkim keygen only-ed.example SELECTOR)"),
            ("dkim[3].key_file", f"{keys['r1024']}: an RSA key of 1024 bits; RFC 8301 "
             "recommends 2048 (deskgate dkim keygen writes 2048)"),
            ("dkim[4].key_file", f"{keys['r4160']}: an RSA key of 4160 bits; verifiers "
             "need not check keys over 4096 bits (RFC 8301)")]

    def test_dns_names_are_accepted(self, make_confdir, key_file):
        """Dotted selectors with hyphens and an internationalised domain pass, as
        `dkim keygen` accepts them."""
        conf = make_confdir({"40-dkim.toml": f'[[dkim]]\ndomain = "exämple.org"\n'
                                             f'selector = "s-2026.a"\nkey_file = "{key_file}"\n'
                                             f'[[dkim]]\ndomain = "Example.ORG"\n'
                                             f'selector = "S1"\nkey_file = "{key_file}"\n'})
        assert [d.selector for d in load_config(conf).dkim] == ["s-2026.a", "S1"]

    @pytest.mark.parametrize(("first", "second"), [
        (("example.org", "s1"), ("example.org", "S1")),
        (("example.org", "Sel.A"), ("EXAMPLE.org", "sel.a")),
        (("exämple.org", "s1"), ("xn--exmple-cua.org", "s1")),
    ])
    def test_selector_listed_twice_whatever_its_case(self, make_confdir, key_file, first,
                                                     second):
        """The same selector of the same domain, spelt in another case (or the domain by
        its A-labels), is one DNS name listed twice: refused at the second entry."""
        conf = make_confdir({"40-dkim.toml": "".join(
            f'[[dkim]]\ndomain = "{d}"\nselector = "{s}"\nkey_file = "{key_file}"\n'
            for d, s in (first, second))})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        errs = [str(e) for e in exc.value.errors]
        assert errs == [f"{conf / '40-dkim.toml'}: dkim[1].selector: selector {second[1]!r} "
                        f"of {second[0]} is listed twice"], errs
