"""check_account: connect, TLS, authenticate, open the folder, count; fetch nothing.

A verdict per step (DNS, TCP, TLS certificate, authentication, folder), so an
operator sees where it breaks. Blocking; `deskgate accounts check` builds on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gateway.commlog import CommObj
from gateway.config import AccountConfig, Config
from gateway.inbound.poller import state
from gateway.inbound.poller.imap import ImapSession
from gateway.inbound.poller.lease import refresh_lock
from gateway.inbound.poller.oauth2 import TokenSource
from gateway.inbound.poller.pop3 import Pop3Session
from gateway.inbound.poller.session import STEPS, MailboxError, plural, resolve

STEP_NAMES = {"dns": "DNS", "tcp": "TCP", "tls": "TLS certificate", "auth": "authentication",
              "folder": "folder"}


@dataclass
class StepVerdict:
    step: str                 # dns | tcp | tls | auth | folder
    ok: bool | None           # None: not reached (an earlier step failed) or not applicable
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "name": STEP_NAMES[self.step], "ok": self.ok,
                "detail": self.detail}


@dataclass
class CheckResult:
    account: str
    type: str
    host: str
    port: int
    ok: bool = False
    messages: int | None = None
    steps: list[StepVerdict] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)   # (priority, key, value)

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "type": self.type, "host": self.host,
                "port": self.port, "ok": self.ok, "messages": self.messages,
                "steps": [s.as_dict() for s in self.steps]}

    def step(self, name: str) -> StepVerdict:
        return next(s for s in self.steps if s.step == name)


def check_account(account: AccountConfig, config: Config | None = None, *,
                  engine: Engine | None = None) -> CheckResult:
    """Run the connection steps once; never raises for mailbox problems.

    `config` gives the root for relative paths (tls_ca_file) and, for OAuth2
    accounts, the database where rotated refresh tokens are kept (or pass `engine`).
    """
    root = config.root if config is not None else Path.cwd()
    host, port = account.host, account.effective_port
    res = CheckResult(account.name, account.type, host, port)
    obj = CommObj("Connection")
    own_engine = None
    token = None
    if account.oauth2 is not None:
        if engine is None and config is not None:
            from gateway.store.db import make_engine, migrate

            engine = own_engine = make_engine(config.database_url,
                                              fast_path=config.store.fast_path)
            migrate(engine)
        run_dir = config.state_dir / "run" if config is not None else None
        token = _token_source(account, root, engine, run_dir).get
    cls = ImapSession if account.type.startswith("imap") else Pop3Session
    session = cls(account, root, obj, token)
    if isinstance(session, ImapSession):
        session.readonly = True     # EXAMINE: a check changes nothing, not even \Recent
    reached: dict[str, str] = {}
    try:
        addrs = resolve(host, port)
        reached["dns"] = f"{host} resolves to {', '.join(addrs)}"
        session.connect()
        reached["tcp"] = f"connected to {host}:{port}"
        tls = account.type not in ("imap", "pop3")
        reached["tls"] = (_tls_detail(session) if tls else
                          "no TLS: plaintext allowed by allow_plaintext = true")
        session.authenticate()
        reached["auth"] = f"logged in as {account.login}" + (
            " with XOAUTH2" if account.oauth2 is not None else "")
        res.messages = session.select()
        reached["folder"] = (f"{account.folder}: {plural(res.messages, 'message')}"
                             if account.type.startswith("imap")
                             else f"maildrop: {plural(res.messages, 'message')}")
        res.ok = True
        failed: MailboxError | None = None
    except MailboxError as exc:
        failed = exc
    except OSError as exc:  # anything the sessions did not classify
        failed = MailboxError("tcp", str(exc))
    finally:
        with contextlib.suppress(Exception):
            session.finish() if res.ok else session.abort()
        if own_engine is not None:
            own_engine.dispose()
    if failed is not None and failed.step in STEPS:
        # Implicit TLS connects and handshakes in one call: a TLS failure means TCP worked.
        for step in STEPS[:STEPS.index(failed.step)]:
            reached.setdefault(step, f"connected to {host}:{port}" if step == "tcp" else "ok")
    for step in STEPS:
        if step in reached:
            ok: bool | None = True
            if step == "tls" and account.type in ("imap", "pop3"):
                ok = None
            res.steps.append(StepVerdict(step, ok, reached[step]))
        elif failed is not None and failed.step == step:
            res.steps.append(StepVerdict(step, False, failed.reason))
            failed = None
        else:
            res.steps.append(StepVerdict(step, None, "not reached"))
    if failed is not None:   # a step outside the list (should not happen): keep the reason
        res.steps.append(StepVerdict("folder", False, failed.reason))
    res.log = [(e.priority, e.key, e.value) for e in obj.entries]
    return res


def _tls_detail(session: Any) -> str:
    conn = getattr(session, "imap", None) or getattr(session, "pop", None)
    from gateway.inbound.poller.session import describe_tls

    return describe_tls(getattr(conn, "sock", None))


def _token_source(account: AccountConfig, root: Path, engine: Engine | None,
                  run_dir: Path | None) -> TokenSource:
    def load(name: str) -> tuple[str, str] | None:
        if engine is None:
            return None
        with engine.connect() as conn:
            return state.stored_refresh_token(conn, name)

    def save(name: str, token: str, fp: str) -> None:
        if engine is None:
            raise MailboxError("auth", "OAuth2: the token endpoint rotated the refresh token "
                               "but no database was given to keep it")
        with engine.begin() as conn:
            state.store_refresh_token(conn, name, token, fp)

    if engine is None or run_dir is None:
        return TokenSource(account, root, load, save)
    db, where = engine, run_dir   # a refresh waits for one of `serve` or another check
    return TokenSource(account, root, load, save,
                       guard=lambda: refresh_lock(db, where, account.name))
