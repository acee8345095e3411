"""gpg as a test peer: a throwaway home with its own keys, producing and checking
OpenPGP data the way a correspondent's mail client would."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def short_home(prefix: str = "dg") -> Path:
    """A short temp dir (gpg-agent's socket path must stay under ~100 bytes)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o700)
    return d


def kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True, check=False, timeout=30)


class GpgPeer:
    """A GnuPG home for one correspondent. close() stops its agent and removes it."""

    __test__ = False

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or short_home("dgp")

    def run(self, *args: str, input: bytes | None = None, passphrase: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--pinentry-mode",
               "loopback", "--trust-model", "always"]
        cmd += ["--passphrase", passphrase] if passphrase is not None else ["--passphrase", ""]
        r = subprocess.run([*cmd, *args], input=input, capture_output=True, timeout=60,
                           check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"gpg {' '.join(args)} failed: {r.stderr.decode()}")
        return r

    def gen_key(self, uid: str, passphrase: str = "", expire: str = "never") -> str:
        """`--quick-gen-key UID default default never`; returns the fingerprint."""
        self.run("--quick-gen-key", uid, "default", "default", expire, passphrase=passphrase)
        return self.fingerprint(uid)

    def fingerprint(self, uid: str) -> str:
        out = self.run("--with-colons", "--list-keys", uid).stdout.decode()
        return next(ln.split(":")[9] for ln in out.splitlines() if ln.startswith("fpr:"))

    def export(self, ident: str) -> bytes:
        return self.run("--armor", "--export", ident).stdout

    def export_secret(self, ident: str, passphrase: str = "") -> bytes:
        return self.run("--armor", "--export-secret-keys", ident, passphrase=passphrase).stdout

    def import_(self, data: bytes) -> None:
        self.run("--import", input=data)

    def encrypt(self, data: bytes, recipient: str, sign_as: str | None = None,
                passphrase: str = "") -> bytes:
        args = ["--armor", "--encrypt", "--recipient", recipient]
        if sign_as:
            args += ["--sign", "--local-user", sign_as]
        return self.run(*args, input=data, passphrase=passphrase).stdout

    def detach_sign(self, data: bytes, sign_as: str, passphrase: str = "") -> bytes:
        return self.run("--armor", "--detach-sign", "--local-user", sign_as,
                        "--digest-algo", "SHA256", input=data, passphrase=passphrase).stdout

    def clearsign(self, data: bytes, sign_as: str) -> bytes:
        return self.run("--clearsign", "--local-user", sign_as, input=data).stdout

    def close(self) -> None:
        kill_agent(self.home)
        shutil.rmtree(self.home, ignore_errors=True)
