"""Imported at startup (app.PLUGINS): registers the DKIM runtime builder and config
validator, and the auto-response commit stage."""

from __future__ import annotations

import gateway.outbound.autoresponse
import gateway.outbound.checks
import gateway.outbound.dkim  # noqa: F401
