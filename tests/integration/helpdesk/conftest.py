"""Fixtures of the helpdesk connector tests: one Request Tracker 5 for the session
(tests/peers/rt.py), and configs pointing a connector at it."""

from __future__ import annotations

from tests.peers.rt import rt5

__all__ = ["rt5"]
