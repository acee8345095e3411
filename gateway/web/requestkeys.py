"""What the dashboard's authentication middleware learns about a request.

Apart from gateway.web.auth, which `deskgate check` imports for its validator
without wanting aiohttp.
"""

from __future__ import annotations

from aiohttp import web

from gateway.web.auth import Session

# The basic-auth user name ("" for the token or a dashboard without credentials).
USER = web.RequestKey("user", str)
# The client's address: the peer, or behind a trusted proxy the forwarded client.
CLIENT = web.RequestKey("client", str)
# "admin" or "viewer" (the token and a dashboard without credentials only read).
ROLE = web.RequestKey("role", str)
# The configuration's version (confedit.config_version) an admin page was built on.
VERSION = web.RequestKey("version", str)
# The settings the reload of an admin page's save could not apply (need a restart).
RESTART_NEEDED = web.RequestKey("restart_needed", list[str])
# The login session of the request (absent: none yet; a page makes one).
SESSION = web.RequestKey("session", Session)
