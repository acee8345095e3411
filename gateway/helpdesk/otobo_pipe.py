"""[helpdesk] type = "otobo-postmaster": pipe each message into OTOBO's PostMaster.

The command (normally `otobo.Console.pl Maint::PostMaster::Read`, without
`--untrusted`) reads the message on stdin. deskgate's decisions travel as
X-OTOBO-* headers (X-OTRS-* for Znuny/OTRS: the first configured prefix that is
not X-Deskgate-): every header with a configured prefix is removed from the
message first, so only deskgate's values reach the helpdesk, which trusts them.
The console prints no ticket number, so a delivery answers without ids.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Sequence
from email.header import Header
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.helpdesk.base import Delivered, HandoffError, HandoffItem, one_line
from gateway.helpdesk.mime import (
    add_reference,
    header_lines,
    relabel_charsets,
    safe_mime_filenames,
    split_head,
    strip_prefixed,
)
from gateway.inbound.ticket import is_set, is_true

EX_TEMPFAIL = 75
STDERR_TAIL = 600

# Header names OTOBO's PostMaster reads for a new ticket (PostmasterX-Header), in order.
NEW_TICKET = ("Queue", "Priority", "State", "State-PendingTime", "Type", "Service", "SLA",
              "Title", "Owner", "OwnerID", "Responsible", "ResponsibleID", "Lock",
              "CustomerNo", "CustomerUser", "SenderType", "IsVisibleForCustomer")
# ... and for a follow-up (OTOBO ignores the new-ticket ones there).
FOLLOW_UP = tuple(f"FollowUp-{n}" for n in (
    "Queue", "Priority", "State", "State-PendingTime", "State-Keep", "Type", "Service", "SLA",
    "Title", "Owner", "OwnerID", "Responsible", "ResponsibleID", "Lock", "SenderType",
    "IsVisibleForCustomer"))
# deskgate's ticket fields that complete the decisions of a new ticket.
_FROM_TICKET = {"Priority": "priority", "State": "state", "Title": "title",
                "CustomerUser": "customer_user", "CustomerNo": "customer_no"}


def canonical_prefix(prefixes: Sequence[str]) -> str:
    """The helpdesk's own spelling: the first prefix that is not X-Deskgate-."""
    for p in prefixes:
        if p.lower() != "x-deskgate-":
            return p
    return "X-OTOBO-"


def _from_article(name: str, item: HandoffItem) -> Any:
    """SenderType / IsVisibleForCustomer as the stored article has them ('' otherwise)."""
    if name == "SenderType":
        return item.article.get("sender_type", "")
    if name == "IsVisibleForCustomer":
        vis = item.article.get("is_visible_for_customer")
        return "" if vis is None else _yes(vis)
    return ""


def _yes(value: Any) -> str:
    return "1" if value in (True, 1, "1", "yes", "true") else "0"


def _truth(name: str, value: str, item: HandoffItem) -> str:
    """A yes/no decision in a form OTOBO reads as deskgate decided it: OTOBO keeps the
    state for any value but empty and 0 ('no' too) and stores a visibility flag as it
    is given, so the pipe sends 1 (or 0, or nothing), never the raw value."""
    if name == "FollowUp-State-Keep":
        return "1" if is_set(value) else ""
    # IsVisibleForCustomer / FollowUp-IsVisibleForCustomer: the stored article holds
    # deskgate's decision (missing or empty is visible)
    decided = _from_article("IsVisibleForCustomer", item)
    if decided:
        return str(decided)
    return ("1" if is_true(value) else "0") if value.strip() else ""


# The yes/no decisions rendered by _truth.
_TRUTHS = frozenset({"IsVisibleForCustomer", "FollowUp-IsVisibleForCustomer",
                     "FollowUp-State-Keep"})


def decision_headers(item: HandoffItem, config: Config) -> list[tuple[str, str]]:
    """deskgate's decisions as (name without prefix, value) in OTOBO's header names."""
    d = item.decisions
    hd = config.helpdesk
    out: list[tuple[str, str]] = []

    def put(name: str, value: Any) -> None:
        if value not in (None, ""):
            out.append((name, str(value)))

    if item.kind == "create":
        for name in NEW_TICKET:
            value: Any = d.get(name, "")
            if name == "Queue":
                value = item.queue or hd.helpdesk_queue(d.get("Queue", ""))
            elif name in _TRUTHS:
                value = _truth(name, value, item)
            elif name in _FROM_TICKET and not value:
                value = item.ticket.get(_FROM_TICKET[name], "")
            elif not value:
                value = _from_article(name, item)
            put(name, value)
        for key in sorted(d):
            if key.startswith("DynamicField-"):
                put(key, d[key])
    else:
        # OTOBO ignores X-OTOBO-Queue on a follow-up; should it not see one (its queue
        # rejects follow-ups, say), the new ticket still goes where deskgate routed.
        put("Queue", item.queue)
        for name in FOLLOW_UP:
            value = d.get(name, "")
            if name == "FollowUp-Queue" and value:
                value = hd.helpdesk_queue(value)
            elif name in _TRUTHS:
                value = _truth(name, value, item)
            elif not value:
                value = _from_article(name.removeprefix("FollowUp-"), item)
            put(name, value)
        for key in sorted(d):
            if key.startswith("FollowUp-DynamicField-"):
                put(key, d[key])
    # Whatever signal deskgate found (OTOBO's own check knows only Precedence, X-Loop,
    # Mailing-List and Auto-Submitted, not X-Autoreply, List-Id, X-Auto-Response-Suppress,
    # a DSN...) or a filter's Loop: yes: OTOBO sends no auto-response. A filter's Loop: no
    # sends none: OTOBO takes any X-OTOBO-Loop but empty and 0 as a loop ('no' too).
    if item.loop:
        put("Loop", "yes")
    out.extend(crypto_headers(item.crypto))
    return out


def crypto_headers(crypto: dict[str, Any]) -> list[tuple[str, str]]:
    """What deskgate's crypto found, in the names of OTOBO's Decrypt filter (its GetParam
    keys and article flags Crypted/CryptedOK/Signed/SignedOK)."""
    out: list[tuple[str, str]] = []
    method = {"smime": "S/MIME", "pgp": "PGP"}.get(str(crypto.get("method", "")), "")
    if crypto.get("decrypted"):
        out += [("BodyDecrypted", "yes"),
                ("Crypted", f"Successful decryption ({method})" if method
                 else "Successful decryption"),
                ("CryptedOK", "1")]
    elif crypto.get("encrypted"):
        out.append(("Crypted", f"Error while decrypting message! {crypto.get('error', '')}"
                    .strip()))
    if crypto.get("signed"):
        signer = str(crypto.get("signer", ""))
        if crypto.get("signature_valid") and crypto.get("partially_signed"):
            # text around an inline signed block: no "signed OK" flag for the article
            out.append(("Signed", (f"Good signature from {signer}, but " if signer
                                   else "Verification OK, but ")
                        + "only part of the message is signed (text outside the signed "
                        "block is marked UNSIGNED TEXT in the body deskgate stored)"))
        elif crypto.get("signature_valid"):
            out += [("Signed", f"Good signature from {signer}" if signer
                     else "Verification OK."), ("SignedOK", "1")]
        elif crypto.get("signature_valid") is None:
            out.append(("Signed", "Signed message, but unable to verify!"))
        else:
            text = f"Signature verification failed! {crypto.get('error', '')}".strip()
            out.append(("Signed", text + (f" (signed by {signer})" if signer else "")))
    return out


def followup_link(item: HandoffItem, mime: bytes
                  ) -> tuple[bytes, list[tuple[str, str, str]]]:
    """A follow-up's message with References naming the newest article of the ticket
    OTOBO took earlier, and the log entries saying so.

    OTOBO decides again whether mail is a follow-up, from what it can see: deskgate's
    link may be a Message-ID OTOBO never got (deskgate's auto-response) or deskgate's
    own ticket number; its References check (PostMaster::CheckFollowUpModule###0200-
    References) finds an article it has. Without one the message goes as it is, with
    a Notice: OTOBO may open a new ticket."""
    if item.kind != "followup":
        return mime, []
    mid = item.helpdesk_message_id
    if not mid:
        number = item.ticket.get("number") or item.ticket_id
        return mime, [("Notice", "Follow-up", (
            f"OTOBO may open a new ticket for this follow-up of ticket {number}: no "
            "article of the ticket handed over to OTOBO earlier has a Message-ID, so the "
            "piped message names none OTOBO knows in its References; OTOBO files it by "
            "what it finds itself (its ticket number in the Subject, References or "
            "In-Reply-To of an article it has)"))]
    linked = add_reference(mime, mid)
    if linked == mime:
        return mime, []
    return linked, [("Info", "References", (
        f"{mid} added (the newest article of the ticket OTOBO took earlier), so OTOBO "
        "files the follow-up into that ticket"))]


def rewrite_headers(mime: bytes, prefixes: Sequence[str],
                    headers: Sequence[tuple[str, str]]) -> bytes:
    """Drop every header with one of `prefixes`, append `headers` (full names), keep the
    rest of the message byte for byte."""
    head, sep, body = split_head(strip_prefixed(mime, prefixes))
    eol = "\r\n" if b"\r\n" in head[:4096] else "\n"
    if not sep:
        head, sep = head.rstrip(b"\r\n"), (eol + eol).encode()
    added = "".join(eol + encode_header(n, v, eol) for n, v in headers).encode("ascii")
    return head + added + sep + body


def encode_header(name: str, value: str, eol: str = "\n") -> str:
    """'Name: value' on one logical line: control characters as spaces, whitespace
    collapsed (no CR/LF can get in), RFC 2047 words for non-ASCII, folded."""
    value = one_line(value)
    try:
        value.encode("ascii")
        charset = "us-ascii"
    except UnicodeEncodeError:
        charset = "utf-8"
    return f"{name}: " + Header(value, charset, header_name=name).encode(linesep=eol)


def one_line_subject(mime: bytes) -> bytes:
    """The message with a Subject whose decoded text holds line breaks or control
    characters (encoded words may carry any: =0A, =07) written again on one line
    (gateway.helpdesk.base.one_line); OTOBO dropped a line break, joining the words
    around it, and kept the others in the article's subject. `mime` itself otherwise."""
    from gateway.inbound.parse import decode_header_value

    head, sep, body = split_head(mime)
    eol = "\r\n" if b"\r\n" in head[:4096] else "\n"
    lines = header_lines(head)
    changed = False
    for i, line in enumerate(lines):
        name, colon, raw = line.partition(b":")
        if not colon or name.strip().lower() != b"subject":
            continue
        # NUL as U+FFFD, as deskgate stores the subject (and the X-OTOBO-Title of it)
        text = decode_header_value(raw.decode("ascii", "surrogateescape").strip()
                                   ).replace("\x00", "\ufffd")
        folded_tab = "\t" in text and b"\t" in raw       # a tab as sent, not encoded
        if not any(c != "\t" and not c.isprintable() for c in text) and (
                "\t" not in text or folded_tab):
            continue
        lines[i] = (encode_header("Subject", text, eol) + eol).encode("ascii")
        changed = True
    if not changed:
        return mime
    return b"".join(lines).rstrip(b"\r\n") + sep + body


class OtoboPostmaster:
    """Pipe each hand-off into the PostMaster command; exit 0 = taken."""

    type = "otobo-postmaster"

    def __init__(self, config: Config) -> None:
        self.config = config
        hd = config.helpdesk
        self.argv = list(hd.command)
        if self.argv and not Path(self.argv[0]).is_absolute() and "/" in self.argv[0]:
            self.argv[0] = str(config.path(self.argv[0]))
        self.timeout = hd.timeout
        self.user = hd.user or None
        self.group = hd.group or None
        self.prefix = canonical_prefix(config.gateway.header_prefixes)
        self.account = " ".join(self.argv)

    # ------------------------------------------------------------ deliver

    def render(self, item: HandoffItem) -> tuple[bytes, list[tuple[str, str]]]:
        """The message as OTOBO gets it (prefixed headers replaced by deskgate's, a
        follow-up's References naming an article OTOBO has), and the headers written."""
        message, headers, _ = self._render(item)
        return message, headers

    def _render(self, item: HandoffItem
                ) -> tuple[bytes, list[tuple[str, str]], list[tuple[str, str, str]]]:
        headers = [(self.prefix + n, v) for n, v in decision_headers(item, self.config)]
        mime, log = followup_link(
            item, one_line_subject(relabel_charsets(safe_mime_filenames(item.mime))))
        return (rewrite_headers(mime, self.config.gateway.header_prefixes, headers),
                headers, log)

    def deliver(self, item: HandoffItem) -> Delivered:
        message, headers, linked = self._render(item)
        code, out, err = self._run(self.argv, message)
        log = [("Info", "Headers", ", ".join(f"{n}: {v}" for n, v in headers)), *linked]
        if code == 0:
            tail = _tail(out + err)
            if tail:
                log.append(("Debug", "Output", tail))
            return Delivered(detail=f"piped to {_short(self.argv)} (exit 0)", log=log)
        if code == EX_TEMPFAIL:
            raise HandoffError(f"{_short(self.argv)} exited 75 (EX_TEMPFAIL, try again later)"
                               + _colon(_tail(err) or _tail(out)), temporary=True)
        if code < 0:
            raise HandoffError(f"{_short(self.argv)} was killed by signal {-code}"
                               + _colon(_tail(err)), temporary=True)
        raise HandoffError(f"{_short(self.argv)} exited {code}" + _colon(_tail(err) or _tail(out)),
                           temporary=True)

    def _run(self, argv: list[str], stdin: bytes,
             timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Run argv (no shell) with stdin; kill its process group on timeout."""
        if not argv:
            raise HandoffError("[helpdesk] command is empty", temporary=True)
        limit = self.timeout if timeout is None else timeout
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    user=self.user, group=self.group)
        except (OSError, ValueError, KeyError) as exc:
            raise HandoffError(f"cannot run {argv[0]}: {exc}", temporary=True) from exc
        try:
            out, err = proc.communicate(stdin, timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise HandoffError(f"{_short(argv)} did not finish within {limit:g} s (killed)"
                               + _colon(_tail(err)), temporary=True) from None
        return proc.returncode, out, err

    # ------------------------------------------------------------ check

    def check(self) -> list[tuple[str, str, str]]:
        """The command exists and runs; OTOBO reaches its database."""
        res: list[tuple[str, str, str]] = []
        if not self.argv:
            return [("fail", "command", "[helpdesk] command is empty")]
        exe = self.argv[0] if "/" in self.argv[0] else shutil.which(self.argv[0])
        if not exe or not Path(exe).is_file():
            return [("fail", "command", f"{self.argv[0]} not found")]
        if not os.access(exe, os.X_OK):
            return [("fail", "command", f"{exe} is not executable")]
        res.append(("ok", "command", f"{exe} is executable"))
        for what, name in (("user", self.user), ("group", self.group)):
            if name:
                try:
                    (pwd.getpwnam if what == "user" else grp.getgrnam)(name)
                    res.append(("ok", what, f"runs as {what} {name}"))
                except KeyError:
                    res.append(("fail", what, f"no such {what}: {name}"))
                    return res
        if "--untrusted" in self.argv:
            res.append(("fail", "trust", "the command has --untrusted: OTOBO would ignore "
                        f"deskgate's {self.prefix}* headers (queue, priority, ...)"))
        if "Maint::PostMaster::Read" not in self.argv:
            res.append(("warn", "otobo", "not an OTOBO PostMaster::Read command; "
                        "not run (nothing harmless to try)"))
            return res
        argv = [a for a in self.argv if a not in ("--untrusted",)]
        i = argv.index("Maint::PostMaster::Read")
        argv = [*argv[:i], "Maint::Database::Check",
                *[a for a in argv[i + 1:] if a == "--allow-root"]]
        try:
            code, out, err = self._run(argv, b"", timeout=min(self.timeout, 60))
        except HandoffError as exc:
            res.append(("fail", "otobo", str(exc)))
            return res
        text = _tail(out + err) or "(no output)"
        res.append(("ok" if code == 0 else "fail", "otobo",
                     f"{_short(argv)}: exit {code}: {text}"))
        return res

    def close(self) -> None:
        return None


def _short(argv: Sequence[str]) -> str:
    """'otobo.Console.pl Maint::PostMaster::Read' for messages (no directories)."""
    return " ".join([Path(argv[0]).name, *argv[1:2]]) if argv else ""


def _tail(data: bytes) -> str:
    """The output on one line; when long its start (OTOBO's error message) and its end."""
    text = " ".join(data.decode("utf-8", "replace").split())
    if len(text) <= STDERR_TAIL:
        return text
    return text[:STDERR_TAIL // 2] + " ... " + text[-STDERR_TAIL // 2:]


def _colon(text: str) -> str:
    return f": {text}" if text else ""
