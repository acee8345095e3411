"""[helpdesk] type = "otobo-rest" / "znuny-rest": the GenericTicketConnectorREST web service.

A new ticket is a TicketCreate (POST /Ticket), a follow-up a TicketUpdate
(PATCH /Ticket/ID) with the article and the FollowUp- decisions. The agent logs in
once (SessionCreate) and the SessionID is reused until OTOBO refuses it.

Exactly once: every article carries the hand-off key in its history comment
("deskgate dg-..."); the operations do not store the Message-ID. On a retry the
connector first looks for that comment (TicketHistoryGet) on the recent tickets with
the item's title (create) or on the ticket (follow-up), and answers "found" instead
of creating again.
"""

from __future__ import annotations

import base64
import json
import math
import re
import ssl
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from gateway.config import Config
from gateway.helpdesk.base import Delivered, HandoffError, HandoffItem, one_line
from gateway.helpdesk.filenames import safe_filename
from gateway.helpdesk.http import opener, redirect_note, request
from gateway.inbound.ticket import is_set

Log = list[tuple[str, str, str]]
# Ticket attributes TicketCreate/TicketUpdate take by name, and the decision behind each.
TICKET_ATTRS = ("Title", "Queue", "State", "Priority", "Type", "Service", "SLA", "Owner",
                "Responsible", "Lock")
_PERMANENT = (".MissingParameter", ".InvalidParameter", ".WrongStructure")
_DF_CACHE_SECONDS = 300.0
_PENDING_REL = re.compile(r"^\+\s*(\d+)\s*([smhdw]?)$", re.IGNORECASE)
_PENDING_ABS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d)(?::\d\d)?$")
_UNIT_MINUTES = {"": 1 / 60, "s": 1 / 60, "m": 1, "h": 60, "d": 1440, "w": 10080}
# OTOBO's Ticket::Frontend::PendingDiffTime (86400 s): what its agent frontends add to
# now when an agent picks a pending state. TicketUpdate refuses a pending State
# without a PendingTime; TicketCreate would leave the ticket without a reminder time.
DEFAULT_PENDING_DIFF = 1440      # minutes
# The article's AutoResponseType for mail deskgate found looping. The operations insist on
# a valid type (their default "auto reply" / "auto follow up" answers the sender) and pass
# OTOBO no mail header, so no X-OTOBO-Loop; "auto remove" is a type OTOBO still lists but
# no longer sends itself, so a queue normally has no response of that type.
NO_AUTO_RESPONSE = "auto remove"
# The body of an article whose message has no text (as the RT hand-off sends it).
NO_TEXT = "(no text)"


class OtoboError(HandoffError):
    """OTOBO answered with Error{ErrorCode, ErrorMessage}."""

    def __init__(self, operation: str, code: str, message: str) -> None:
        temporary = not code.endswith(_PERMANENT)
        super().__init__(f"{operation}: {code}: {message}", temporary=temporary)
        self.code = code
        self.message = message

    @property
    def auth(self) -> bool:
        return self.code.endswith(".AuthFail")


def pending_time(value: str) -> dict[str, int] | None:
    """OTOBO's X-OTOBO-State-PendingTime forms ('+2d', '2026-12-24 10:00') as PendingTime."""
    v = value.strip()
    if m := _PENDING_REL.match(v):
        return {"Diff": max(1, math.ceil(int(m[1]) * _UNIT_MINUTES[m[2].lower()]))}
    if m := _PENDING_ABS.match(v):
        return dict(zip(("Year", "Month", "Day", "Hour", "Minute"), map(int, m.groups()),
                        strict=True))
    return None


def history_comment(marker: str, crypto: dict[str, Any]) -> str:
    """The article's history comment: the hand-off marker, then what deskgate's crypto
    found (the web service cannot set OTOBO's Crypted/Signed article flags)."""
    notes = []
    method = {"smime": "S/MIME", "pgp": "PGP"}.get(str(crypto.get("method", "")), "")
    if crypto.get("decrypted"):
        notes.append(f"decrypted ({method})" if method else "decrypted")
    if crypto.get("signed"):
        valid = crypto.get("signature_valid")
        state = "valid" if valid else "not verified" if valid is None else "INVALID"
        if valid and crypto.get("partially_signed"):
            state = "valid for part of the message only"
        signer = f" by {crypto['signer']}" if crypto.get("signer") else ""
        notes.append(f"signature {state}{signer}")
    text = f"%%{marker}" + (" (" + "; ".join(notes) + ")" if notes else "")
    return text[:200]      # ticket_history.name holds 200 characters


class OtoboRest:
    """TicketCreate / TicketUpdate through the GenericInterface REST transport."""

    def __init__(self, config: Config) -> None:
        hd = config.helpdesk
        self.config = config
        self.type = hd.type
        self.url = hd.url.rstrip("/")
        self.account = self.url
        self.user = hd.user
        self._password = str(hd.password or "")
        self.timeout = hd.timeout
        self._ssl: ssl.SSLContext | None = None
        if hd.tls_ca_file:
            self._ssl = ssl.create_default_context(cafile=str(config.path(hd.tls_ca_file)))
        self._opener = opener(self._ssl)
        self._session = ""
        self._lock = threading.Lock()
        self._dfs: tuple[float, frozenset[str]] | None = None

    # ------------------------------------------------------------ transport

    def _http(self, method: str, path: str, body: dict[str, Any] | None = None,
              query: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; transport failures and non-JSON answers are temporary errors."""
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310
            "Content-Type": "application/json; charset=utf-8", "Accept": "application/json"})
        op = f"{method} {path.split('?')[0]}"
        try:
            # [helpdesk] url is checked to be http:// or https:// when the config loads
            got = request(self._opener, req, self.timeout)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise HandoffError(f"{op}: cannot reach {self.url}: {reason}",
                               temporary=True) from None
        raw = got.body
        if (err := got.error) is not None:
            if note := redirect_note(err):
                raise HandoffError(f"{op}: OTOBO answered HTTP {err.code}{note}")
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("Error"), dict):
                return answer
            text = " ".join(raw.decode("utf-8", "replace").split())[:300]
            raise HandoffError(f"{op}: OTOBO answered HTTP {err.code} {err.reason}"
                               + (f": {text}" if text else ""),
                               temporary=err.code != 413)
        try:
            answer = json.loads(raw)
        except ValueError:
            raise HandoffError(f"{op}: OTOBO's answer is not JSON: "
                               + raw[:200].decode("utf-8", "replace"), temporary=True) from None
        if not isinstance(answer, dict):
            raise HandoffError(f"{op}: unexpected answer {answer!r:.200}", temporary=True)
        return answer

    def _login(self) -> str:
        """SessionCreate; the password goes in the body, never in a URL or a message."""
        answer = self._http("POST", "/Session", {"UserLogin": self.user,
                                                 "Password": self._password})
        if "Error" in answer:
            err = answer["Error"]
            raise HandoffError(f"SessionCreate: OTOBO refused the login of {self.user!r}: "
                               f"{err.get('ErrorCode', '')}: {err.get('ErrorMessage', '')}",
                               temporary=True)
        sid = str(answer.get("SessionID") or "")
        if not sid:
            raise HandoffError("SessionCreate: no SessionID in OTOBO's answer", temporary=True)
        return sid

    def _session_id(self, renew: bool = False) -> str:
        with self._lock:
            if renew or not self._session:
                self._session = self._login()
            return self._session

    def call(self, operation: str, method: str, path: str,
             body: dict[str, Any] | None = None,
             query: dict[str, Any] | None = None) -> dict[str, Any]:
        """An operation with the session; a refused session is renewed once."""
        for attempt in (0, 1):
            sid = self._session_id(renew=attempt == 1)
            if method == "GET":
                answer = self._http(method, path, None, {**(query or {}), "SessionID": sid})
            else:
                answer = self._http(method, path, {**(body or {}), "SessionID": sid}, query)
            err = answer.get("Error")
            if not isinstance(err, dict):
                return answer
            e = OtoboError(operation, str(err.get("ErrorCode", "")),
                           str(err.get("ErrorMessage", "")))
            if not e.auth or attempt == 1:
                raise e
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ small operations

    def ticket_get(self, ticket_id: str, **opts: Any) -> dict[str, Any]:
        answer = self.call("TicketGet", "GET", f"/Ticket/{urllib.parse.quote(ticket_id)}",
                           query=opts)
        tickets = answer.get("Ticket") or []
        if not tickets:
            raise HandoffError(f"TicketGet: ticket {ticket_id} not found", temporary=False)
        return dict(tickets[0])

    def ticket_state(self, ticket_id: str) -> tuple[str, str]:
        """(queue, priority) of a ticket in OTOBO now (the classifier's read-back)."""
        t = self.ticket_get(ticket_id)
        return str(t.get("Queue") or ""), str(t.get("Priority") or "")

    def search(self, **params: Any) -> list[str]:
        answer = self.call("TicketSearch", "GET", "/Ticket", query=params)
        ids = answer.get("TicketID") or []
        return [str(i) for i in (ids if isinstance(ids, list) else [ids])]

    def history_names(self, ticket_ids: list[str]) -> dict[str, list[str]]:
        """Ticket id → the Name (comment) of each of its history entries."""
        if not ticket_ids:
            return {}
        answer = self.call("TicketHistoryGet", "GET", "/TicketHistory/" + ",".join(ticket_ids))
        out: dict[str, list[str]] = {}
        for t in answer.get("TicketHistory") or []:
            out[str(t.get("TicketID"))] = [str(h.get("Name", "")) for h in t.get("History") or []]
        return out

    def dynamic_fields(self) -> frozenset[str] | None:
        """Names of OTOBO's valid ticket dynamic fields (TicketGet lists them all), cached;
        None when OTOBO has no ticket to ask about."""
        now = time.monotonic()
        if self._dfs and now - self._dfs[0] < _DF_CACHE_SECONDS:
            return self._dfs[1]
        ids = self.search(Limit=1)
        if not ids:
            return None
        t = self.ticket_get(ids[0], DynamicFields=1)
        names = frozenset(str(d.get("Name")) for d in t.get("DynamicField") or [])
        self._dfs = (now, names)
        return names

    # ------------------------------------------------------------ deliver

    def marker(self, item: HandoffItem) -> str:
        return f"deskgate {item.key}"

    def deliver(self, item: HandoffItem) -> Delivered:
        log: Log = []
        if item.kind == "followup":
            target = self._followup_target(item, log)
            if target:
                return self._followup(item, target, log)
            log.append(("Notice", "FollowUp", "no helpdesk ticket known for this follow-up: "
                        "creating a new ticket"))
        return self._create(item, log)

    def _create(self, item: HandoffItem, log: Log) -> Delivered:
        if item.attempts > 0:
            found = self._find_created(item)
            if found is not None:
                log.append(("Notice", "Found", f"ticket {found[1]} already holds hand-off "
                            f"{item.key} (an earlier attempt's answer was lost): not created "
                            "again"))
                return Delivered(found[0], found[1], "found", log)
        d = item.decisions
        ticket: dict[str, Any] = {}
        for name in TICKET_ATTRS:
            value = d.get(name, "")
            if name == "Queue":
                value = item.queue or self.config.helpdesk.helpdesk_queue(
                    value or self.config.postmaster.default_queue)
            if value:
                ticket[name] = value
        ticket["Title"] = self._title(item)
        ticket.setdefault("State", self.config.postmaster.default_state)
        ticket.setdefault("Priority", self.config.postmaster.default_priority)
        ticket["CustomerUser"] = (d.get("CustomerUser") or item.ticket.get("customer_user")
                                  or item.article.get("from_email") or item.article.get("from")
                                  or "")
        if d.get("CustomerNo"):
            ticket["CustomerID"] = d["CustomerNo"]
        state = ticket["State"]
        if d.get("State-PendingTime"):
            self._pending(ticket, "State-PendingTime", d["State-PendingTime"], state,
                          self._is_pending(state), log)
        if "PendingTime" not in ticket and self._is_pending(state):
            self._default_pending(ticket, "State-PendingTime", d.get("State-PendingTime", ""),
                                  state, log)
        body = self._payload(item, {k[13:]: v for k, v in d.items()
                                    if k.startswith("DynamicField-")}, log)
        body["Ticket"] = ticket
        answer = self._send("TicketCreate", "POST", "/Ticket", body, log)
        tid, tn = str(answer.get("TicketID", "")), str(answer.get("TicketNumber", ""))
        if not tid:
            raise HandoffError(f"TicketCreate: no TicketID in OTOBO's answer: {answer!r:.200}")
        log.append(("Info", "TicketCreate", f"ticket {tn} (id {tid}) in {ticket['Queue']}, "
                    f"article {answer.get('ArticleID', '')}"))
        return Delivered(tid, tn, "created", log)

    def _followup(self, item: HandoffItem, target: str, log: Log) -> Delivered:
        t = self.ticket_get(target)
        tn = str(t.get("TicketNumber", ""))
        if item.attempts > 0 and any(self.marker(item) in n for n in
                                     self.history_names([target]).get(target, [])):
            log.append(("Notice", "Found", f"ticket {tn} already holds hand-off {item.key}: "
                        "not added again"))
            return Delivered(target, tn, "found", log)
        d = item.decisions
        ticket: dict[str, Any] = {}
        for name in TICKET_ATTRS:
            value = d.get(f"FollowUp-{name}", "")
            if value:
                ticket[name] = (self.config.helpdesk.helpdesk_queue(value) if name == "Queue"
                                else value)
        # OTOBO's PostMaster: a follow-up moves a ticket that is not new to
        # PostmasterFollowUpState, unless FollowUp-State-Keep.
        keep = is_set(d.get("FollowUp-State-Keep", ""))
        if not keep and not ticket.get("State") and not str(t.get("StateType", "")).startswith(
                "new"):
            ticket["State"] = self.config.postmaster.followup_state
        if keep:
            ticket.pop("State", None)
        if d.get("FollowUp-State-PendingTime"):
            # the state the follow-up leaves the ticket in: the one it sets, else its own
            own = str(t.get("State") or "")
            state = ticket.get("State") or own
            pending = self._is_pending(state, str(t.get("StateType") or "") if state == own
                                       else "")
            self._pending(ticket, "FollowUp-State-PendingTime",
                          d["FollowUp-State-PendingTime"], state, pending, log)
            if "PendingTime" in ticket:
                # OTOBO's TicketUpdate sets a pending time only together with a State
                ticket.setdefault("State", state)
        self._pending_state_needs_time(ticket, t, d.get("FollowUp-State-PendingTime", ""), log)
        body = self._payload(item, {k[22:]: v for k, v in d.items()
                                    if k.startswith("FollowUp-DynamicField-")}, log)
        body["Article"]["HistoryType"] = "FollowUp"
        if ticket:
            body["Ticket"] = ticket
        answer = self._send("TicketUpdate", "PATCH", f"/Ticket/{urllib.parse.quote(target)}",
                            body, log)
        log.append(("Info", "TicketUpdate", f"article {answer.get('ArticleID', '')} on ticket "
                    f"{tn} (id {target})" + (f"; set {ticket}" if ticket else "")))
        return Delivered(target, tn, "updated", log)

    def _is_pending(self, state: str, otobo_type: str = "") -> bool:
        """Whether `state` is a pending state: its type in [postmaster.states], else
        the type OTOBO reported for it (a state deskgate does not list)."""
        known = self.config.postmaster.states.get(state)
        if known is not None:
            return known == "pending"
        return otobo_type.lower().startswith("pending")

    def _pending_state_needs_time(self, ticket: dict[str, Any], t: dict[str, Any],
                                  value: str, log: Log) -> None:
        """A follow-up that sets a pending state without a usable time: the ticket's own
        state is not sent again (it keeps its pending time, as in deskgate's store),
        another one gets OTOBO's default time (TicketUpdate refuses it without one)."""
        state = str(ticket.get("State") or "")
        if not state or "PendingTime" in ticket:
            return
        own = str(t.get("State") or "")
        if not self._is_pending(state, str(t.get("StateType") or "") if state == own else ""):
            return
        if state == own:
            ticket.pop("State")
        else:
            self._default_pending(ticket, "FollowUp-State-PendingTime", value, state, log)

    def _default_pending(self, ticket: dict[str, Any], key: str, value: str, state: str,
                         log: Log) -> None:
        """OTOBO's default pending time for a pending state that has no usable one."""
        ticket["PendingTime"] = {"Diff": DEFAULT_PENDING_DIFF}
        why = f"{value!r} is no pending time" if value.strip() else "no pending time given"
        log.append(("Notice", key, f"{why}: state {state!r} is a pending state, so OTOBO's "
                    "default pending time was sent: now + 24 hours (OTOBO's "
                    "Ticket::Frontend::PendingDiffTime 86400 s)"))

    def _pending(self, ticket: dict[str, Any], key: str, value: str, state: str,
                 pending: bool, log: Log) -> None:
        """PendingTime from `value`, for a pending state only (as deskgate's store)."""
        if not pending:
            log.append(("Notice", key, f"pending time {value!r} ignored: state {state!r} is "
                        "not a pending state"))
            return
        pt = pending_time(value)
        if pt is None:
            log.append(("Warn", "PendingTime", f"{value!r} is not a pending time OTOBO "
                        "takes (+2d or YYYY-MM-DD HH:MM): ignored"))
        else:
            ticket["PendingTime"] = pt

    def _payload(self, item: HandoffItem, dfs: dict[str, str], log: Log) -> dict[str, Any]:
        """Article, attachments and the known dynamic fields of an item."""
        a = item.article
        body, mime = str(a.get("body") or ""), "text/plain"
        if not body.strip() and a.get("body_html"):
            body, mime = str(a["body_html"]), "text/html"
        if not body.strip():
            # OTOBO trims every article field and refuses an empty Body (MissingParameter)
            body = NO_TEXT
            log.append(("Notice", "Article", f"the message has no text; OTOBO takes no "
                        f"article without one: {NO_TEXT!r} sent as its body"))
        vis = a.get("is_visible_for_customer")
        article: dict[str, Any] = {
            "CommunicationChannel": "Email",
            "SenderType": a.get("sender_type") or "customer",
            "IsVisibleForCustomer": 0 if vis in (False, 0, "0") else 1,
            "From": a.get("from") or "", "To": a.get("to") or "", "Cc": a.get("cc") or "",
            "ReplyTo": a.get("reply_to") or "",
            "Subject": one_line(str(a.get("subject") or "")) or "(no subject)",
            "Body": body, "MimeType": mime, "Charset": "utf-8",
            "ContentType": f"{mime}; charset=utf-8",
            "MessageID": a.get("message_id") or "", "InReplyTo": a.get("in_reply_to") or "",
            "References": a.get("references") or "",
            "HistoryComment": history_comment(self.marker(item), item.crypto),
        }
        if item.loop:
            article["AutoResponseType"] = NO_AUTO_RESPONSE
            log.append(("Info", "AutoResponseType", f"{NO_AUTO_RESPONSE!r}: deskgate found "
                        "the message looping (auto-reply, list or bounce), so OTOBO is not "
                        "to answer it with the queue's auto reply or auto follow up"))
        out: dict[str, Any] = {"Article": article}
        files = []
        for i, att in enumerate(item.attachments):
            name = safe_filename(att.filename, i + 1)
            if not att.content:
                # TicketCreate/TicketUpdate refuse the whole article (MissingParameter).
                log.append(("Notice", "Attachment", f"attachment {name!r} is empty: not "
                            "passed on (OTOBO refuses a file without content)"))
                continue
            files.append({"Content": base64.b64encode(att.content).decode("ascii"),
                          "ContentType": att.content_type or "application/octet-stream",
                          "Filename": name})
        if files:
            out["Attachment"] = files
        if dfs:
            known = self.dynamic_fields()
            if known is not None:
                for name in sorted(set(dfs) - known):
                    log.append(("Warn", "DynamicField", f"OTOBO has no dynamic field {name!r}: "
                                f"value {dfs[name]!r} not passed on"))
                dfs = {k: v for k, v in dfs.items() if k in known}
            if dfs:
                out["DynamicField"] = [{"Name": k, "Value": v} for k, v in sorted(dfs.items())]
        return out

    def _send(self, operation: str, method: str, path: str, body: dict[str, Any],
              log: Log) -> dict[str, Any]:
        """Send; an OTOBO that refuses the loop's AutoResponseType (an administrator set
        that type invalid) gets the article again with its default type rather than
        lose it."""
        try:
            return self._send_df_tolerant(operation, method, path, body, log)
        except OtoboError as exc:
            if "AutoResponseType" not in exc.message \
                    or "AutoResponseType" not in body["Article"]:
                raise
            del body["Article"]["AutoResponseType"]
            log.append(("Warn", "AutoResponseType", f"{exc}; sent again with OTOBO's default "
                        "type: the queue's auto-response to this looping message may have "
                        f"gone out (set the type {NO_AUTO_RESPONSE!r} valid again)"))
            return self._send_df_tolerant(operation, method, path, body, log)

    def _send_df_tolerant(self, operation: str, method: str, path: str,
                          body: dict[str, Any], log: Log) -> dict[str, Any]:
        """Send; when OTOBO rejects a dynamic field (it does not say which), send again
        without them rather than lose the message."""
        try:
            return self.call(operation, method, path, body)
        except OtoboError as exc:
            if "DynamicField" not in exc.message or "DynamicField" not in body:
                raise
            dropped = body.pop("DynamicField")
            log.append(("Warn", "DynamicField", f"{exc}; sent again without dynamic fields "
                        f"{json.dumps(dropped, ensure_ascii=False)}"))
            self._dfs = None
            return self.call(operation, method, path, body)

    # ------------------------------------------------------------ finding earlier work

    def _followup_target(self, item: HandoffItem, log: Log) -> str:
        """The helpdesk ticket id of a follow-up: known, or found by the number in the
        subject (a ticket created in the helpdesk directly)."""
        if item.helpdesk_ticket_id:
            return item.helpdesk_ticket_id
        number = item.helpdesk_ticket_number
        if not number:
            hook = re.escape(self.config.gateway.ticket_hook)
            m = re.search(hook + r"\s*:?\s*(\d{3,})", str(item.article.get("subject") or ""))
            number = m[1] if m else ""
        if not number:
            return ""
        ids = self.search(TicketNumber=number, Limit=2)
        if len(ids) == 1:
            log.append(("Info", "FollowUp", f"ticket number {number} is ticket id {ids[0]}"))
            return ids[0]
        log.append(("Notice", "FollowUp", f"ticket number {number} not found in OTOBO"))
        return ""

    @staticmethod
    def _title(item: HandoffItem) -> str:
        """The new ticket's title on one line (OTOBO keeps a line break or a control
        character in it as sent); "(no subject)" when nothing is left."""
        return one_line(str(item.decisions.get("Title") or item.ticket.get("title")
                            or item.article.get("subject") or "")) or "(no subject)"

    def _find_created(self, item: HandoffItem) -> tuple[str, str] | None:
        """A ticket an earlier attempt created (its history has our marker), or None."""
        minutes = 7 * 1440
        with_created = item.created.replace("Z", "+00:00")
        try:
            created = datetime.fromisoformat(with_created)
            if created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            minutes = math.ceil((datetime.now(UTC) - created).total_seconds() / 60) + 10
        except ValueError:
            pass
        title = self._title(item)[:150]
        seen: list[str] = []
        searches: list[dict[str, Any]] = []
        if title and '"' not in title and "\\" not in title:
            searches.append({"Title": f'"{title}*"' if len(title) == 150 else f'"{title}"',
                             "Limit": 50})
        searches.append({"Limit": 200, "SortBy": "Age", "OrderBy": "Down"})
        marker = self.marker(item)
        for params in searches:
            ids = [i for i in self.search(TicketCreateTimeNewerMinutes=minutes, **params)
                   if i not in seen]
            seen += ids
            for tid, names in self.history_names(ids).items():
                if any(marker in n for n in names):
                    return tid, str(self.ticket_get(tid).get("TicketNumber", ""))
        return None

    # ------------------------------------------------------------ check

    def check(self) -> list[tuple[str, str, str]]:
        """Log in, search one ticket, look for the configured queues."""
        res: list[tuple[str, str, str]] = []
        try:
            self._session_id(renew=True)
            res.append(("ok", "login", f"SessionCreate as {self.user!r} at {self.url}"))
        except HandoffError as exc:
            return [("fail", "login", str(exc))]
        try:
            ids = self.search(Limit=1)
            res.append(("ok", "search", f"TicketSearch Limit=1: {len(ids)} ticket(s) visible"))
        except HandoffError as exc:
            res.append(("fail", "search", str(exc)))
            return res
        queues = sorted({self.config.helpdesk.helpdesk_queue(q.name) for q in self.config.queue}
                        | set(self.config.helpdesk.queues.values()))
        if queues:
            res.append(("warn", "queues", "not checked (the web service cannot list queues; "
                        "a TicketCreate into a missing one fails): " + ", ".join(queues)))
        return res

    def close(self) -> None:
        with self._lock:
            self._session = ""
