"""Inbound S/MIME against messages produced by the openssl command line."""

from __future__ import annotations

from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from tests.integration.crypto.crypto_helpers import (
    CUSTOMER,
    SUPPORT,
    CryptoEnv,
    crlf,
    openssl,
)
from tests.peers.lmtp import LmtpClient

HEAD = (f"From: Customer <{CUSTOMER}>\r\nTo: {SUPPORT}\r\nSubject: secret printer\r\n"
        "Message-ID: <{mid}@customer.test>\r\n")


def inner_entity() -> bytes:
    """A multipart entity with a text body and an attachment (the thing that gets protected)."""
    m = MIMEMultipart()
    m.attach(MIMEText("The printer on floor 3 says PC LOAD LETTER.\nserver: print01\n"))
    att = MIMEApplication(b"%PDF-1.4 fake\n", "pdf")
    att.add_header("Content-Disposition", "attachment", filename="invoice.pdf")
    m.attach(att)
    return crlf(m.as_bytes())


def with_headers(mid: str, smime_out: bytes) -> bytes:
    """openssl prints MIME headers + body; put the mail headers in front."""
    return HEAD.format(mid=mid).encode() + crlf(smime_out)


def encrypt(env: CryptoEnv, tmp: Path, tool: str, *extra: str) -> bytes:
    src = tmp / "inner.eml"
    src.write_bytes(inner_entity())
    out = openssl(tool, "-encrypt", *extra, "-in", str(src), str(env.support.cert)).stdout
    return out


def sign(env: CryptoEnv, tmp: Path, data: bytes, *extra: str, signer: Path | None = None,
         key: Path | None = None) -> bytes:
    src = tmp / "tosign.eml"
    src.write_bytes(data)
    return openssl("smime", "-sign", *extra, "-in", str(src), "-signer",
                   str(signer or env.customer.cert), "-inkey",
                   str(key or env.customer.key)).stdout


class TestSmimeDecrypt:
    def test_openssl_smime_encrypt_decrypted(self, crypto_env, deliver, tmp_path):
        """openssl smime -encrypt (3DES, x-pkcs7-mime) to the queue cert: decrypted, right queue."""
        raw = with_headers("e1", encrypt(crypto_env, tmp_path, "smime"))
        assert b"application/x-pkcs7-mime" in raw
        d = deliver(raw)
        assert d.ticket["queue"] == "Support"
        assert d.crypto["encrypted"] and d.crypto["decrypted"] and d.crypto["method"] == "smime"
        assert d.crypto["error"] == ""
        assert "PC LOAD LETTER" in d.article["body"]
        assert [a["filename"] for a in d.article["attachments"]] == ["invoice.pdf"]
        assert "PC LOAD LETTER" in d.params["BodyDecrypted"]
        assert "server: print01" in d.body_seen
        # the filters saw the plaintext, as Body and as X-Deskgate-BodyDecrypted
        assert d.ticket["dynamic_fields"] == {"Server": "print01", "Printer": "jammed"}
        assert d.thread.startswith("pipeline")     # decrypted on the worker pool, not the loop

    def test_openssl_cms_encrypt_aes256_decrypted(self, crypto_env, deliver, tmp_path):
        """openssl cms -encrypt -aes256 (application/pkcs7-mime) is decrypted in-process."""
        raw = with_headers("e2", encrypt(crypto_env, tmp_path, "cms", "-aes256"))
        assert b"application/pkcs7-mime" in raw
        d = deliver(raw)
        assert d.crypto["decrypted"] and "PC LOAD LETTER" in d.article["body"]
        assert d.ticket["queue"] == "Support"

    def test_openssl_cms_encrypt_default_cipher_decrypted(self, crypto_env, deliver, tmp_path):
        """openssl cms -encrypt with its default cipher is decrypted too."""
        d = deliver(with_headers("e3", encrypt(crypto_env, tmp_path, "cms")))
        assert d.crypto["decrypted"] and "PC LOAD LETTER" in d.article["body"]

    def test_store_decrypted_body_false_keeps_encrypted_form(self, crypto_env, deliver,
                                                               tmp_path):
        """store_decrypted_body = false: filters see the text, the article keeps the p7m only."""
        (crypto_env.conf / "60-nostore.toml").write_text(
            "[crypto]\nstore_decrypted_body = false\n")
        crypto_env.reload()
        d = deliver(with_headers("e4", encrypt(crypto_env, tmp_path, "cms", "-aes256")))
        assert d.crypto["decrypted"]
        assert "PC LOAD LETTER" not in d.article["body"]
        assert [a["filename"] for a in d.article["attachments"]] == ["smime.p7m"]
        assert "PC LOAD LETTER" in d.body_seen

    def test_missing_key_message_kept_with_error(self, crypto_env, deliver, tmp_path):
        """Encrypted to a certificate the gateway has no key for: stored, error + Warn logged."""
        other = crypto_env.ca.issue("Other", emails=("other@elsewhere.test",), filename="o")
        src = tmp_path / "inner.eml"
        src.write_bytes(inner_entity())
        out = openssl("cms", "-encrypt", "-aes256", "-in", str(src), str(other.cert)).stdout
        d = deliver(with_headers("e5", out))
        assert d.outcome.replies[0].code == 250 and d.outcome.action == "new"
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert "not encrypted to the certificate of support@example.org" in d.crypto["error"]
        assert [a["filename"] for a in d.article["attachments"]] == ["smime.p7m"]
        assert "Warn Crypto" in _log_entries(crypto_env)

    def test_wrong_stored_passphrase_message_kept(self, crypto_env, deliver, tmp_path):
        """The key's passphrase file is wrong: stored undecrypted, the error says passphrase."""
        from cryptography.hazmat.primitives import serialization

        from gateway.crypto.keystore import load_private_key

        sdir = crypto_env.root / "keys" / "smime"
        key = load_private_key(crypto_env.support.key.read_bytes(), None, "k")
        (sdir / f"{SUPPORT}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right")))
        pp = sdir / f"{SUPPORT}.passphrase"
        pp.write_text("wrong\n")
        pp.chmod(0o600)
        d = deliver(with_headers("e8", encrypt(crypto_env, tmp_path, "cms", "-aes256")))
        assert d.outcome.action == "new" and d.outcome.replies[0].code == 250
        assert d.crypto["encrypted"] and not d.crypto["decrypted"]
        assert "wrong passphrase" in d.crypto["error"]
        pp.write_text("right\n")
        d2 = deliver(with_headers("e9", encrypt(crypto_env, tmp_path, "cms", "-aes256")))
        assert d2.crypto["decrypted"]

    def test_encrypted_and_signed_inside(self, crypto_env, deliver, tmp_path):
        """Signed by the customer, then encrypted: decrypted and the inner signature verified."""
        signed = sign(crypto_env, tmp_path, inner_entity())
        src = tmp_path / "signed.eml"
        src.write_bytes(signed)
        out = openssl("smime", "-encrypt", "-aes256", "-in", str(src),
                      str(crypto_env.support.cert)).stdout
        d = deliver(with_headers("e6", out))
        c = d.crypto
        assert c["decrypted"] and c["signed"] and c["signature_valid"] is True
        assert c["signer"] == CUSTOMER
        assert "PC LOAD LETTER" in d.article["body"]

    def test_via_lmtp(self, crypto_env, run_gateway, tmp_path):
        """An encrypted message over LMTP is answered 250 after commit and stored decrypted."""
        from gateway.cli.tickets import ticket_detail

        rg = run_gateway(crypto_env.config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        raw = with_headers("e7", encrypt(crypto_env, tmp_path, "cms", "-aes256"))
        _, data = c.transaction(CUSTOMER, [SUPPORT], raw)
        c.close()
        assert data[0][0] == 250
        with rg.gateway.engine.connect() as conn:
            from sqlalchemy import select

            from gateway.store.tables import Ticket
            number = conn.execute(select(Ticket.number)).scalar_one()
            art = ticket_detail(conn, number)["articles"][0]
        assert art["crypto"]["decrypted"] and "PC LOAD LETTER" in art["body"]


class TestSmimeVerify:
    def test_openssl_smime_sign_valid(self, crypto_env, deliver, tmp_path):
        """openssl smime -sign (multipart/signed, detached): signature_valid, signer = From."""
        d = deliver(with_headers("s1", sign(crypto_env, tmp_path, inner_entity())))
        c = d.crypto
        assert c["signed"] and c["signature_valid"] is True and c["signer"] == CUSTOMER
        assert c["error"] == "" and not c["encrypted"]
        # not decrypted, so no X-Deskgate-BodyDecrypted: only the Body filter matched
        assert d.ticket["dynamic_fields"] == {"Server": "print01"}
        assert "PC LOAD LETTER" in d.article["body"]
        assert [a["filename"] for a in d.article["attachments"]] == ["invoice.pdf"]

    def test_opaque_signed_valid(self, crypto_env, deliver, tmp_path):
        """openssl smime -sign -nodetach (signed-data): verified and the content extracted."""
        d = deliver(with_headers("s2", sign(crypto_env, tmp_path, inner_entity(), "-nodetach")))
        c = d.crypto
        assert c["signed"] and c["signature_valid"] is True
        assert "PC LOAD LETTER" in d.article["body"]

    def test_tampered_body_invalid(self, crypto_env, deliver, tmp_path):
        """A body changed after signing: signature_valid false with a digest error."""
        raw = with_headers("s3", sign(crypto_env, tmp_path, inner_entity()))
        raw = raw.replace(b"PC LOAD LETTER", b"PC LOAD LEDGER")
        d = deliver(raw)
        c = d.crypto
        assert c["signed"] and c["signature_valid"] is False
        assert "modified" in c["error"] or "digest" in c["error"]

    def _with_crl(self, env, *revoked, days=7):
        env.ca.crl(revoked, days=days, path=env.root / "keys" / "smime" / "crl.pem")
        (env.conf / "60-crl.toml").write_text(
            '[crypto]\nsmime_crl_file = "keys/smime/crl.pem"\n')
        env.reload()

    def test_revoked_signer_invalid_with_crl(self, crypto_env, deliver, tmp_path):
        """smime_crl_file set and the signer's certificate on the CA's CRL: not valid."""
        self._with_crl(crypto_env, crypto_env.customer)
        d = deliver(with_headers("r1", sign(crypto_env, tmp_path, inner_entity())))
        c = d.crypto
        assert c["signed"] and c["signature_valid"] is False
        assert "revoked" in c["error"]
        assert "PC LOAD LETTER" in d.article["body"]          # stored all the same

    def test_crl_without_the_signer_valid(self, crypto_env, deliver, tmp_path):
        """A current CRL that lists somebody else: the signature stays valid."""
        other = crypto_env.ca.issue("Other", emails=("other@example.org",), filename="o")
        self._with_crl(crypto_env, other)
        d = deliver(with_headers("r2", sign(crypto_env, tmp_path, inner_entity())))
        assert d.crypto["signature_valid"] is True and d.crypto["error"] == ""

    def test_expired_crl_makes_signatures_unverifiable(self, crypto_env, deliver, tmp_path):
        """An out-of-date CRL is not trusted: the admin has to refresh it."""
        self._with_crl(crypto_env, days=-1)
        d = deliver(with_headers("r3", sign(crypto_env, tmp_path, inner_entity())))
        assert d.crypto["signature_valid"] is False and "CRL" in d.crypto["error"]

    def test_check_names_a_missing_crl_file(self, crypto_env):
        """`deskgate check`: file, key and reason when smime_crl_file cannot be read."""
        from gateway.config import ConfigErrors, load_config

        (crypto_env.conf / "60-crl.toml").write_text(
            '[crypto]\nsmime_crl_file = "keys/smime/nowhere.pem"\n')
        with pytest.raises(ConfigErrors) as info:
            load_config(crypto_env.conf)
        assert "crypto.smime_crl_file" in str(info.value)
        assert "nowhere.pem" in str(info.value)

    def test_signer_mismatch(self, crypto_env, deliver, tmp_path):
        """Valid signature by someone else than From: 'signature valid, signer mismatch'."""
        other = crypto_env.ca.issue("Mallory", emails=("mallory@evil.test",), filename="m")
        d = deliver(with_headers("s4", sign(crypto_env, tmp_path, inner_entity(),
                                            signer=other.cert, key=other.key)))
        c = d.crypto
        assert c["signed"] and c["signature_valid"] is False
        assert "signature valid, signer mismatch" in c["error"]
        assert c["signer"] == "mallory@evil.test"

    def test_untrusted_ca_invalid(self, crypto_env, deliver, tmp_path):
        """A signer from a CA outside smime_ca_file: not valid, says it is not trusted."""
        from tests.peers.ca import TestCA

        rogue = TestCA(tmp_path / "rogue").issue("Customer", emails=(CUSTOMER,), filename="c")
        d = deliver(with_headers("s5", sign(crypto_env, tmp_path, inner_entity(),
                                            signer=rogue.cert, key=rogue.key)))
        assert d.crypto["signature_valid"] is False
        assert "not trusted" in d.crypto["error"]

    def test_expired_signer_certificate(self, crypto_env, deliver, tmp_path):
        """A signature by an expired certificate is not valid and says so; message stored."""
        old = crypto_env.ca.issue("Customer", emails=(CUSTOMER,), days=-1, not_before_days=10,
                                  filename="old")
        d = deliver(with_headers("s6", sign(crypto_env, tmp_path, inner_entity(),
                                            signer=old.cert, key=old.key)))
        assert d.outcome.action == "new"
        assert d.crypto["signature_valid"] is False
        assert "expired" in d.crypto["error"]


COLLEAGUE = "colleague@customer.test"


def sign_by(tmp: Path, data: bytes, *signers, extra: tuple[str, ...] = ()) -> bytes:
    """openssl smime -sign with one -signer/-inkey pair per Issued (several SignerInfos)."""
    src = tmp / "tosign.eml"
    src.write_bytes(data)
    args = [a for s in signers for a in ("-signer", str(s.cert), "-inkey", str(s.key))]
    return openssl("smime", "-sign", *extra, "-in", str(src), *args).stdout


def cert_fingerprint(issued) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def _sigs(c):
    """(signer, valid) of each entry; sorted, as a SET OF SignerInfo has no signing order."""
    return sorted((s["signer"], s["valid"]) for s in c["signatures"])


def _entry(c, signer):
    return next(s for s in c["signatures"] if s["signer"] == signer)


class TestSmimeSeveralSigners:
    @pytest.fixture
    def colleague(self, crypto_env):
        return crypto_env.ca.issue("Colleague", emails=(COLLEAGUE,), filename="colleague")

    def test_two_signers_both_recorded(self, crypto_env, colleague, deliver, tmp_path):
        """Two SignerInfos, both good: one entry each (signer from its certificate,
        its fingerprint), the message valid because one of them is From."""
        raw = with_headers("m1", sign_by(tmp_path, inner_entity(), colleague,
                                         crypto_env.customer))
        c = deliver(raw).crypto
        assert _sigs(c) == [(COLLEAGUE, True), (CUSTOMER, True)]
        assert _entry(c, COLLEAGUE)["fingerprint"] == cert_fingerprint(colleague)
        assert _entry(c, CUSTOMER)["fingerprint"] == cert_fingerprint(crypto_env.customer)
        assert all(s["method"] == "smime" and s["error"] == "" for s in c["signatures"])
        assert c["signature_valid"] is True and c["signer"] == CUSTOMER and c["error"] == ""

    def test_one_untrusted_signer_of_two(self, crypto_env, deliver, tmp_path):
        """The sender's good signature next to one whose CA is not trusted: both
        recorded, each with its own verdict; the message is not valid."""
        from tests.peers.ca import TestCA

        rogue = TestCA(tmp_path / "rogue").issue("Rogue", emails=("rogue@evil.test",),
                                                 filename="r")
        raw = with_headers("m2", sign_by(tmp_path, inner_entity(), crypto_env.customer,
                                         rogue))
        c = deliver(raw).crypto
        assert _sigs(c) == [(CUSTOMER, True), ("rogue@evil.test", False)]
        assert "not trusted" in _entry(c, "rogue@evil.test")["error"]
        assert _entry(c, CUSTOMER)["error"] == ""
        assert c["signature_valid"] is False and c["signer"] == CUSTOMER
        assert "not trusted" in c["error"] and "rogue@evil.test" in c["error"]

    def test_revoked_signer_of_two(self, crypto_env, colleague, deliver, tmp_path):
        """With a CRL revoking the sender's certificate: the sender's entry says revoked,
        the colleague's stays good, the message is not valid."""
        crypto_env.ca.crl([crypto_env.customer],
                          path=crypto_env.root / "keys" / "smime" / "crl.pem")
        (crypto_env.conf / "60-crl.toml").write_text(
            '[crypto]\nsmime_crl_file = "keys/smime/crl.pem"\n')
        crypto_env.reload()
        raw = with_headers("m3", sign_by(tmp_path, inner_entity(), crypto_env.customer,
                                         colleague))
        c = deliver(raw).crypto
        assert _sigs(c) == [(COLLEAGUE, True), (CUSTOMER, False)]
        assert "revoked" in _entry(c, CUSTOMER)["error"]
        assert c["signature_valid"] is False and "revoked" in c["error"]

    def test_two_signers_none_of_them_the_sender(self, crypto_env, colleague, deliver,
                                                 tmp_path):
        """Both good, neither is From: signer mismatch naming both."""
        other = crypto_env.ca.issue("Other", emails=("other@customer.test",), filename="o")
        raw = with_headers("m4", sign_by(tmp_path, inner_entity(), colleague, other))
        c = deliver(raw).crypto
        assert _sigs(c) == [(COLLEAGUE, True), ("other@customer.test", True)]
        assert c["signature_valid"] is False and "signer mismatch" in c["error"]
        assert COLLEAGUE in c["error"] and "other@customer.test" in c["error"]

    def test_opaque_two_signers(self, crypto_env, colleague, deliver, tmp_path):
        """signed-data (-nodetach) with two SignerInfos: both verified, content extracted."""
        raw = with_headers("m5", sign_by(tmp_path, inner_entity(), crypto_env.customer,
                                         colleague, extra=("-nodetach",)))
        d = deliver(raw)
        assert _sigs(d.crypto) == [(COLLEAGUE, True), (CUSTOMER, True)]
        assert d.crypto["signature_valid"] is True
        assert "PC LOAD LETTER" in d.article["body"]

    def test_opaque_tampered_two_signers(self, crypto_env, colleague, deliver, tmp_path):
        """signed-data whose content changed: every signer's entry is not valid, the
        content is still extracted."""
        out = sign_by(tmp_path, inner_entity(), crypto_env.customer, colleague,
                      extra=("-nodetach", "-binary"))
        raw = with_headers("m6", out)
        d = deliver(raw)
        assert d.crypto["signature_valid"] is True     # untouched: the baseline holds
        import base64
        import email

        msg = email.message_from_bytes(raw)
        der = bytearray(msg.get_payload(decode=True))
        at = bytes(der).index(b"PC LOAD LETTER")
        der[at:at + 2] = b"XX"
        tampered = with_headers("m7", b"MIME-Version: 1.0\nContent-Disposition: attachment; "
                                b'filename="smime.p7m"\nContent-Type: application/'
                                b'x-pkcs7-mime; smime-type=signed-data; name="smime.p7m"\n'
                                b"Content-Transfer-Encoding: base64\n\n"
                                + base64.encodebytes(bytes(der)))
        d = deliver(tampered)
        assert _sigs(d.crypto) == [(COLLEAGUE, False), (CUSTOMER, False)]
        assert d.crypto["signature_valid"] is False
        assert "XX LOAD LETTER" in d.article["body"]


class TestSmimeSignerWithoutAddress:
    def test_certificate_without_address_is_not_the_senders(self, crypto_env, deliver,
                                                            tmp_path):
        """A good signature by a trusted certificate that names no e-mail address cannot
        be From's: recorded as good, the message not valid, the reason says why."""
        nameless = crypto_env.ca.issue("Build Server", filename="build")
        c = deliver(with_headers("n1", sign_by(tmp_path, inner_entity(), nameless))).crypto
        assert [(s["signer"], s["valid"], s["fingerprint"]) for s in c["signatures"]] == [
            ("", True, cert_fingerprint(nameless))]
        assert c["signed"] and c["signature_valid"] is False and c["signer"] == ""
        assert "signer mismatch" in c["error"] and "no e-mail address" in c["error"]
        assert "Build Server" in c["error"]


def _log_entries(env: CryptoEnv) -> str:
    from sqlalchemy import create_engine, select

    from gateway.store.tables import CommEntry

    eng = create_engine(env.config.database_url)
    with eng.connect() as conn:
        rows = conn.execute(select(CommEntry.priority, CommEntry.key, CommEntry.value)).all()
    eng.dispose()
    return "\n".join(f"{r.priority} {r.key} {r.value}" for r in rows)
