"""Outbound S/MIME and PGP through the real outbound pipeline, checked by openssl,
gpg and dkimpy as the recipient would check them."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
from email import message_from_bytes
from pathlib import Path

import dkim as dkimpy
import pytest

from gateway.app import Gateway
from gateway.crypto.inbound import first_part_bytes
from gateway.outbound.context import OutboundContext
from gateway.outbound.dkim import dns_record, generate_key, key_pem
from gateway.outbound.service import outbound_pipeline
from gateway.store.tables import AutoResponse, AutoResponseRequest, CommEntry
from tests.conftest import free_port
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, CryptoEnv, openssl
from tests.peers.ca import Issued

BODY = "Your ticket is solved. Grüße from the helpdesk.\nserver: done01\n"


def plain_text(data: bytes) -> str:
    """The decoded text of a plain (unencrypted, unsigned) outbound message."""
    return message_from_bytes(data).get_payload(decode=True).decode("utf-8")


def message(extra: str = "") -> bytes:
    return (f"From: {SUPPORT}\r\nTo: {CUSTOMER}\r\nSubject: solved\r\n{extra}"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            "\r\n").encode() + BODY.replace("\n", "\r\n").encode()


def submit(env: CryptoEnv, raw: bytes, rcpts: tuple[str, ...] = (CUSTOMER,),
           queue: str = "Support"):
    """Run the outbound pipeline (rewrite → crypto → dkim → queue); returns (result, bytes)."""
    from sqlalchemy import select

    from gateway.outbound.queue import OutboundMessage

    gw = Gateway(env.config)
    try:
        gw.prepare_store()
        ctx = OutboundContext(mail_from=SUPPORT, recipients=list(rcpts), raw=raw,
                              source="STDIN", account="test", trusted=True,
                              requested_queue=queue)
        res = asyncio.run(outbound_pipeline(gw).submit(ctx))
        data = b""
        if res.outbound_id:
            with gw.engine.connect() as conn:
                data = conn.execute(select(OutboundMessage.data).where(
                    OutboundMessage.id == res.outbound_id)).scalar_one()
        if res.article_id:
            from gateway.store.tables import Article

            with gw.engine.connect() as conn:
                art = conn.execute(select(Article.body, Article.crypto).where(
                    Article.id == res.article_id)).one()
            env.last_article = {"body": art.body, "crypto": art.crypto}
        return res, bytes(data)
    finally:
        gw.close()


@pytest.fixture
def with_customer_cert(crypto_env):
    sdir = crypto_env.root / "keys" / "smime"
    shutil.copy(crypto_env.customer.cert, sdir / f"{CUSTOMER}.pem")
    return crypto_env


@pytest.fixture
def dkim_env(crypto_env):
    """A DKIM key for example.org in the config; returns the dnsfunc for dkimpy."""
    key = generate_key()
    path = crypto_env.root / "keys" / "dkim" / "example.org.s1.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key_pem(key))
    path.chmod(0o600)
    (crypto_env.conf / "70-dkim.toml").write_text(
        f'[[dkim]]\ndomain = "example.org"\nselector = "s1"\nkey_file = "{path}"\n')
    crypto_env.reload()
    record = dns_record(key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"s1._domainkey.example.org." else None

    return dnsfunc


def write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


class TestSmimeOutbound:
    def test_signed_verifies_with_openssl(self, crypto_env, tmp_path):
        """sign=smime: multipart/signed sha-256 accepted by openssl smime and cms -verify."""
        res, data = submit(crypto_env, message("X-Deskgate-Sign: smime\r\n"))
        assert res.reply.code == 250, res.reply
        assert b"multipart/signed" in data and b"micalg=sha-256" in data
        assert b"X-Deskgate-Sign" not in data
        f = write(tmp_path, "out.eml", data)
        ca = str(crypto_env.ca.ca_path)
        r1 = openssl("smime", "-verify", "-in", str(f), "-CAfile", ca)
        r2 = openssl("cms", "-verify", "-in", str(f), "-CAfile", ca)
        assert b"Verification successful" in r1.stderr + r2.stderr
        inner = message_from_bytes(r1.stdout)
        assert BODY.split("\n")[0] in inner.get_payload(decode=True).decode("utf-8")

    def test_encrypted_decrypts_with_openssl(self, with_customer_cert, tmp_path):
        """encrypt=required: AES-256 enveloped-data that openssl smime/cms -decrypt opens."""
        env = with_customer_cert
        res, data = submit(env, message("X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 250, res.reply
        assert b"application/pkcs7-mime" in data and b"enveloped-data" in data
        assert b"helpdesk" not in data.split(b"\r\n\r\n", 1)[1]
        f = write(tmp_path, "out.eml", data)
        r1 = openssl("smime", "-decrypt", "-in", str(f), "-recip", str(env.customer.cert),
                     "-inkey", str(env.customer.key))
        r2 = openssl("cms", "-decrypt", "-in", str(f), "-recip", str(env.customer.cert),
                     "-inkey", str(env.customer.key))
        for out in (r1.stdout, r2.stdout):
            assert "Grüße" in message_from_bytes(out).get_payload(decode=True).decode("utf-8")
        printed = openssl("cms", "-cmsout", "-print", "-in", str(f)).stdout
        assert b"aes-256-cbc" in printed

    def test_sign_then_encrypt(self, with_customer_cert, tmp_path):
        """sign+encrypt: decrypt with the customer's key, then the inner signature verifies."""
        env = with_customer_cert
        res, data = submit(env, message("X-Deskgate-Sign: smime\r\n"
                                        "X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 250, res.reply
        f = write(tmp_path, "out.eml", data)
        dec = openssl("smime", "-decrypt", "-in", str(f), "-recip", str(env.customer.cert),
                      "-inkey", str(env.customer.key)).stdout
        g = write(tmp_path, "dec.eml", dec)
        r = openssl("smime", "-verify", "-in", str(g), "-CAfile", str(env.ca.ca_path))
        assert b"Verification successful" in r.stderr

    def test_required_without_certificate_refused(self, crypto_env):
        """encrypt=required and no certificate for the recipient: 5xx, nothing queued."""
        res, data = submit(crypto_env, message("X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 554 and res.reply.enhanced == "5.7.5"
        assert "encryption required" in res.reply.text and CUSTOMER in res.reply.text
        assert res.outbound_id is None and data == b""

    def test_required_with_expired_certificate_refused(self, crypto_env):
        """An expired recipient certificate is not used: refused, and the reply says expired."""
        old = crypto_env.ca.issue("Customer", emails=(CUSTOMER,), days=-1, not_before_days=10,
                                  filename="oldc")
        shutil.copy(old.cert, crypto_env.root / "keys" / "smime" / f"{CUSTOMER}.pem")
        res, _ = submit(crypto_env, message("X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 554 and "expired" in res.reply.text

    def test_opportunistic_without_certificate_sends_plain(self, crypto_env):
        """encrypt=opportunistic and no certificate: queued unencrypted (the log says why)."""
        res, data = submit(crypto_env, message("X-Deskgate-Encrypt: opportunistic\r\n"))
        assert res.reply.code == 250
        assert b"pkcs7" not in data and "Grüße" in plain_text(data)

    def test_dkim_verifies_after_sign_and_encrypt(self, with_customer_cert, dkim_env, tmp_path):
        """DKIM is applied after S/MIME: dkimpy verifies the final message."""
        res, data = submit(with_customer_cert, message("X-Deskgate-Sign: smime\r\n"
                                                       "X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 250
        assert data.startswith(b"DKIM-Signature:")
        assert dkimpy.DKIM(data).verify(dnsfunc=dkim_env)

    def test_dkim_signed_headers_stay_within_998_octets(self, crypto_env, dkim_env):
        """A long folded Subject (the ticket tag is added, which unfolds it) goes out
        folded again, every line within RFC 5322's 998 octets, so no relay has to break
        a signed line; dkimpy verifies the message, whose 8-bit body went quoted-printable."""
        words = " ".join(["=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_dem_Helpdesk?="] * 60)
        subject = "\r\n ".join(words[i:i + 500] for i in range(0, len(words), 500)).replace(
            "\r\n  ", "\r\n ")
        raw = message().replace(b"Subject: solved", b"Subject: " + subject.encode())
        res, data = submit(crypto_env, raw)
        assert res.reply.code == 250
        head = data.split(b"\r\n\r\n", 1)[0]
        assert max(len(line) for line in head.split(b"\r\n")) <= 998
        assert b"Gr=C3=BC=C3=9Fe_aus_dem_Helpdesk" in head
        assert data.isascii() and "Grüße" in plain_text(data)
        assert dkimpy.DKIM(data).verify(dnsfunc=dkim_env)


class TestQueuePolicy:
    def test_queue_sign_and_required_encrypt(self, with_customer_cert, tmp_path):
        """[[queue]] sign = smime, encrypt = required: signed+encrypted with the queue's key;
        the outgoing article shows the text as written and records the crypto."""
        env = with_customer_cert
        sec = env.ca.issue("Secure", emails=("secure@example.org",), filename="secure")
        sdir = env.root / "keys" / "smime"
        shutil.copy(sec.cert, sdir / "secure@example.org.pem")
        shutil.copy(sec.key, sdir / "secure@example.org.key")
        (sdir / "secure@example.org.key").chmod(0o600)
        (env.conf / "80-secure.toml").write_text(
            '[[queue]]\nname = "Secure"\naddress = "secure@example.org"\nsign = "smime"\n'
            'encrypt = "required"\n[[address]]\nemail = "secure@example.org"\n'
            'queue = "Secure"\n')
        env.reload()
        res, data = submit(env, message(), queue="Secure")
        assert res.reply.code == 250, res.reply
        assert b"From: secure@example.org" in data and b"enveloped-data" in data
        f = write(tmp_path, "out.eml", data)
        dec = openssl("smime", "-decrypt", "-in", str(f), "-recip", str(env.customer.cert),
                      "-inkey", str(env.customer.key)).stdout
        g = write(tmp_path, "dec.eml", dec)
        r = openssl("cms", "-verify", "-in", str(g), "-CAfile", str(env.ca.ca_path),
                    "-signer", str(tmp_path / "signer.pem"))
        assert b"Verification successful" in r.stderr
        assert b"secure@example.org" in openssl("x509", "-in", str(tmp_path / "signer.pem"),
                                                 "-noout", "-email").stdout
        assert "Grüße" in env.last_article["body"]
        assert env.last_article["crypto"]["encrypted"] is True
        assert env.last_article["crypto"]["signed"] is True

    def test_sign_with_expired_own_certificate_refused(self, crypto_env):
        """The queue's own certificate has expired: signing is refused, clearly, nothing sent."""
        old = crypto_env.ca.issue("Support", emails=(SUPPORT,), days=-1, not_before_days=10,
                                  filename="oldsup")
        sdir = crypto_env.root / "keys" / "smime"
        shutil.copy(old.cert, sdir / f"{SUPPORT}.pem")
        shutil.copy(old.key, sdir / f"{SUPPORT}.key")
        res, data = submit(crypto_env, message("X-Deskgate-Sign: smime\r\n"))
        assert res.reply.code == 554 and "expired" in res.reply.text and data == b""


class TestPgpOutbound:
    def test_signed_verifies_with_gpg(self, pgp_env, pgp_keys, tmp_path):
        """sign=pgp: RFC 3156 multipart/signed whose signature gpg --verify accepts."""
        res, data = submit(pgp_env, message("X-Deskgate-Sign: pgp\r\n"))
        assert res.reply.code == 250, res.reply
        msg = message_from_bytes(data)
        assert msg.get_content_type() == "multipart/signed"
        assert msg.get_param("protocol") == "application/pgp-signature"
        content = first_part_bytes(data, msg.get_boundary())
        sig = msg.get_payload()[1].get_payload(decode=True)
        cf, sf = write(tmp_path, "content", content), write(tmp_path, "sig.asc", sig)
        r = pgp_keys.customer.run("--status-fd", "1", "--verify", str(sf), str(cf))
        assert b"GOODSIG" in r.stdout and b"VALIDSIG" in r.stdout

    def test_encrypted_and_signed_decrypts_with_gpg(self, pgp_env, pgp_keys, tmp_path):
        """sign=pgp + encrypt=required: gpg --decrypt with the customer's key, good signature."""
        res, data = submit(pgp_env, message("X-Deskgate-Sign: pgp\r\n"
                                            "X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 250, res.reply
        msg = message_from_bytes(data)
        assert msg.get_content_type() == "multipart/encrypted"
        armored = msg.get_payload()[1].get_payload(decode=True)
        r = pgp_keys.customer.run("--status-fd", "2", "--decrypt", input=armored)
        assert b"GOODSIG" in r.stderr and b"DECRYPTION_OKAY" in r.stderr
        inner = message_from_bytes(r.stdout)
        assert "Grüße" in inner.get_payload(decode=True).decode("utf-8")

    def test_pgp_encrypt_only_roundtrip_inbound(self, pgp_env, pgp_keys, deliver):
        """What the gateway encrypts to itself (own key added) it can decrypt inbound."""
        res, data = submit(pgp_env, message("X-Deskgate-Encrypt: required\r\n"))
        assert res.reply.code == 250
        d = deliver(data.replace(b"To: " + CUSTOMER.encode(), b"To: " + SUPPORT.encode()))
        assert d.crypto["decrypted"] and "Grüße" in d.article["body"]

    def test_sign_without_secret_key_refused(self, crypto_env, pgp_keys):
        """sign=pgp and no secret key for the queue address: refused with a clear 5xx."""
        crypto_env.stores.pgp.import_(pgp_keys.customer_public)
        res, _ = submit(crypto_env, message("X-Deskgate-Sign: pgp\r\n"))
        assert res.reply.code == 554 and "no usable PGP secret key" in res.reply.text


SECURE_QUEUE = ('[[queue]]\nname = "Secure"\naddress = "secure@example.org"\n'
                'encrypt = "required"\nauto_response_new = "Ticket {ticket_number} received."\n'
                '[[address]]\nemail = "secure@example.org"\nqueue = "Secure"\n')


def outbound_rows(env: CryptoEnv) -> list[bytes]:
    from sqlalchemy import create_engine, select

    from gateway.store.tables import OutboundMessage

    eng = create_engine(env.config.database_url)
    with eng.connect() as conn:
        rows = [bytes(d) for (d,) in conn.execute(select(OutboundMessage.data)).all()]
    eng.dispose()
    return rows


class TestAutoResponse:
    def incoming(self) -> bytes:
        return (f"From: {CUSTOMER}\r\nTo: secure@example.org\r\nSubject: help\r\n"
                "Message-ID: <ar1@customer.test>\r\n\r\nplease help\r\n").encode()

    def test_required_without_key_stores_mail_and_skips_response(self, crypto_env, deliver):
        """encrypt=required queue, customer without certificate: the customer's mail is
        stored (not quarantined) and no auto-response is sent in the clear."""
        (crypto_env.conf / "80-secure.toml").write_text(SECURE_QUEUE)
        crypto_env.reload()
        d = deliver(self.incoming(), rcpts=("secure@example.org",))
        assert d.outcome.action == "new" and d.ticket["queue"] == "Secure"
        assert outbound_rows(crypto_env) == []
        # the sender logged why, and the refused auto-response does not count for the limit
        assert table_values(crypto_env, AutoResponse.id) == []
        assert table_values(crypto_env, AutoResponseRequest.id) == []
        warns = [v for v in table_values(crypto_env, CommEntry.value)
                 if v.startswith("no auto-response (new)")]
        assert len(warns) == 1 and "encrypt" in warns[0].lower(), warns

    def test_required_with_key_sends_encrypted_response(self, with_customer_cert, deliver,
                                                         tmp_path):
        """With the customer's certificate the auto-response is queued S/MIME-encrypted."""
        env = with_customer_cert
        (env.conf / "80-secure.toml").write_text(SECURE_QUEUE)
        env.reload()
        d = deliver(self.incoming(), rcpts=("secure@example.org",))
        rows = outbound_rows(env)
        assert len(rows) == 1 and b"enveloped-data" in rows[0]
        f = write(tmp_path, "ar.eml", rows[0])
        dec = openssl("smime", "-decrypt", "-in", str(f), "-recip", str(env.customer.cert),
                      "-inkey", str(env.customer.key)).stdout
        assert d.ticket["number"].encode() in message_from_bytes(dec).get_payload(decode=True)


OTHER = "other@partner.test"


def queued(env: CryptoEnv) -> list[tuple[list[str], bytes, int | None]]:
    """Every outbound row in id order: (its recipients, its bytes, its article)."""
    from sqlalchemy import create_engine, select

    from gateway.store.tables import OutboundMessage, OutboundRecipient

    eng = create_engine(env.config.database_url)
    with eng.connect() as conn:
        rows = conn.execute(select(OutboundMessage.id, OutboundMessage.data,
                                   OutboundMessage.article_id).order_by(OutboundMessage.id)).all()
        rcpts = conn.execute(select(OutboundRecipient.outbound_id, OutboundRecipient.address)
                             .order_by(OutboundRecipient.id)).all()
    eng.dispose()
    return [([a for o, a in rcpts if o == r.id], bytes(r.data), r.article_id) for r in rows]


def table_values(env: CryptoEnv, column) -> list:
    from sqlalchemy import create_engine, select

    eng = create_engine(env.config.database_url)
    with eng.connect() as conn:
        values = list(conn.execute(select(column)).scalars())
    eng.dispose()
    return values


def with_other_cert(env: CryptoEnv) -> Issued:
    """An S/MIME certificate for OTHER in the store (the correspondent keeps the key)."""
    other = env.ca.issue("Other", emails=(OTHER,), filename="other")
    shutil.copy(other.cert, env.root / "keys" / "smime" / f"{OTHER}.pem")
    return other


def smime_decrypt(tmp_path: Path, data: bytes, who: Issued) -> bytes:
    f = write(tmp_path, "enc.eml", data)
    return openssl("smime", "-decrypt", "-in", str(f), "-recip", str(who.cert),
                   "-inkey", str(who.key)).stdout


class TestPerRecipient:
    def test_opportunistic_encrypts_for_those_with_a_certificate(
            self, with_customer_cert, dkim_env, tmp_path):
        """One recipient with a certificate, one without: an encrypted copy only to the
        first, a plain copy only to the second, both DKIM-signed, one article, and the
        log says who got which."""
        from gateway.store.tables import Article, CommEntry

        env = with_customer_cert
        res, _ = submit(env, message(f"Cc: {OTHER}\r\nX-Deskgate-Encrypt: opportunistic\r\n"),
                        rcpts=(CUSTOMER, OTHER))
        assert res.reply.code == 250, res.reply
        (enc_to, enc, art1), (plain_to, plain, art2) = queued(env)
        assert enc_to == [CUSTOMER] and plain_to == [OTHER]
        assert list(res.outbound_ids) == sorted(res.outbound_ids) and len(res.outbound_ids) == 2
        assert res.outbound_id == res.outbound_ids[0]
        assert b"enveloped-data" in enc and "Grüße".encode() not in enc
        dec = message_from_bytes(smime_decrypt(tmp_path, enc, env.customer))
        assert "Grüße" in dec.get_payload(decode=True).decode("utf-8")
        assert b"pkcs7" not in plain and "Grüße" in plain_text(plain)
        for data in (enc, plain):
            assert data.startswith(b"DKIM-Signature:")
            assert dkimpy.DKIM(data).verify(dnsfunc=dkim_env)
        assert table_values(env, Article.id) == [res.article_id] == [art1] == [art2]
        assert "Grüße" in env.last_article["body"]
        crypto = env.last_article["crypto"]
        assert crypto["encrypted"] is False and crypto["method"] == "smime"
        assert [(c["recipients"], c["encrypted"]) for c in crypto["copies"]] == \
            [([CUSTOMER], True), ([OTHER], False)]
        logged = " | ".join(table_values(env, CommEntry.value))
        assert (f"encrypted (smime) for {CUSTOMER}; plain for {OTHER} (no certificate)"
                in logged)

    def test_opportunistic_plain_copy_is_still_signed(self, with_customer_cert, tmp_path):
        """sign=smime: the plain copy carries the signature, and the encrypted copy holds
        the same signed entity."""
        env = with_customer_cert
        res, _ = submit(env, message("X-Deskgate-Sign: smime\r\n"
                                     "X-Deskgate-Encrypt: opportunistic\r\n"),
                        rcpts=(CUSTOMER, OTHER))
        assert res.reply.code == 250, res.reply
        (enc_to, enc, _), (plain_to, plain, _) = queued(env)
        assert (enc_to, plain_to) == ([CUSTOMER], [OTHER])
        ca = str(env.ca.ca_path)
        signed = openssl("smime", "-verify", "-in", str(write(tmp_path, "p.eml", plain)),
                         "-CAfile", ca)
        assert b"Verification successful" in signed.stderr
        inner = write(tmp_path, "dec.eml", smime_decrypt(tmp_path, enc, env.customer))
        assert b"Verification successful" in openssl("smime", "-verify", "-in", str(inner),
                                                     "-CAfile", ca).stderr

    def test_smime_and_pgp_recipients_get_a_copy_each(self, pgp_env, pgp_keys, tmp_path):
        """One recipient with only a PGP key, one with only a certificate, sign=pgp and
        encrypt=required: a PGP copy (signed inside) that gpg decrypts, and an S/MIME copy
        that openssl decrypts to the PGP-signed entity; nothing goes plain."""
        env = pgp_env
        other = with_other_cert(env)
        res, _ = submit(env, message(f"Cc: {OTHER}\r\nX-Deskgate-Sign: pgp\r\n"
                                     "X-Deskgate-Encrypt: required\r\n"),
                        rcpts=(CUSTOMER, OTHER))
        assert res.reply.code == 250, res.reply
        (pgp_to, pgp_copy, _), (smime_to, smime_copy, _) = queued(env)
        assert (pgp_to, smime_to) == ([CUSTOMER], [OTHER])
        msg = message_from_bytes(pgp_copy)
        assert msg.get_content_type() == "multipart/encrypted"
        r = pgp_keys.customer.run("--status-fd", "2", "--decrypt",
                                  input=msg.get_payload()[1].get_payload(decode=True))
        assert b"GOODSIG" in r.stderr and b"DECRYPTION_OKAY" in r.stderr
        assert "Grüße" in message_from_bytes(r.stdout).get_payload(decode=True).decode("utf-8")
        assert b"enveloped-data" in smime_copy
        dec = smime_decrypt(tmp_path, smime_copy, other)
        inner = message_from_bytes(dec)
        assert inner.get_content_type() == "multipart/signed"
        assert inner.get_param("protocol") == "application/pgp-signature"
        content = write(tmp_path, "content", first_part_bytes(dec, inner.get_boundary()))
        sig = write(tmp_path, "sig.asc", inner.get_payload()[1].get_payload(decode=True))
        v = pgp_keys.customer.run("--status-fd", "1", "--verify", str(sig), str(content))
        assert b"GOODSIG" in v.stdout
        assert env.last_article["crypto"]["encrypted"] is True
        assert env.last_article["crypto"]["method"] == "pgp+smime"

    def test_required_with_one_recipient_without_key_refused(self, with_customer_cert):
        """encrypt=required refuses the whole message when one recipient has no key; the
        reply names that recipient only; nothing is queued."""
        env = with_customer_cert
        res, _ = submit(env, message("X-Deskgate-Encrypt: required\r\n"),
                        rcpts=(CUSTOMER, OTHER))
        assert res.reply.code == 554 and res.reply.enhanced == "5.7.5"
        assert f"no usable key for {OTHER} (no certificate)" in res.reply.text
        assert CUSTOMER not in res.reply.text
        assert res.outbound_id is None and res.outbound_ids == () and queued(env) == []

    def test_both_copies_reach_the_smarthost(self, with_customer_cert, run_gateway, tmp_path):
        """Submitted over SMTP and relayed: the smarthost gets the encrypted copy for one
        recipient and the plain one for the other; the article becomes sent."""
        from gateway.store.tables import Article
        from tests.integration.outbound.conftest import (
            outbound_toml,
            statuses,
            submission_port,
            wait_for,
        )
        from tests.peers.smarthost import AuthSink

        env = with_customer_cert
        with AuthSink() as sink:
            (env.conf / "40-outbound.toml").write_text(
                outbound_toml(sink.port, submission_port=free_port()))
            env.reload()
            rg = run_gateway(env.config)
            with smtplib.SMTP("127.0.0.1", submission_port(env.config)) as s:
                reply = s.send_message(message_from_bytes(message(
                    f"Cc: {OTHER}\r\nX-Deskgate-Queue: Support\r\n"
                    "X-Deskgate-Encrypt: opportunistic\r\n")),
                    from_addr=SUPPORT, to_addrs=[CUSTOMER, OTHER])
            assert reply == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"], what="delivery")
            got = {tuple(m.rcpts): m.data for m in sink.received}
            assert set(got) == {(CUSTOMER,), (OTHER,)}
            dec = message_from_bytes(smime_decrypt(tmp_path, got[CUSTOMER,], env.customer))
            assert "Grüße" in dec.get_payload(decode=True).decode("utf-8")
            assert b"pkcs7" not in got[OTHER,] and b"Subject: [Ticket#" in got[OTHER,]
            assert table_values(env, Article.transmission_status) == ["sent"]
