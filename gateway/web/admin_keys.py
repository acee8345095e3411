"""The admin page of the key stores: S/MIME and PGP keys listed, imported, removed.

Imports go through the same store code as `deskgate keys ... import` (the
uploaded files are written to a private temporary directory first, as the CLI
reads files); a passphrase is kept where that code keeps it and never logged.
After a change the gateway reloads so every process sees the new keys; when it
refuses to (the stores no longer validate, or the configuration does not), the
store is put back as it was before the change, as a configuration save puts its
files back.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import confedit
from gateway.crypto.keystore import KeyStoreError, stores_for
from gateway.crypto.pgpkeyring import GpgUnavailable
from gateway.privatefiles import put_back
from gateway.web.admin import reload_outcome
from gateway.web.requestkeys import CLIENT

if TYPE_CHECKING:
    from gateway.web.admin import AdminPages

MAX_KEY_FILE = 512 * 1024
MAX_REASON = 2000               # characters of a refused reload's errors shown

# Every regular file under a store's directory: path -> (bytes, mode).
Snapshot = dict[Path, tuple[bytes, int]]


def snapshot(root: Path) -> Snapshot:
    """The regular files under root with their bytes and modes (symlinks, sockets
    and the like are neither read nor touched)."""
    out: Snapshot = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
                if stat.S_ISREG(st.st_mode):
                    out[p] = (p.read_bytes(), stat.S_IMODE(st.st_mode))
            except FileNotFoundError:
                continue
    return out


def restore(root: Path, before: Snapshot) -> None:
    """Put the files under root back as `snapshot` found them: files added since are
    removed, changed or removed ones written back (atomically, with their mode)."""
    now = snapshot(root)
    for p in now.keys() - before.keys():
        p.unlink(missing_ok=True)
    for p, (data, mode) in before.items():
        if now.get(p) == (data, mode):
            continue
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        put_back(p, data, mode)


def refusal_reason(conf_dir: Path) -> str:
    """Why the configuration (key stores included) does not load, "" when it does
    (the reload failed for another reason, which the communication log holds)."""
    from gateway.config import load_config
    from gateway.errors import ConfigErrors

    try:
        load_config(conf_dir)
    except ConfigErrors as exc:
        text = str(exc)
        return text if len(text) <= MAX_REASON else text[:MAX_REASON] + " …"
    return ""


def _upload(form: Any, name: str) -> bytes | None:
    """The bytes of an uploaded file field, None when none was chosen."""
    f = form.get(name)
    if f is None or isinstance(f, str) or not getattr(f, "filename", ""):
        return None
    data: bytes = f.file.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise KeyStoreError(f"{f.filename}: larger than {MAX_KEY_FILE // 1024} KiB")
    return data


class KeysPage:
    def __init__(self, admin: AdminPages) -> None:
        self.admin = admin
        self.dash = admin.dash

    async def page(self, request: web.Request, *, error: str = "", done: list[str] | None = None,
                   status: int = 200, restart_needed: list[str] | None = None
                   ) -> web.Response:
        cfg = self.dash.gw.config

        def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
            stores = stores_for(cfg)
            try:
                smime = [e.as_dict() for e in stores.smime.entries()]
                try:
                    pgp = [k.as_dict() for k in stores.pgp.all_keys()] \
                        if stores.pgp.available() else []
                except GpgUnavailable as exc:     # timed out, failed, not started
                    return smime, [], str(exc)
                return smime, pgp, ""
            finally:
                stores.close()

        smime, pgp, pgp_error = await asyncio.get_running_loop().run_in_executor(
            self.dash.pool, read)
        if pgp_error:
            # The S/MIME part still shows; a temporary failure is 503 unless the page
            # already reports another outcome (a refusal, a change that was made).
            error = "; ".join(filter(None, (
                error, f"the PGP keys cannot be listed now ({pgp_error}); try again later")))
            if status == 200 and not done:
                status = 503
        return self.dash.render(request, "admin_keys.html", title="Keys", status=status,
                                smime=smime, pgp=pgp, error=error,
                                done=done or [], restart_needed=restart_needed or [])

    async def show(self, request: web.Request) -> web.Response:
        return await self.page(request)

    async def post(self, request: web.Request) -> web.Response:
        form = await request.post()
        action = str(form.get("action", ""))
        passphrase = str(form.get("passphrase", "")).rstrip("\r\n")
        cfg = self.dash.gw.config
        try:
            uploads = {n: _upload(form, n) for n in ("cert", "key", "pgp_key")}
        except KeyStoreError as exc:
            return await self.page(request, error=str(exc), status=422)

        def run() -> list[str]:
            stores = stores_for(cfg)
            try:
                if action == "smime-import":
                    cert = uploads["cert"]
                    if cert is None:
                        raise KeyStoreError("choose a certificate file (PEM, DER or PKCS#12)")
                    with tempfile.TemporaryDirectory(prefix="deskgate-key-") as tmp:
                        cert_path = Path(tmp) / "upload.cert"
                        cert_path.write_bytes(cert)
                        cert_path.chmod(0o600)
                        key_path = None
                        if uploads["key"] is not None:
                            key_path = Path(tmp) / "upload.key"
                            key_path.write_bytes(uploads["key"])
                            key_path.chmod(0o600)
                        e = stores.smime.import_(cert_path, key_path,
                                                 passphrase.encode() or None)
                    d = e.as_dict()
                    return [f"S/MIME {d['fingerprint']} ({', '.join(d['addresses'])}) imported"
                            + (" with its private key" if d["private_key"] else "")]
                if action == "pgp-import":
                    data = uploads["pgp_key"]
                    if data is None:
                        raise KeyStoreError("choose a key file (armored or binary)")
                    keys = stores.pgp.import_(data, passphrase or None)
                    return [f"PGP {k.fingerprint} imported" for k in keys]
                if action in ("smime-remove", "pgp-remove"):
                    ident = str(form.get("id", ""))
                    store: Any = stores.smime if action == "smime-remove" else stores.pgp
                    removed = store.remove(ident) if ident else []
                    if not removed:
                        raise KeyStoreError(f"nothing matches {ident!r}")
                    kind = "S/MIME" if action == "smime-remove" else "PGP"
                    return [f"{kind} {e.fingerprint} removed" for e in removed]
                raise KeyStoreError(f"unknown action {action!r}")
            finally:
                stores.close()

        c = cfg.crypto
        root = cfg.path(c.smime_dir if action.startswith("smime-") else c.gnupg_home)
        loop = asyncio.get_running_loop()
        async with self.admin.lock:     # not in the middle of a configuration save
            try:
                before = await loop.run_in_executor(self.dash.pool, snapshot, root)
                done = await loop.run_in_executor(self.dash.pool, run)
            except GpgUnavailable as exc:     # not the upload's fault: nothing changed
                return await self.page(request, error=f"{exc}; nothing was changed, try "
                                       "again later", status=503)
            except (KeyStoreError, OSError, ValueError) as exc:
                return await self.page(request, error=str(exc), status=422)
            if not await self.dash.gw.reload():
                # The runtime refused the changed store: put it back, as a save does.
                reason = await loop.run_in_executor(
                    self.dash.pool, refusal_reason, cfg.conf_dir)
                why = reason or "see the communication log"
                try:
                    await loop.run_in_executor(self.dash.pool, restore, root, before)
                except OSError as exc:
                    return await self.page(request, status=500, error=(
                        f"the gateway refused to reload with the changed key store ({why}), "
                        f"and putting the store back failed ({exc}): {root} holds the "
                        "change; fix the cause and reload"))
                return await self.page(request, status=422, error=(
                    f"the gateway refused to reload with the changed key store; it was put "
                    f"back as it was, nothing was changed: {why}"))
            self.dash.gw.reload_others()     # new stores in every process
            # Settings changed in conf.d meanwhile that the reload could not apply.
            restart = reload_outcome(self.dash.gw).get("restart_needed", [])
        self.admin.record(request_user(request), f"keys {action}",
                          confedit.Edit(changes=done), client=request.get(CLIENT, ""))
        return await self.page(request, done=done, restart_needed=[
            str(k) for k in restart] if isinstance(restart, list) else [])


def request_user(request: web.Request) -> str:
    from gateway.web.requestkeys import USER

    return str(request.get(USER, ""))
