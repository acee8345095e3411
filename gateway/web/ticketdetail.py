"""The ticket page's read: a ticket with one page of its articles.

A mail loop that slipped through can leave a ticket with tens of thousands of
articles, so the page reads its articles a page at a time (oldest first, as
`deskgate tickets show` lists them), with only those articles' attachments, and
counts them all, instead of the whole ticket as `tickets show` prints it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from gateway.cli.tickets import ticket_detail


def read_page(conn: Connection, number: str, ticket_url: str, *, limit: int,
              offset: int) -> dict[str, Any] | None:
    """`tickets show N --json` with the articles offset .. offset+limit-1 (in id order)
    only, and `article_count`, the number of articles in all; None when there is no
    such ticket."""
    return ticket_detail(conn, number, ticket_url, limit=limit, offset=offset)
