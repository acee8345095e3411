"""The keys page: S/MIME and PGP imports and removals through the dashboard, with
real openssl/gpg producing the keys and the encrypted mail."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from gateway.cli.tickets import list_tickets, ticket_detail
from tests.integration.admin.conftest import ADMIN, basic
from tests.integration.crypto.crypto_helpers import crlf, openssl
from tests.peers.ca import TestCA

PASSPHRASE = "correct horse battery"


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]
              ) -> tuple[bytes, str]:
    """A multipart/form-data body (what a browser sends for a file upload)."""
    boundary = uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                f"{v}\r\n").encode()
    for k, (name, data) in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(d, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[int, str]:
    """POST the keys form as the admin, in the session whose page gave the token."""
    import urllib.request

    body, ctype = multipart({"csrf": d.csrf(path="/admin/keys"), **fields}, files)
    req = urllib.request.Request(d.base + "/admin/keys", data=body,  # noqa: S310
                                 headers={**basic(ADMIN), "Content-Type": ctype})
    return d.send(req)


def smime_material(tmp: Path) -> tuple[Path, bytes]:
    """support@example.org's certificate and its private key encrypted with PASSPHRASE."""
    ca = TestCA(tmp / "ca")
    issued = ca.issue("Example Support", emails=("support@example.org",))
    key = openssl("pkey", "-in", str(issued.key), "-aes256", "-passout",
                  f"pass:{PASSPHRASE}").stdout
    return issued.cert, key


def encrypted_mail(tmp: Path, cert: Path) -> bytes:
    inner = tmp / "inner.eml"
    inner.write_bytes(b"Content-Type: text/plain\r\n\r\nThe vault code is 4711.\r\n")
    out = openssl("smime", "-encrypt", "-aes256", "-in", str(inner), str(cert)).stdout
    return (b"From: c@customer.test\r\nTo: support@example.org\r\nSubject: sealed\r\n"
            b"Message-ID: <sealed1@customer.test>\r\n") + crlf(out)


def body_of_first_ticket(d) -> str:
    with d.rg.gateway.engine.connect() as conn:
        number = list_tickets(conn)[0]["number"]
        return str(ticket_detail(conn, number)["articles"][0]["body"])


class TestSmimeKeys:
    def test_import_with_passphrase_then_decrypt(self, admin_dashboard, tmp_path):
        """A certificate and its passphrase-protected key uploaded in the keys page:
        mail encrypted to it by openssl is decrypted; a wrong passphrase is refused."""
        d = admin_dashboard()
        cert, key = smime_material(tmp_path)
        status, html = upload(d, {"action": "smime-import", "passphrase": "wrong"},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 422 and 'id="error"' in html
        status, html = upload(d, {"action": "smime-import", "passphrase": PASSPHRASE},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 200, html
        assert "(support@example.org) imported with its private key" in html
        assert PASSPHRASE not in html
        assert d.deliver("support@example.org", encrypted_mail(tmp_path, cert)) == [250]
        assert "The vault code is 4711." in body_of_first_ticket(d)

    def test_pkcs12_import_and_remove(self, admin_dashboard, tmp_path):
        """A PKCS#12 file with its passphrase is imported; Remove deletes it."""
        d = admin_dashboard()
        ca = TestCA(tmp_path / "ca")
        issued = ca.issue("Sales", emails=("sales@example.org",))
        p12 = openssl("pkcs12", "-export", "-in", str(issued.cert), "-inkey",
                      str(issued.key), "-passout", "pass:p12-pass").stdout
        status, html = upload(d, {"action": "smime-import", "passphrase": "p12-pass"},
                              {"cert": ("sales.p12", p12)})
        assert status == 200, html
        smime_dir = d.root / "keys" / "smime"
        assert (smime_dir / "sales@example.org.key").exists()
        fpr = html.split("S/MIME ")[1].split(" ")[0]
        status, html = upload(d, {"action": "smime-remove", "id": fpr}, {})
        assert status == 200 and f"S/MIME {fpr} removed" in html
        assert not (smime_dir / "sales@example.org.pem").exists()


    def test_certificate_address_cannot_name_another_file(self, admin_dashboard, tmp_path):
        """A certificate whose address is no plain address (`ca`, the trust store's
        name, or one with `../`) is refused: the CA file stays and nothing is written
        outside the store."""
        d = admin_dashboard()
        smime_dir = d.root / "keys" / "smime"
        smime_dir.mkdir(parents=True, exist_ok=True)
        trusted = TestCA(tmp_path / "trusted").ca_path.read_bytes()
        (smime_dir / "ca.pem").write_bytes(trusted)
        evil = TestCA(tmp_path / "evil")
        for address in ("ca", "../../conf.d/99-evil@example.org"):
            issued = evil.issue("Evil", emails=(address,), filename="evil")
            status, html = upload(d, {"action": "smime-import"},
                                  {"cert": ("evil.pem", issued.cert.read_bytes()),
                                   "key": ("evil.key", issued.key.read_bytes())})
            assert status == 422 and 'id="error"' in html, html
        assert (smime_dir / "ca.pem").read_bytes() == trusted
        assert not list((d.root / "conf.d").glob("99-evil*"))
        assert not list(smime_dir.glob("*.key"))


class TestPgpKeys:
    def test_import_secret_key_with_passphrase(self, admin_dashboard, tmp_path):
        """A gpg-made secret key with its passphrase is imported and listed."""
        home = tmp_path / "gnupg"
        home.mkdir(mode=0o700)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
               "--passphrase", "pgp-pass"]
        try:
            subprocess.run([*gpg, "--quick-gen-key", "Support <support@example.org>",
                            "rsa2048", "default", "never"], check=True, capture_output=True,
                           timeout=120)
            secret = subprocess.run([*gpg, "--armor", "--export-secret-keys"], check=True,
                                    capture_output=True, timeout=60).stdout
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           check=False, capture_output=True, timeout=30)
        d = admin_dashboard()
        try:
            status, html = upload(d, {"action": "pgp-import", "passphrase": "pgp-pass"},
                                  {"pgp_key": ("support.asc", secret)})
            assert status == 200, html
            assert "PGP " in html and "imported" in html and "support@example.org" in html
        finally:
            subprocess.run(["gpgconf", "--homedir", str(d.root / "keys" / "gnupg"), "--kill",
                            "gpg-agent"], check=False, capture_output=True, timeout=30)



def row_of(html: str, table: str, address: str) -> str:
    """The row of the keys page's table (smime, pgp) that lists address."""
    part = html.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    return next(r for r in part.split('<tr class="item">')[1:] if address in r)


class TestUnusableKeysFlagged:
    def test_smime_not_yet_valid_is_not_called_expired(self, admin_dashboard, tmp_path):
        """A certificate valid only from next week is flagged not yet valid with its start
        date, not expired; a current one has no flag."""
        import datetime as dt

        d = admin_dashboard()
        ca = TestCA(tmp_path / "ca")
        future = ca.issue("Later", emails=("later@example.org",), days=60,
                          not_before_days=-10, filename="later")
        current = ca.issue("Now", emails=("now@example.org",), filename="now")
        smime_dir = d.root / "keys" / "smime"
        smime_dir.mkdir(parents=True, exist_ok=True)
        (smime_dir / "later@example.org.pem").write_bytes(future.cert.read_bytes())
        (smime_dir / "now@example.org.pem").write_bytes(current.cert.read_bytes())
        status, html = d.request("/admin/keys")
        assert status == 200, html
        row = row_of(html, "smime", "later@example.org")
        start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).date()
        assert "not valid before" in row and "expired" not in row
        assert str(start) in row or str(start - dt.timedelta(days=1)) in row
        row = row_of(html, "smime", "now@example.org")
        assert "not valid before" not in row and "expired" not in row

    def test_pgp_disabled_key_is_flagged(self, admin_dashboard):
        """A PGP key disabled in the keyring (gpg --edit-key KEY disable) is flagged
        disabled, as `keys pgp list` does; an enabled one is not."""
        from tests.peers.gpg import GpgPeer

        peer = GpgPeer()
        try:
            peer.gen_key("Customer <cust@customer.test>")
            peer.gen_key("Other <other@customer.test>")
            fpr = peer.fingerprint("cust@customer.test")
            keys = peer.export("cust@customer.test") + peer.export("other@customer.test")
        finally:
            peer.close()
        d = admin_dashboard()
        home = d.root / "keys" / "gnupg"
        try:
            status, html = upload(d, {"action": "pgp-import"}, {"pgp_key": ("c.asc", keys)})
            assert status == 200, html
            row = row_of(html, "pgp", "cust@customer.test")
            assert "disabled" not in row
            subprocess.run(["gpg", "--homedir", str(home), "--batch", "--command-fd", "0",
                            "--edit-key", fpr], input=b"disable\nsave\n",
                           capture_output=True, check=True, timeout=30)
            status, html = d.request("/admin/keys")
            assert status == 200, html
            assert "disabled" in row_of(html, "pgp", "cust@customer.test")
            assert "disabled" not in row_of(html, "pgp", "other@customer.test")
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           check=False, capture_output=True, timeout=30)


class TestKeysAndSaves:
    def test_key_change_waits_for_a_save_in_progress(self, admin_dashboard, tmp_path):
        """A keys-page change (write, reload) waits while a configuration save holds the
        admin lock, as two saves do: a reload never runs in the middle of another."""
        import asyncio
        import threading

        d = admin_dashboard()
        dash = next(s for s in d.rg.gateway.services if s.name == "dashboard")
        cert, _key = smime_material(tmp_path)
        lock: asyncio.Lock = dash.save_lock  # type: ignore[attr-defined]
        d.rg.call(lock.acquire())
        result: list[tuple[int, str]] = []
        t = threading.Thread(target=lambda: result.append(
            upload(d, {"action": "smime-import"}, {"cert": ("support.pem", cert.read_bytes())})))
        t.start()
        try:
            t.join(2.0)
            assert t.is_alive() and not result     # still waiting for the lock
        finally:
            d.rg.loop.call_soon_threadsafe(lock.release)
        t.join(60)
        assert result and result[0][0] == 200 and "imported" in result[0][1]


def gpg_secret_key(tmp: Path, passphrase: str) -> bytes:
    """An armored Ed25519 secret key for support@example.org made by gpg."""
    home = tmp / "gnupg-maker"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", passphrase]
    try:
        subprocess.run([*gpg, "--quick-gen-key", "Support <support@example.org>",
                        "ed25519", "default", "never"], check=True, capture_output=True,
                       timeout=120)
        return subprocess.run([*gpg, "--armor", "--export-secret-keys"], check=True,
                              capture_output=True, timeout=60).stdout
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       check=False, capture_output=True, timeout=30)


def files_under(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every regular file under root (relative name: bytes, mode)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def loosen(smime_dir: Path) -> Path:
    """A private key file that others may read, put into the store behind the gateway's
    back: the key stores no longer validate, so the next reload is refused."""
    smime_dir.mkdir(parents=True, exist_ok=True)
    loose = smime_dir / "loose@example.org.key"
    loose.write_bytes(b"not really a key\n")
    loose.chmod(0o644)
    return loose


class TestRefusedReload:
    def test_smime_import_is_taken_back(self, admin_dashboard, tmp_path):
        """An S/MIME import whose reload is refused is not shown as done: the page
        answers 422 with the refusal and its reason, and the store is as it was (no
        certificate or key of the import; the file that broke it untouched)."""
        d = admin_dashboard()
        smime_dir = d.root / "keys" / "smime"
        loose = loosen(smime_dir)
        before = files_under(smime_dir)
        cert, key = smime_material(tmp_path)
        status, html = upload(d, {"action": "smime-import", "passphrase": PASSPHRASE},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 422, html
        assert 'id="error"' in html and 'id="done"' not in html
        assert "refused to reload" in html and "loose@example.org.key" in html
        assert files_under(smime_dir) == before
        loose.chmod(0o600)
        status, html = upload(d, {"action": "smime-import", "passphrase": PASSPHRASE},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 200 and "imported with its private key" in html, html

    def test_smime_remove_is_taken_back(self, admin_dashboard, tmp_path):
        """A removal whose reload is refused puts the certificate, its key and its
        passphrase back as they were (bytes and modes), and the page still lists it."""
        d = admin_dashboard()
        cert, key = smime_material(tmp_path)
        status, html = upload(d, {"action": "smime-import", "passphrase": PASSPHRASE},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 200, html
        fpr = html.split("S/MIME ")[1].split(" ")[0]
        smime_dir = d.root / "keys" / "smime"
        loosen(smime_dir)
        before = files_under(smime_dir)
        assert {"support@example.org.pem", "support@example.org.key"} <= set(before)
        status, html = upload(d, {"action": "smime-remove", "id": fpr}, {})
        assert status == 422 and "refused to reload" in html and 'id="done"' not in html
        assert files_under(smime_dir) == before
        assert fpr in d.request("/admin/keys")[1]

    def test_pgp_import_is_taken_back(self, admin_dashboard, tmp_path):
        """A PGP import whose reload is refused leaves the GnuPG home without the key
        and without its passphrase file."""
        secret = gpg_secret_key(tmp_path, "pgp-pass")
        d = admin_dashboard()
        home = d.root / "keys" / "gnupg"
        loosen(d.root / "keys" / "smime")
        try:
            status, html = upload(d, {"action": "pgp-import", "passphrase": "pgp-pass"},
                                  {"pgp_key": ("support.asc", secret)})
            assert status == 422 and "refused to reload" in html, html
            assert 'id="done"' not in html
            left = files_under(home) if home.exists() else {}
            assert not [n for n in left if n.startswith(("pubring", "private-keys-v1.d/",
                                                         "deskgate-passphrases/"))], left
            assert "support@example.org" not in d.request("/admin/keys")[1]
        finally:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           check=False, capture_output=True, timeout=30)


class TestGpgUnavailable:
    def test_keys_page_names_the_cause_and_still_lists_smime(self, admin_dashboard, tmp_path,
                                                             monkeypatch):
        """A gpg that fails or hangs while the PGP keys are listed: the keys page answers
        503 with the cause, and still lists the S/MIME certificates (not a 500)."""
        from gateway.crypto import pgpkeyring

        monkeypatch.setattr(pgpkeyring, "GPG_TIMEOUT", 2)
        gpg = tmp_path / "gpg-wrapper"
        gpg.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --list-keys|'
                       '--list-secret-keys)\n  [ -e "$0.hang" ] && exec sleep 20\n'
                       "  echo 'gpg: keydb_search failed' >&2; exit 2;;\n"
                       'esac; done\nexec gpg "$@"\n')
        gpg.chmod(0o755)
        d = admin_dashboard(extra=f'\n[crypto]\ngpg_binary = "{gpg}"\n')
        cert, key = smime_material(tmp_path)
        status, html = upload(d, {"action": "smime-import", "passphrase": PASSPHRASE},
                              {"cert": ("support.pem", cert.read_bytes()),
                               "key": ("support.key", key)})
        assert status == 200, html
        home = d.root / "keys" / "gnupg"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        (home / "pubring.kbx").write_bytes(b"")
        status, html = d.request("/admin/keys")
        assert status == 503, html
        assert 'id="error"' in html and "the PGP keys cannot be listed now" in html
        assert "gpg failed (exit status 2)" in html and "support@example.org" in html
        Path(str(gpg) + ".hang").touch()
        status, html = d.request("/admin/keys")
        assert status == 503 and "gpg did not answer within 2 s" in html, html
        assert "support@example.org" in html
