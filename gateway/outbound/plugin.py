"""Imported at startup (app.PLUGINS): registers the DKIM runtime builder and the
outbound config validators."""

from __future__ import annotations

import gateway.outbound.checks
import gateway.outbound.dkim  # noqa: F401
