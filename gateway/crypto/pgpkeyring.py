"""The PGP keyring: a GnuPG home driven through python-gnupg.

The passphrase of a secret key is kept in `<gnupg_home>/deskgate-passphrases/<FPR>`.
Keys are trusted as imported (gpg runs with `--trust-model always`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.crypto.keyfiles import KeyStoreError, mtimes, read_passphrase
from gateway.privatefiles import write_private

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PgpKey:
    fingerprint: str
    addresses: tuple[str, ...]
    uids: tuple[str, ...]
    expires: dt.datetime | None
    secret: bool
    expired: bool
    revoked: bool
    can_encrypt: bool
    can_sign: bool
    subkeys: tuple[str, ...] = ()      # key ids and fingerprints of subkeys
    # Disabled in the keyring (gpg --edit-key KEY disable): gpg itself would still
    # encrypt to it under --trust-model always, so the gateway checks it.
    disabled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.fingerprint, "addresses": list(self.addresses), "uids": list(self.uids),
                "fingerprint": self.fingerprint,
                "expires": self.expires.isoformat() if self.expires else None,
                "private_key": self.secret, "expired": self.expired, "revoked": self.revoked,
                "disabled": self.disabled}

    @property
    def usable(self) -> bool:
        return not (self.expired or self.revoked or self.disabled)

    @property
    def unusable_reason(self) -> str:
        """Why this key may not sign or be encrypted to ("" when it may)."""
        return ("key revoked" if self.revoked else "key disabled" if self.disabled
                else "key expired" if self.expired else "")


def _uid_email(uid: str) -> str:
    import email.utils

    addr = email.utils.parseaddr(uid)[1]
    return addr.lower() if "@" in addr else ""


# Seconds a gpg call may take; then it is killed with every process it started (a
# stuck gpg-agent, a lock in the GnuPG home) and the result says so, instead of
# holding a worker thread for ever.
GPG_TIMEOUT = 30


def timed_out(res: Any) -> bool:
    """Whether this python-gnupg result comes from a gpg killed after GPG_TIMEOUT."""
    return bool(getattr(res, "timed_out", False))


class GpgUnavailable(KeyStoreError):
    """gpg gave no answer: it timed out, could not be started or failed to list the
    keys (its agent not reachable). Temporary: the same call may work later, and what
    it would have said about the keys is unknown (not "no key")."""


def _check_listing(res: Any) -> None:
    """Raise GpgUnavailable unless this key listing is gpg's complete answer."""
    if timed_out(res):
        raise GpgUnavailable(f"listing the keys: gpg did not answer within {GPG_TIMEOUT} s")
    rc = getattr(res, "returncode", 0)
    if rc:
        last = (getattr(res, "stderr", "") or "").strip().splitlines()[-1:]
        raise GpgUnavailable(f"listing the keys: gpg failed (exit status {rc})"
                             + (f": {last[0][:200]}" if last else ""))


# Seconds the pipes of a gpg that was killed (or has exited) get to reach their end.
_PIPE_GRACE = 1.0


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process group a process leads (started with start_new_session):
    gpg and every child it left, which could hold its pipes open."""
    with contextlib.suppress(OSError):
        os.killpg(process.pid, signal.SIGKILL)


def drain(process: subprocess.Popen[bytes], deadline: float) -> tuple[bytes, bytes, bool]:
    """(stdout, stderr, timed out) of a process started with start_new_session.

    Read here, not by threads that wait for the end of the pipes: a child that keeps
    them open (gpg's, or one that left the group) would hold such a thread for ever.
    At the deadline the process group is killed; the pipes then get _PIPE_GRACE
    seconds, as they do once the process itself has exited, and are given up.
    """
    assert process.stdout is not None and process.stderr is not None
    chunks: dict[int, list[bytes]] = {process.stdout.fileno(): [], process.stderr.fileno(): []}
    stop: float | None = None          # when the pipes are given up
    timed = False
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            now = time.monotonic()
            if stop is None and now >= deadline:
                timed, stop = True, now + _PIPE_GRACE
                kill_group(process)
            elif stop is None and process.poll() is not None:
                stop = now + _PIPE_GRACE
            if stop is not None and now >= stop:
                kill_group(process)   # what is left of the group holds the pipes
                break
            for key, _ in sel.select(min((stop or deadline) - now, 0.5)):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
    return (b"".join(chunks[process.stdout.fileno()]),
            b"".join(chunks[process.stderr.fileno()]), timed)


@functools.cache
def _timed_gpg_class() -> Any:
    """gnupg.GPG whose every gpg call ends after GPG_TIMEOUT seconds at most.

    python-gnupg waits for gpg without a limit, and for the end of gpg's output pipes
    on threads of its own: a gpg killed on time still held the caller when a child of
    it kept the pipes open. Here gpg leads a process group of its own, its output is
    read by the calling thread up to the deadline, and the whole group is killed then.
    """
    import gnupg

    class TimedGPG(gnupg.GPG):  # type: ignore[misc]
        def _open_subprocess(self, args: list[str], passphrase: bool = False) -> Any:
            cmd = self.make_args(args, passphrase)
            try:
                return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=self.env,
                                        start_new_session=True)
            except OSError as exc:
                raise GpgUnavailable(f"cannot run gpg ({self.gpgbinary}): "
                                     f"{exc.strerror or exc}") from None

        def _handle_io(self, args: list[str], fileobj: Any, result: Any, *rest: Any,
                       **kw: Any) -> Any:
            try:
                return super()._handle_io(args, fileobj, result, *rest, **kw)
            except BrokenPipeError:
                # python-gnupg raises its writer thread's error after the result is
                # complete: gpg ended (killed at the timeout, or failed) before it had
                # read all its input, and the result says why.
                if timed_out(result) or result.returncode:
                    return result
                raise

        def _collect_output(self, process: Any, result: Any, writer: Any = None,
                            stdin: Any = None) -> Any:
            out, err, timed = drain(process, time.monotonic() + GPG_TIMEOUT)
            if timed:
                result.timed_out = True
            if writer is not None:
                # It closes stdin itself; with gpg's group killed it gets EPIPE. (Closing
                # stdin here would wait for the lock of a write that never ends.)
                writer.join(_PIPE_GRACE)
            elif stdin is not None:
                with contextlib.suppress(OSError):
                    stdin.close()
            try:
                process.wait(timeout=_PIPE_GRACE)
            except subprocess.TimeoutExpired:     # still running: not after this
                kill_group(process)
                result.timed_out = True
                process.wait()
            for f in (process.stdout, process.stderr):
                f.close()
            self._read_response(io.StringIO(err.decode(self.encoding, "replace")), result)
            self._read_data(io.BytesIO(out), result, self.on_data, self.buffer_size)
            result.returncode = process.returncode
            return process.returncode

    return TimedGPG


class PgpStore:
    """The GnuPG home. gpg runs as a subprocess per call: never on the event loop."""

    PASS_DIR = "deskgate-passphrases"  # noqa: S105 - a directory name, not a password

    def __init__(self, home: Path, binary: str = "gpg") -> None:
        self.home = home
        self.binary = binary
        self._gpg: Any = None
        self._lock = threading.Lock()
        self._cache: tuple[tuple[float, ...], list[PgpKey]] | None = None

    @property
    def gpg(self) -> Any:
        with self._lock:
            if self._gpg is None:
                self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._agent_conf()
                try:
                    self._gpg = _timed_gpg_class()(
                        gnupghome=str(self.home), gpgbinary=self.binary,
                        options=["--trust-model", "always", "--no-auto-key-locate",
                                 "--no-auto-key-retrieve"])
                except (OSError, ValueError) as exc:    # python-gnupg runs gpg once here
                    raise GpgUnavailable(f"cannot run gpg ({self.binary}): {exc}") from None
                self._gpg.encoding = "utf-8"
            return self._gpg

    def available(self) -> bool:
        return self.home.is_dir() and any(self.home.glob("pubring.*"))

    def close(self) -> None:
        """Stop the gpg-agent that our gpg calls started for this home.

        gpg launches an agent on demand and leaves it running; without this a
        stopped `deskgate serve` would leave one behind per GnuPG home. Should
        anything still need it, the next gpg call simply starts a new one.
        """
        with self._lock:
            used, self._gpg = self._gpg is not None, None
        gpgconf = shutil.which("gpgconf")
        if not used or gpgconf is None:
            return
        try:
            subprocess.run([gpgconf, "--homedir", str(self.home), "--kill", "gpg-agent"],
                           capture_output=True, check=False, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("could not stop gpg-agent", home=str(self.home), error=str(exc))

    def _agent_conf(self) -> None:
        """A cheap KDF for the agent's copy of secret keys (unless the admin wrote a conf).

        The passphrase is stored next to the key so the gateway can work unattended;
        a slow KDF would only cost ~1 s per message without adding protection.
        """
        conf = self.home / "gpg-agent.conf"
        if not conf.exists():
            conf.write_text("# written by deskgate: see README, S/MIME and PGP\n"
                            "s2k-count 65536\n")

    def all_keys(self) -> list[PgpKey]:
        if not self.available():
            return []
        stamp = mtimes(self.home / "pubring.kbx", self.home / "pubring.gpg",
                       self.home / "private-keys-v1.d", self.home / self.PASS_DIR)
        with self._lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        keys = self._list()
        with self._lock:
            self._cache = (stamp, keys)
        return keys

    def _list(self) -> list[PgpKey]:
        gpg = self.gpg
        # A listing gpg did not finish is not kept as "no keys": that would read as
        # "no key" (a refusal, or a plain copy) until the keyring changes.
        secret_keys = gpg.list_keys(secret=True)
        _check_listing(secret_keys)
        secret = {k["fingerprint"] for k in secret_keys}
        public = gpg.list_keys()
        _check_listing(public)
        out: list[PgpKey] = []
        now = dt.datetime.now(dt.UTC)
        for k in public:
            uids = tuple(k.get("uids") or ())
            expires = None
            if k.get("expires"):
                expires = dt.datetime.fromtimestamp(int(k["expires"]), dt.UTC)
            cap = k.get("cap", "")
            subs: list[str] = []
            for sk in k.get("subkeys") or ():
                subs += [s for s in (sk[0], sk[2]) if s]
            out.append(PgpKey(
                fingerprint=k["fingerprint"], uids=uids,
                addresses=tuple(a for a in (_uid_email(u) for u in uids) if a),
                expires=expires, secret=k["fingerprint"] in secret,
                expired=k.get("trust") == "e" or bool(expires and expires < now),
                revoked=k.get("trust") == "r", can_encrypt="E" in cap, can_sign="S" in cap,
                subkeys=(k.get("keyid", ""), *subs), disabled="D" in cap))
        return out

    def find(self, address: str, *, secret: bool = False, encrypt: bool = False,
             sign: bool = False) -> list[PgpKey]:
        address = address.lower()
        return [k for k in self.all_keys() if address in k.addresses and (not secret or k.secret)
                and (not encrypt or k.can_encrypt) and (not sign or k.can_sign)]

    def lookup(self, ident: str) -> list[PgpKey]:
        ident_u = ident.replace(" ", "").upper()
        return [k for k in self.all_keys() if ident.lower() in k.addresses
                or (len(ident_u) >= 8 and (k.fingerprint.endswith(ident_u)
                                           or k.fingerprint.startswith(ident_u)))]

    def by_keyid(self, keyid: str) -> PgpKey | None:
        keyid = keyid.upper()
        for k in self.all_keys():
            if k.fingerprint.endswith(keyid) or any(s.upper().endswith(keyid) for s in k.subkeys):
                return k
        return None

    def passphrase_path(self, fpr: str) -> Path:
        return self.home / self.PASS_DIR / fpr

    def passphrase(self, fpr: str) -> str | None:
        p = self.passphrase_path(fpr)
        if not p.exists():
            return None
        return read_passphrase(p).decode("utf-8")

    # ------------------------------------------------------------ admin

    def import_(self, data: bytes, passphrase: str | None = None) -> list[PgpKey]:
        """Import every key in data, all or nothing: when one is refused (a protected
        secret key without its passphrase, a wrong one) or a step fails, the keys this
        import added and the passphrase files it wrote are removed again and the error
        says so. A key that was there before stays (gpg may have merged new user ids
        or signatures from the file into it)."""
        gpg = self.gpg
        before = {k.fingerprint: k.secret for k in self.all_keys()}
        res = gpg.import_keys(data)
        fprs = list(dict.fromkeys(res.fingerprints))
        if not fprs:
            raise KeyStoreError("no OpenPGP key found in the file"
                                + (f" ({res.stderr.strip().splitlines()[-1]})"
                                   if res.stderr.strip() else ""))
        written: dict[Path, bytes | None] = {}     # passphrase files: what they held
        try:
            self._cache = None
            keys = [k for k in self.all_keys() if k.fingerprint in fprs]
            for k in keys:
                if not k.secret:
                    continue
                if not self._can_sign(k.fingerprint, passphrase):
                    raise KeyStoreError(
                        f"{k.fingerprint}: wrong passphrase for the secret key" if passphrase
                        else f"{k.fingerprint}: the secret key is protected; give its "
                             "passphrase (--passphrase-file)")
                if passphrase:
                    path = self.passphrase_path(k.fingerprint)
                    written.setdefault(path, path.read_bytes() if path.exists() else None)
                    write_private(path, passphrase.encode() + b"\n")
                    (self.home / self.PASS_DIR).chmod(0o700)
            self._cache = None
            return [k for k in self.all_keys() if k.fingerprint in fprs]
        except (KeyStoreError, OSError) as exc:
            why = str(exc) if isinstance(exc, KeyStoreError) else \
                f"cannot write {exc.filename}: {exc.strerror or exc}"
            left = self._undo_import(fprs, before, written)
            text = (f"{why}; nothing was imported" if not left else
                    f"{why}; the import was not undone completely: {'; '.join(left)}")
            # GpgUnavailable stays what it is: the CLI and the dashboard say "try later"
            cls = type(exc) if isinstance(exc, KeyStoreError) else KeyStoreError
            raise cls(text) from None

    def _undo_import(self, fprs: list[str], before: dict[str, bool],
                     written: dict[Path, bytes | None]) -> list[str]:
        """Remove what a failed import added: the keys that were not there, the secret
        parts of keys that had none, the passphrase files it wrote (put back as they
        were). What could not be undone, one text each."""
        left: list[str] = []
        for path, old in written.items():
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    write_private(path, old)
            except OSError as exc:
                left.append(f"{path}: {exc.strerror or exc}")
        self._cache = None
        try:
            now = {k.fingerprint: k.secret for k in self.all_keys()}
        except KeyStoreError as exc:
            return [*left, f"the keys {', '.join(f for f in fprs if f not in before)} may "
                    f"be left ({exc})"]
        gpg = self.gpg
        for fpr in fprs:
            if fpr not in now:
                continue
            try:
                if now[fpr] and not before.get(fpr):
                    _check_deletion(gpg.delete_keys(fpr, secret=True,
                                                    expect_passphrase=False),
                                    f"the secret key {fpr}", [])
                if fpr not in before:
                    _check_deletion(gpg.delete_keys(fpr), f"the key {fpr}", [])
            except KeyStoreError as exc:
                left.append(str(exc))
        self._cache = None
        return left

    def _can_sign(self, fpr: str, passphrase: str | None) -> bool:
        res = self.gpg.sign(b"deskgate passphrase check", keyid=fpr, passphrase=passphrase,
                            detach=True, extra_args=["--pinentry-mode", "loopback"])
        return bool(res.data)

    def remove(self, ident: str) -> list[PgpKey]:
        """Remove the keys matching ident (secret key, public key, stored passphrase).

        Raises GpgUnavailable when gpg gave no answer to a deletion (timed out, or
        exited non-zero without saying why) and KeyStoreError when it refused one
        (DELETE_PROBLEM); the message names the key that was not removed and any
        removed before it.
        """
        found = self.lookup(ident)
        gpg = self.gpg
        done: list[str] = []
        try:
            for k in found:
                if k.secret:
                    _check_deletion(gpg.delete_keys(k.fingerprint, secret=True,
                                                    expect_passphrase=False),
                                    f"the secret key {k.fingerprint}", done)
                    done.append(f"the secret key {k.fingerprint}")
                _check_deletion(gpg.delete_keys(k.fingerprint), f"the key {k.fingerprint}",
                                done)
                done.append(f"the key {k.fingerprint}")
                self.passphrase_path(k.fingerprint).unlink(missing_ok=True)
        finally:
            self._cache = None
        return found


def _check_deletion(res: Any, what: str, done: list[str]) -> None:
    """Raise unless gpg answered that this deletion was done."""
    before = f" ({', '.join(done)} was removed before that)" if done else ""
    status = str(getattr(res, "status", "ok") or "ok")
    rc = getattr(res, "returncode", 0)
    if timed_out(res):
        raise GpgUnavailable(f"{what} was not removed: gpg did not answer within "
                             f"{GPG_TIMEOUT} s{before}")
    if status != "ok":           # DELETE_PROBLEM: gpg's reason
        raise KeyStoreError(f"{what} was not removed: gpg: {status}{before}")
    if rc:
        last = (getattr(res, "stderr", "") or "").strip().splitlines()[-1:]
        raise GpgUnavailable(f"{what} was not removed: gpg failed (exit status {rc})"
                             + (f": {last[0][:200]}" if last else "") + before)
