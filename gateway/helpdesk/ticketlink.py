"""The link to a ticket in the helpdesk, as `tickets show` and the dashboard give it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit


def helpdesk_link(ticket_url: str, hd: Mapping[str, Any]) -> str:
    """The link to the helpdesk's ticket, "" when there is none to give.

    The ticket id and number come from the helpdesk's answers, so they are URL-quoted
    into [helpdesk] ticket_url (an id cannot add parameters to the link), and only an
    http or https link is given: with ticket_url = "{id}" an id such as
    javascript:… stays text.
    """
    tid, tnum = str(hd.get("ticket_id") or ""), str(hd.get("ticket_number") or "")
    if not ticket_url or not tid:
        return ""
    link = ticket_url.replace("{id}", quote(tid, safe="")).replace(
        "{number}", quote(tnum, safe=""))
    return link if urlsplit(link).scheme.lower() in ("http", "https") else ""
