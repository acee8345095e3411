"""A refused session's communication-log entry says how it was refused: answered 421
4.7.0 on a plain listener, closed without a reply on an implicit-TLS one (a reply in
clear text means nothing to a client that waits for a TLS handshake)."""

from __future__ import annotations

from gateway.commlog import Comm
from gateway.limits import SessionLimit


def refused_text(**admit: bool) -> str:
    logged: list[Comm] = []
    limit = SessionLimit("submission", "SMTP", "Outgoing", 1, logged.append)
    assert limit.admit(("127.0.0.1", 4000)) is None
    assert limit.admit(("127.0.0.1", 4001), **admit) is not None
    [comm] = logged
    [entry] = comm.objects[0].entries
    return entry.value


def test_plain_listener_names_the_421():
    text = refused_text()
    assert "refused with 421 4.7.0" in text and "1 sessions open" in text


def test_implicit_tls_listener_says_closed_without_reply():
    text = refused_text(replied=False)
    assert "421" not in text
    assert "closed without a reply" in text and "1 sessions open" in text
