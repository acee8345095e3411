"""The keys page's imports are all-or-nothing, as the CLI's: a failed import leaves
the key store as it was and the page names the reason."""

from __future__ import annotations

from tests.integration.admin.test_admin_keys import upload
from tests.integration.crypto.crypto_helpers import openssl
from tests.peers.ca import TestCA


class TestSmimeImportRollback:
    def test_pkcs12_whose_key_cannot_be_written(self, admin_dashboard, tmp_path):
        """A PKCS#12 upload whose key file cannot be written (its name is taken by a
        directory): 422 naming the file and that nothing was imported, and no
        certificate is left in the store without its key."""
        d = admin_dashboard()
        smime_dir = d.root / "keys" / "smime"
        smime_dir.mkdir(parents=True, exist_ok=True)
        (smime_dir / "sales@example.org.key").mkdir(mode=0o700)
        before = sorted(p.name for p in smime_dir.iterdir())
        issued = TestCA(tmp_path / "ca").issue("Sales", emails=("sales@example.org",))
        p12 = openssl("pkcs12", "-export", "-in", str(issued.cert), "-inkey",
                      str(issued.key), "-passout", "pass:p12-pass").stdout
        status, html = upload(d, {"action": "smime-import", "passphrase": "p12-pass"},
                              {"cert": ("sales.p12", p12)})
        assert status == 422, html
        assert "cannot write" in html and "sales@example.org.key" in html, html
        assert "nothing was imported" in html, html
        assert sorted(p.name for p in smime_dir.iterdir()) == before
