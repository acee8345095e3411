"""The keys page refuses, as `keys smime import` does, a certificate uploaded without
its key when the address's stored private key does not belong to it."""

from __future__ import annotations

from tests.integration.admin.test_admin_keys import PASSPHRASE, smime_material, upload
from tests.integration.crypto.crypto_helpers import openssl


class TestSmimeCertificateWithoutKey:
    def test_certificate_for_another_key_is_refused(self, admin_dashboard, tmp_path):
        """A pair is in the store; a certificate for another key uploaded alone: 422
        naming the address and the mismatch, and the pair's files are unchanged."""
        d = admin_dashboard()
        cert, key = smime_material(tmp_path)
        status, html = upload(d, {"action": "smime-import", "passphrase": PASSPHRASE},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 200, html
        smime_dir = d.root / "keys" / "smime"
        before = {p.name: p.read_bytes() for p in smime_dir.iterdir() if p.is_file()}
        other = tmp_path / "other.pem"
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                "-subj", "/CN=Someone Else/emailAddress=support@example.org",
                "-addext", "subjectAltName=email:support@example.org",
                "-keyout", str(tmp_path / "other.key"), "-out", str(other))
        status, html = upload(d, {"action": "smime-import"},
                              {"cert": ("other.pem", other.read_bytes())})
        assert status == 422 and 'id="error"' in html, html
        assert "support@example.org" in html, html
        assert "does not match the stored private key" in html, html
        after = {p.name: p.read_bytes() for p in smime_dir.iterdir() if p.is_file()}
        assert after == before

    def test_renewed_certificate_keeps_the_key(self, admin_dashboard, tmp_path):
        """A renewed certificate for the stored key uploaded alone is imported and
        listed with its private key."""
        d = admin_dashboard()
        cert, key = smime_material(tmp_path)
        status, html = upload(d, {"action": "smime-import", "passphrase": PASSPHRASE},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 200, html
        enc = tmp_path / "enc.key"
        enc.write_bytes(key)
        new = openssl("req", "-x509", "-new", "-key", str(enc), "-passin",
                      f"pass:{PASSPHRASE}", "-days", "90",
                      "-subj", "/CN=Example Support/emailAddress=support@example.org",
                      "-addext", "subjectAltName=email:support@example.org").stdout
        status, html = upload(d, {"action": "smime-import"}, {"cert": ("new.pem", new)})
        assert status == 200, html
        assert "(support@example.org) imported with its private key" in html, html
