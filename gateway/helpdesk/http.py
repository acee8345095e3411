"""The HTTP client of the REST and webhook connectors: urllib without redirects.

urllib follows a 301/302/303 to a POST by sending a GET without the body (a 2xx to
that GET would look like a delivery of a document nobody stored), and it sends
the request's headers (an RT token, a webhook signature) to wherever Location
points. A redirect is an error instead that names the new location, so an
administrator can set `[helpdesk] url` to it.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from email.message import Message
from typing import IO


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int,
                         msg: str, headers: Message, newurl: str) -> None:
        return None          # urllib then raises the 3xx as an HTTPError


def opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    """An opener that verifies TLS with `context` (the system store when None) and
    follows no redirect."""
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                       _NoRedirect())


def redirect_note(exc: urllib.error.HTTPError) -> str:
    """' (redirected to URL; set [helpdesk] url to it)' for a 3xx, else ''."""
    if not 300 <= exc.code < 400:
        return ""
    where = exc.headers.get("Location", "") if exc.headers is not None else ""
    return (f" (a redirect to {where or 'an unnamed location'}, not followed; "
            "check [helpdesk] url)")
