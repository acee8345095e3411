"""`[helpdesk] type = "rt-rest2"`: Request Tracker 5 through its REST2 API.

A new ticket is `POST /REST/2.0/ticket` (queue, subject, requestor, the body,
priority, custom fields, attachments); a follow-up is `POST
/REST/2.0/ticket/{id}/correspond`. RT answers with its ticket id, which is also
the number its users see ("[rtname #id]" in subjects).

RT generates the Message-ID of what REST2 creates and keeps no client key, so a
retry (the answer to an earlier attempt may have been lost) first looks for what
that attempt left: for a creation, the ticket whose "Deskgate-Key" custom field
holds the hand-off key when the administrator created that field, else the
newest tickets of the queue and requestor created since the message was
committed whose subject, Create content and file names are ours; for a
follow-up, the ticket's Correspond transactions since then with our content and
files. docs/helpdesk-rt.md describes what remains.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any

from gateway.config import Config
from gateway.helpdesk.base import Delivered, HandoffError, HandoffItem, one_line
from gateway.helpdesk.filenames import safe_filename
from gateway.helpdesk.http import opener, redirect_note, request

API = "/REST/2.0"
# RT's subject tag: "[rtname #123]" (rtname may hold spaces and dots).
TAG_RE = re.compile(r"\[[^\[\]#]+ #(\d+)\]")
# deskgate priorities are "N name" with N = 1 (very low) .. 5 (very high); RT's default
# PriorityAsString is Low = 0, Medium = 50, High = 100.
PRIORITY_MAP = {"1": 0, "2": 25, "3": 50, "4": 75, "5": 100}
# How far before the commit time of the message a retry looks for an earlier attempt's
# result (clock differences between deskgate and RT).
CLOCK_SLACK = timedelta(minutes=10)
# More than the widest distance of a time zone from UTC (UTC-12 .. UTC+14).
TIMEZONE_SPAN = timedelta(hours=26)
SEARCH_LIMIT = 20           # candidates compared at most per retry
# A ticket custom field an RT administrator may create for exact retries: deskgate stores
# the hand-off's key in it and a retry searches for that key.
KEY_FIELD = "Deskgate-Key"


def rt_priority(priority: str) -> int | None:
    """deskgate's "3 normal" → 50; None for priorities without a leading 1-5."""
    return PRIORITY_MAP.get(priority.strip()[:1]) if priority.strip() else None


def normalize_text(text: str) -> str:
    """Body text as compared between our item and RT's stored content."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def api_base(url: str) -> str:
    """http://host/rt or http://host/rt/REST/2.0[/] → http://host/rt/REST/2.0"""
    base = url.rstrip("/")
    if base.endswith(API):
        base = base[: -len(API)]
    return base + API


def rt_filename(name: str) -> str:
    """A file name as REST2 must get it: its UTF-8 bytes, one character each. REST2 hands
    the JSON string to MIME::Entity, which RT reads as bytes: a non-ASCII character given
    as itself is stored as U+FFFD (RT's own web form encodes the name to UTF-8 first)."""
    return name.encode("utf-8").decode("latin-1")


def from_rt_filename(name: str) -> str:
    """rt_filename's name as RT stores and shows it."""
    return name.encode("latin-1").decode("utf-8")


def _quote_sql(value: str) -> str:
    """A TicketSQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class RtRest2:
    """Tickets and correspondence in Request Tracker 5 over REST2."""

    type = "rt-rest2"

    def __init__(self, config: Config) -> None:
        hd = config.helpdesk
        self.base = api_base(hd.url)
        self.account = self.base
        self.timeout = hd.timeout
        if hd.token is not None:
            self.auth = f"token {hd.token}"
            self.auth_what = "helpdesk.token"
        else:
            pair = f"{hd.user}:{hd.password or ''}".encode()
            self.auth = "Basic " + base64.b64encode(pair).decode("ascii")
            self.auth_what = f"helpdesk.user {hd.user!r} and helpdesk.password"
        self.context: ssl.SSLContext | None = None
        if self.base.startswith("https:"):
            self.context = ssl.create_default_context(
                cafile=str(config.path(hd.tls_ca_file)) if hd.tls_ca_file else None)
        self._opener = opener(self.context)
        # Every deskgate queue as RT will see it (mapped or passed through by name).
        self.expected_queues = list(dict.fromkeys(
            [hd.helpdesk_queue(q.name) for q in config.queue] + list(hd.queues.values())))

    # ------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: object = None,
                 query: dict[str, str] | None = None) -> tuple[int, Any]:
        """One REST2 call → (status, decoded JSON or None); network trouble is temporary."""
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        headers = {"Authorization": self.auth, "Accept": "application/json",
                   "User-Agent": "deskgate"}
        if data is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 (http/https)
                                     headers=headers)
        try:
            got = request(self._opener, req, self.timeout)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise HandoffError(f"cannot reach RT at {self.account}: {reason}") from None
        status, raw = got.status, got.body
        if got.error is not None:
            if note := redirect_note(got.error):
                raise HandoffError(f"RT answered HTTP {status} to {method} {path}{note}")
            raw = raw[:20000]
        try:
            return status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return status, {"message": raw.decode("utf-8", "replace").strip()[:300]}

    def _call(self, method: str, path: str, body: object = None,
              query: dict[str, str] | None = None) -> Any:
        """A call that must succeed (2xx); errors mapped to temporary or permanent."""
        status, answer = self._request(method, path, body, query)
        if 200 <= status < 300:
            return answer
        raise self._error(status, answer, f"{method} {path}")

    def _error(self, status: int, answer: Any, what: str) -> HandoffError:
        text = _message(answer)
        detail = f"RT answered HTTP {status} to {what}" + (f": {text}" if text else "")
        if status == 401:
            return HandoffError(f"RT refused the login (HTTP 401): check {self.auth_what}")
        if status == 403:
            return HandoffError(detail + " (the RT user lacks a right)")
        if status == 404:
            # REST2 answers 404 for paths it does not know: most likely helpdesk.url is wrong.
            return HandoffError(detail + f" (is {self.account} RT's REST2? check helpdesk.url)")
        if status in (400, 409, 410, 422):
            return HandoffError(detail, temporary=False)
        if status == 413:
            # The message is as large on every retry: failed until the limit is raised.
            return HandoffError(
                f"RT answered HTTP 413 to {what}: the request is too large for RT or the web "
                "server in front of it (the message with its attachments, base64-encoded); "
                "raise that server's request size limit (e.g. nginx client_max_body_size), "
                "then retry the hand-off", temporary=False)
        return HandoffError(detail)          # 5xx, 408, 429 and anything unexpected

    def _pages(self, path: str, query: dict[str, str], limit: int) -> Iterator[dict[str, Any]]:
        """Items of a REST2 collection, page by page, at most `limit`."""
        page, seen = 1, 0
        while seen < limit:
            answer = self._call("GET", path, query={**query, "page": str(page),
                                                    "per_page": str(min(100, limit))})
            items = (answer or {}).get("items") or []
            for item in items:
                if seen >= limit:
                    return
                seen += 1
                yield item
            if len(items) < min(100, limit) or not items:
                return
            page += 1

    # ------------------------------------------------------------ deliver

    def deliver(self, item: HandoffItem) -> Delivered:
        if item.kind == "create":
            return self._create(item)
        return self._correspond(item, self._ticket_for_followup(item))

    def _message_fields(self, item: HandoffItem) -> tuple[dict[str, Any], list[str]]:
        """Content, ContentType and Attachments of the article; warnings for skipped files."""
        a = item.article
        html = str(a.get("body_html") or "")
        fields: dict[str, Any] = {}
        if html.strip():
            fields.update(Content=html, ContentType="text/html")
        else:
            fields.update(Content=str(a.get("body") or ""), ContentType="text/plain")
        files, warnings = [], []
        for n, att in enumerate(item.attachments, 1):
            name = safe_filename(att.filename, n)
            if not att.content:
                # REST2 refuses a file without content.
                warnings.append(f"attachment {name} is empty and was not sent")
                continue
            files.append({"FileName": rt_filename(name),
                          "FileType": att.content_type or "application/octet-stream",
                          "FileContent": base64.b64encode(att.content).decode("ascii")})
        if files:
            fields["Attachments"] = files
        if not fields["Content"] and not files:
            fields["Content"] = "(no text)"
        return fields, warnings

    def _requestor(self, item: HandoffItem) -> str:
        a = item.article
        return str(a.get("from_email") or parseaddr(str(a.get("from") or ""))[1]).strip()

    def _create(self, item: HandoffItem) -> Delivered:
        subject = one_line(str(item.article.get("subject") or item.ticket.get("title") or ""))
        requestor = self._requestor(item)
        fields, warnings = self._message_fields(item)
        log: list[tuple[str, str, str]] = [("Notice", "RT", w) for w in warnings]
        tagged = self._tagged_ticket(subject, requestor)
        if tagged:
            # A reply to RT's own mail that deskgate could not join to a ticket it handed
            # off (RT's mail carries RT's tag and Message-IDs): it belongs to that ticket.
            res = self._correspond(item, tagged)
            return Delivered(ticket_id=tagged, ticket_number=tagged, detail=res.detail, log=[
                *res.log, ("Notice", "RT", f"the Subject carries RT's tag of ticket {tagged} "
                           f"and {requestor} is on it: added to it, no new ticket")])
        cfs = self._custom_fields(item.queue)
        found = ""
        if item.attempts > 0:          # a retry: the earlier attempt may have created it
            found = (self._find_by_key(item) if KEY_FIELD in cfs
                     else self._find_created(item, subject, requestor, fields))
        if found:
            return Delivered(ticket_id=found, ticket_number=found, detail="found", log=[
                *log, ("Notice", "RT", f"ticket {found} from an earlier attempt found; "
                                       "not created again")])
        body: dict[str, Any] = {"Queue": item.queue, "Subject": subject, **fields}
        if requestor:
            body["Requestor"] = requestor
        if item.loop and requestor:
            # RT's squelch list of the ticket (People → "Unchecked boxes disable
            # notifications"): "On Create Autoreply To Requestors" skips the sender, as for
            # mail rt-mailgate finds auto-generated. REST2 passes only a plain value on to
            # Ticket->Create, so the ticket's list, not the Create transaction's
            # (TransSquelchMailTo, a list, is dropped): RT's later mail skips it too.
            body["SquelchMailTo"] = requestor
            log.append(("Info", "RT", f"SquelchMailTo {requestor}: deskgate found the "
                        "message looping (auto-reply, list or bounce), so RT mails its sender "
                        "no auto-reply and no other mail of this ticket (an agent can tick "
                        "the address again on the ticket's People page)"))
        prio = rt_priority(str(item.decisions.get("Priority") or item.ticket.get("priority")
                               or ""))
        if prio is not None:
            body["Priority"] = prio
        wanted = {k.removeprefix("DynamicField-"): v for k, v in item.decisions.items()
                  if k.startswith("DynamicField-") and v != ""}
        present = {name: v for name, v in wanted.items() if name in cfs}
        for name in sorted(set(wanted) - set(present)):
            log.append(("Warn", "RT", f"DynamicField-{name}: RT has no ticket custom field "
                        f"{name!r} on queue {item.queue!r}; value {wanted[name]!r} not set"))
        if KEY_FIELD in cfs:
            present[KEY_FIELD] = item.key
        if present:
            body["CustomFields"] = present
        status, answer = self._request("POST", "/ticket", body)
        # RT refuses a queue that does not exist like one without CreateTicket: tell them apart.
        if (status == 403 and "No permission to create tickets" in _message(answer)
                and self._queue_missing(item.queue)):
            raise HandoffError(f"RT has no queue {item.queue!r} (RT: {_message(answer)}); "
                               "map it in [helpdesk.queues]", temporary=False)
        if not 200 <= status < 300:
            raise self._error(status, answer, "POST /ticket")
        tid = str((answer or {}).get("id") or "")
        if not tid:
            raise HandoffError(f"RT created a ticket but did not tell its id: {answer!r}"[:300])
        return Delivered(ticket_id=tid, ticket_number=tid, detail="created", log=log)

    def _ticket_for_followup(self, item: HandoffItem) -> str:
        if item.helpdesk_ticket_id:
            return item.helpdesk_ticket_id
        for text in (item.article.get("subject"), item.ticket.get("title")):
            m = TAG_RE.search(str(text or ""))
            if m:
                return m.group(1)
        raise HandoffError("follow-up without an RT ticket: no ticket id recorded and no "
                           "[rtname #id] tag in the subject", temporary=False)

    def _correspond(self, item: HandoffItem, tid: str) -> Delivered:
        if not tid.isdigit():
            raise HandoffError(f"{tid!r} is not an RT ticket id", temporary=False)
        fields, warnings = self._message_fields(item)
        log: list[tuple[str, str, str]] = [("Notice", "RT", w) for w in warnings]
        if item.loop:
            log.append(("Notice", "RT", "deskgate found the message looping (auto-reply, "
                        "list or bounce); REST2's correspond takes no squelch list, so only "
                        "RT's scrips keep RT from mailing it back to its sender (see "
                        "docs/helpdesk-rt.md)"))
        if item.attempts > 0 and self._find_correspondence(item, tid, fields):
            return Delivered(ticket_id=tid, ticket_number=tid, detail="found", log=[
                *log, ("Notice", "RT", f"correspondence on ticket {tid} from an earlier "
                                       "attempt found; not sent again")])
        status, answer = self._request("POST", f"/ticket/{int(tid)}/correspond", fields)
        if status == 400 and "Permission Denied" in _message(answer):
            raise HandoffError(f"RT refused the reply on ticket {tid}: {_message(answer)} "
                               "(the RT user needs ReplyToTicket)")
        if status in (400, 404) and self._ticket_missing(tid):
            # REST2 answers "Message could not be recorded" (400) for a ticket it lacks.
            raise HandoffError(f"RT has no ticket {tid} (RT: {_message(answer)})",
                               temporary=False)
        if not 200 <= status < 300:
            raise self._error(status, answer, f"POST /ticket/{tid}/correspond")
        return Delivered(ticket_id=tid, ticket_number=tid, detail="corresponded", log=log)

    # ------------------------------------------------------------ lookups

    def _queue_missing(self, queue: str) -> bool:
        status, _ = self._request("GET", "/queue/" + urllib.parse.quote(queue, safe=""))
        return status == 404

    def _tagged_ticket(self, subject: str, requestor: str) -> str:
        """RT's ticket named by an "[rtname #id]" tag in `subject`, when `requestor` is one
        of its requestors or Ccs (so another system's tag is not mistaken for RT's); or ""."""
        m = TAG_RE.search(subject)
        if not m or not requestor:
            return ""
        status, t = self._request("GET", f"/ticket/{int(m.group(1))}")
        if status != 200 or not isinstance(t, dict):
            return ""
        people = [p for role in ("Requestor", "Cc") for p in t.get(role) or []
                  if isinstance(p, dict)]
        want = requestor.lower()
        for p in people:
            name = str(p.get("id") or "")
            if name.lower() == want:
                return m.group(1)
            st, user = self._request("GET", "/user/" + urllib.parse.quote(name, safe=""))
            if st == 200 and isinstance(user, dict) and \
                    str(user.get("EmailAddress") or "").lower() == want:
                return m.group(1)
        return ""

    def ticket_state(self, ticket_id: str) -> tuple[str, str]:
        """(queue name, '') of a ticket in RT now (the classifier's read-back); RT's
        numeric priority is not mapped back."""
        if not ticket_id.isdigit():
            raise HandoffError(f"{ticket_id!r} is not an RT ticket id", temporary=False)
        t = self._call("GET", f"/ticket/{int(ticket_id)}")
        queue = t.get("Queue") if isinstance(t, dict) else None
        qid = str(queue.get("id") or "") if isinstance(queue, dict) else str(queue or "")
        if not qid.isdigit():
            return qid, ""
        q = self._call("GET", f"/queue/{int(qid)}")
        return (str(q.get("Name") or "") if isinstance(q, dict) else ""), ""

    def _ticket_missing(self, tid: str) -> bool:
        status, _ = self._request("GET", f"/ticket/{int(tid)}")
        return status == 404

    def _custom_fields(self, queue: str) -> set[str]:
        """Names of the ticket custom fields that apply to `queue` (global or on the queue).
        RT failing to tell (5xx, 401, 408, 429) is a temporary error: a ticket created
        without Deskgate-Key where the field exists could not be found by a retry."""
        path = "/queue/" + urllib.parse.quote(queue, safe="")
        status, answer = self._request("GET", path)
        if status >= 500 or status in (401, 408, 429):
            raise self._error(status, answer, f"GET {path}")
        if status != 200 or not isinstance(answer, dict):
            return set()
        return {str(cf.get("name") or "") for cf in answer.get("TicketCustomFields") or []
                if isinstance(cf, dict)}

    def _since(self, item: HandoffItem) -> datetime | None:
        if not item.created:
            return None
        try:
            created = datetime.fromisoformat(item.created)
        except ValueError:
            return None
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return created.astimezone(UTC) - CLOCK_SLACK

    def _transaction_matches(self, txid: str, fields: dict[str, Any]) -> bool:
        """Does RT's stored message of transaction `txid` hold our content and files?"""
        parts = list(self._pages(f"/transaction/{int(txid)}/attachments",
                                 {"fields": "ContentType,Filename,Content"}, 200))
        texts = [str(p.get("Content") or "") for p in parts
                 if not p.get("Filename") and str(p.get("ContentType") or "")
                 in ("text/plain", "text/html")]
        names = sorted(str(p.get("Filename")) for p in parts if p.get("Filename"))
        ours = normalize_text(str(fields.get("Content") or ""))
        our_names = sorted(from_rt_filename(f["FileName"])
                           for f in fields.get("Attachments") or [])
        text_ok = (not ours and not texts) or any(normalize_text(t) == ours for t in texts)
        return text_ok and names == our_names

    def _find_by_key(self, item: HandoffItem) -> str:
        """The ticket whose Deskgate-Key custom field holds the item's key, or ""."""
        query = f"CF.{{{KEY_FIELD}}} = {_quote_sql(item.key)}"
        return next((str(t.get("id") or "") for t in self._pages(
            "/tickets", {"query": query, "fields": "Subject"}, 1)), "")

    def _find_created(self, item: HandoffItem, subject: str, requestor: str,
                      fields: dict[str, Any]) -> str:
        """The id of a ticket an earlier attempt created for this item, or ""."""
        where = [f"Queue = {_quote_sql(item.queue)}"]
        if requestor:
            where.append(f"Requestor.EmailAddress = {_quote_sql(requestor)}")
        since = self._since(item)
        if since is not None:
            # RT reads a date in TicketSQL in its user's (or its own) time zone, which
            # REST2 does not tell: the query gets a bound a day early, whatever the
            # zone, and the exact one is applied below to the UTC times REST2 returns.
            coarse = since - TIMEZONE_SPAN
            where.append(f"Created >= {_quote_sql(coarse.strftime('%Y-%m-%d %H:%M:%S'))}")
        tickets = self._pages("/tickets", {"query": " AND ".join(where),
                                           "fields": "Subject,Created", "orderby": "id",
                                           "order": "DESC"}, SEARCH_LIMIT)
        # RT keeps the first 200 characters of a subject.
        want = {" ".join(subject.split()), " ".join(subject[:200].split())}
        for t in tickets:
            created = _parse_time(str(t.get("Created") or ""))
            if since is not None and created is not None and created < since:
                break                   # newest first: the rest are older still
            if " ".join(str(t.get("Subject") or "").split()) not in want:
                continue
            tid = str(t.get("id") or "")
            create = next(self._transactions(tid, ("Create",), None, "ASC"), None)
            if create is not None and self._transaction_matches(str(create["id"]), fields):
                return tid
        return ""

    def _find_correspondence(self, item: HandoffItem, tid: str, fields: dict[str, Any]
                             ) -> bool:
        """Did an earlier attempt already add this follow-up to ticket `tid`?"""
        return any(self._transaction_matches(str(tx["id"]), fields)
                   for tx in self._transactions(tid, ("Correspond", "Create"),
                                                self._since(item), "DESC"))

    def _transactions(self, tid: str, types: Iterable[str], since: datetime | None,
                      order: str) -> Iterator[dict[str, Any]]:
        """The ticket's transactions of `types`, created at `since` or later."""
        wanted = set(types)
        for tx in self._pages(f"/ticket/{int(tid)}/history",
                              {"fields": "Type,Created", "orderby": "id", "order": order}, 1000):
            created = _parse_time(str(tx.get("Created") or ""))
            if since is not None and created is not None and created < since:
                if order == "DESC":
                    return
                continue
            if str(tx.get("Type") or "") in wanted:
                yield tx

    # ------------------------------------------------------------ check

    def check(self) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []
        try:
            status, answer = self._request("GET", "/rt")
        except HandoffError as exc:
            return [("fail", "connect", str(exc))]
        if status == 401:
            return [("ok", "connect", f"reached {self.account}"),
                    ("fail", "login", f"RT refused the login (HTTP 401): check {self.auth_what}")]
        if status != 200:
            return [("fail", "connect", str(self._error(status, answer, "GET /rt")))]
        version = str((answer or {}).get("Version") or "?")
        out += [("ok", "connect", f"reached {self.account}"),
                ("ok", "login", f"logged in; RT {version}")]
        try:
            queues = sorted(str(q.get("Name") or "") for q in self._pages(
                "/queues/all", {"fields": "Name"}, 1000))
        except HandoffError as exc:
            return [*out, ("fail", "queues", str(exc))]
        out.append(("ok" if queues else "warn", "queues",
                    f"the RT user sees {len(queues)} queue(s): {', '.join(queues) or 'none'}"))
        for q in self.expected_queues:
            if q in queues:
                try:
                    exact = KEY_FIELD in self._custom_fields(q)
                except HandoffError as exc:
                    out.append(("warn", f"queue {q}", f"exists and is visible; {exc}"))
                    continue
                out.append(("ok", f"queue {q}", "exists and is visible; retries "
                            + (f"check the {KEY_FIELD} custom field" if exact
                               else "compare requestor, subject and content")))
            else:
                out.append(("fail", f"queue {q}", "not found in RT (or the RT user lacks "
                            "SeeQueue on it); map it in [helpdesk.queues]"))
        return out

    def close(self) -> None:
        return None


def _message(answer: Any) -> str:
    """RT's error text from a REST2 answer ({"message": ...} or a list of messages)."""
    if isinstance(answer, dict):
        return str(answer.get("message") or "").strip()[:500]
    if isinstance(answer, list):
        return "; ".join(str(x) for x in answer)[:500]
    return ""


def _parse_time(value: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)
