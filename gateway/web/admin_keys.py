"""The admin page of the key stores: S/MIME and PGP keys listed, imported, removed.

Imports go through the same store code as `deskgate keys ... import` (the
uploaded files are written to a private temporary directory first, as the CLI
reads files); a passphrase is kept where that code keeps it and never logged.
After a change the gateway reloads so every process sees the new keys.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway import confedit
from gateway.crypto.keystore import KeyStoreError, stores_for

if TYPE_CHECKING:
    from gateway.web.admin import AdminPages

MAX_KEY_FILE = 512 * 1024


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
                   status: int = 200) -> web.Response:
        cfg = self.dash.gw.config

        def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            stores = stores_for(cfg)
            try:
                pgp = [k.as_dict() for k in stores.pgp.all_keys()] \
                    if stores.pgp.available() else []
                return [e.as_dict() for e in stores.smime.entries()], pgp
            finally:
                stores.close()

        smime, pgp = await asyncio.get_running_loop().run_in_executor(
            self.dash.pool, read)
        return self.dash.render(request, "admin_keys.html", title="Keys", status=status,
                                smime=smime, pgp=pgp, error=error,
                                done=done or [])

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

        async with self.admin.lock:     # not in the middle of a configuration save
            try:
                done = await asyncio.get_running_loop().run_in_executor(self.dash.pool, run)
            except (KeyStoreError, OSError, ValueError) as exc:
                return await self.page(request, error=str(exc), status=422)
            if await self.dash.gw.reload():    # new stores in every process
                self.dash.gw.reload_others()
        self.admin.record(request_user(request), f"keys {action}",
                          confedit.Edit(changes=done))
        return await self.page(request, done=done)


def request_user(request: web.Request) -> str:
    from gateway.web.requestkeys import USER

    return str(request.get(USER, ""))
