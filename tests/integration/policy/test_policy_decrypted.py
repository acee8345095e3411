"""Filters see the decrypted message: Body and attachments of S/MIME mail."""

from __future__ import annotations

import shutil
import subprocess
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from gateway.app import Gateway
from gateway.config import load_config
from tests.integration.policy.conftest import deliver, ticket
from tests.peers.ca import TestCA

POLICY = r"""
[[filter]]
name = "010-printers"
match = [{ header = "Body", value = "server:\\s+(?P<server>[a-z0-9]+)" },
         { header = "X-Deskgate-AttachmentCount", value = "^1$" }]
set = { "X-Deskgate-Queue" = "Sales", "X-Deskgate-DynamicField-Server" = "[**\\server**]" }
"""


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class TestDecryptedBody:
    def test_filter_matches_body_of_smime_encrypted_mail(self, make_confdir, tmp_path):
        """An S/MIME encrypted message is decrypted before the filters read Body/attachments."""
        conf = make_confdir({"50-crypto.toml": """
            [crypto]
            smime_dir = "keys/smime"
            smime_ca_file = "keys/smime/ca.pem"
            """}, policies={"10.toml": POLICY})
        ca = TestCA(tmp_path / "ca")
        support = ca.issue("Example Support", emails=("support@example.org",),
                           filename="support")
        sdir = conf.parent / "keys" / "smime"
        sdir.mkdir(parents=True)
        shutil.copy(ca.ca_path, sdir / "ca.pem")
        shutil.copy(support.cert, sdir / "support@example.org.pem")
        shutil.copy(support.key, sdir / "support@example.org.key")
        (sdir / "support@example.org.key").chmod(0o600)

        inner = MIMEMultipart()
        inner.attach(MIMEText("The printer says PC LOAD LETTER.\nserver: print01\n"))
        att = MIMEApplication(b"%PDF-1.4 fake\n", "pdf")
        att.add_header("Content-Disposition", "attachment", filename="log.pdf")
        inner.attach(att)
        src = tmp_path / "inner.eml"
        src.write_bytes(crlf(inner.as_bytes()))
        out = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", "-in", str(src),
                              str(support.cert)], capture_output=True, check=True,
                             timeout=60).stdout
        raw = (b"From: Carla <carla@customer.test>\r\nTo: support@example.org\r\n"
               b"Subject: encrypted printer report\r\nMessage-ID: <enc-1@customer.test>\r\n"
               + crlf(out))
        assert b"print01" not in raw

        gw = Gateway(load_config(conf))
        try:
            gw.prepare_store()
            res = deliver(gw, raw)
            t = ticket(gw, res.ticket_number)
        finally:
            gw.close()
        assert t["queue"] == "Sales"
        assert t["dynamic_fields"] == {"Server": "print01"}
        assert t["articles"][0]["crypto"]["decrypted"] is True
