"""TokenSource.renew: which refused access tokens are worth replacing."""

from __future__ import annotations

from gateway.config import load_config
from gateway.inbound.poller.oauth2 import TokenSource

ACCOUNT = """
[[account]]
name = "m365"
type = "imaps"
host = "outlook.office365.com"
login = "helpdesk@example.org"
[account.oauth2]
token_url = "https://login.example/token"
client_id = "abc"
refresh_token = "rt"
"""


def source(make_confdir, monkeypatch, bodies):
    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT}))
    now = [1000.0]
    ts = TokenSource(cfg.account[0], cfg.root, lambda a: None, lambda *a: None,
                     clock=lambda: now[0])
    calls: list[dict[str, str]] = []

    def post(form):
        calls.append(form)
        return bodies(len(calls))

    monkeypatch.setattr(ts, "_post", post)
    return ts, now, calls


def test_without_expires_in_the_token_is_kept_an_hour(make_confdir, monkeypatch):
    ts, now, calls = source(make_confdir, monkeypatch, lambda n: {"access_token": f"at{n}"})
    assert ts.get() == "at1"
    now[0] += 3500
    assert ts.get() == "at1" and len(calls) == 1
    now[0] += 100
    assert ts.get() == "at2"


def test_a_fresh_token_refused_is_not_replaced(make_confdir, monkeypatch):
    ts, _, calls = source(make_confdir, monkeypatch,
                          lambda n: {"access_token": f"at{n}", "expires_in": 3600})
    assert ts.get() == "at1"
    assert ts.renew("at1") is None
    assert len(calls) == 1
    assert ts.get() == "at2"     # the refused one is not handed out again


def test_a_cached_token_refused_is_replaced_once(make_confdir, monkeypatch):
    ts, _, calls = source(make_confdir, monkeypatch,
                          lambda n: {"access_token": f"at{n}", "expires_in": 3600})
    assert ts.get() == "at1"
    assert ts.get() == "at1"     # from the cache
    assert ts.renew("at1") == "at2"
    assert ts.renew("at2") is None     # the new one refused too: no third token
    assert len(calls) == 2


def test_a_token_renewed_meanwhile_is_taken(make_confdir, monkeypatch):
    ts, _, calls = source(make_confdir, monkeypatch,
                          lambda n: {"access_token": f"at{n}", "expires_in": 3600})
    ts.get()
    ts.get()
    assert ts.renew("at1") == "at2"
    assert ts.renew("at1") == "at2"    # another login's refusal of the old one
    assert len(calls) == 2


def failing_save(fails: list[bool], saved: list[tuple[str, str, str]]):
    """A save that raises the database's error (its text carries the token) while
    fails[0] is true, and records what it stored otherwise."""
    from sqlalchemy.exc import OperationalError

    def save(account, token, fp):
        if fails[0]:
            raise OperationalError("INSERT INTO poller_token ...", (account, token, fp),
                                   Exception("database is locked"))
        saved.append((account, token, fp))
    return save


def test_a_rotated_token_that_cannot_be_stored_is_kept_and_not_written_anywhere(
        make_confdir, monkeypatch):
    """A rotated refresh token the database does not take: the login goes on with the
    access token, a Warning says what happened and what to do, and neither the Warning
    nor the log carries the new token (the database error's parameters do)."""
    from structlog.testing import capture_logs

    from gateway.inbound.poller.oauth2 import fingerprint

    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT}))
    fails, saved = [True], []
    now = [1000.0]
    ts = TokenSource(cfg.account[0], cfg.root, lambda a: None, failing_save(fails, saved),
                     clock=lambda: now[0])
    forms: list[dict[str, str]] = []

    def post(form):
        forms.append(form)
        return {"access_token": f"at-{len(forms)}", "expires_in": 3600,
                "refresh_token": f"rt-NEW{len(forms)}-s3cret"}

    monkeypatch.setattr(ts, "_post", post)
    with capture_logs() as logs:
        assert ts.get() == "at-1"
    notes = ts.take_notes()
    assert [p for p, _ in notes] == ["Warn"]
    text = notes[0][1]
    assert "could not be stored" in text and "database is locked" in text, text
    assert "kept in memory" in text and "authorise the account again" in text, text
    assert "s3cret" not in text and "at-1" not in text
    assert logs and "s3cret" not in repr(logs) and "at-1" not in repr(logs)
    assert ts.take_notes() == []          # said once
    # The next refresh redeems the new token, not the configured one the server revoked.
    now[0] += 3600
    assert ts.get() == "at-2"
    assert forms[1]["refresh_token"] == "rt-NEW1-s3cret"
    assert saved == []
    # Once the database takes writes again, the token it rotated to last is stored.
    fails[0] = False
    assert ts.store_unsaved()
    assert saved == [("m365", "rt-NEW2-s3cret", fingerprint("rt"))]
    assert [p for p, _ in ts.take_notes()][-1] == "Info"
    assert not ts.store_unsaved()         # nothing waiting any more


def test_an_unsaved_token_is_stored_before_the_next_refresh(make_confdir, monkeypatch):
    """The rotated token kept in memory is stored at the next refresh when the
    database takes it then, and the one it is redeemed for is stored too."""
    from gateway.inbound.poller.oauth2 import fingerprint

    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT}))
    fails, saved = [True], []
    now = [1000.0]
    stored: list[tuple[str, str]] = []
    ts = TokenSource(cfg.account[0], cfg.root, lambda a: stored[-1] if stored else None,
                     failing_save(fails, saved), clock=lambda: now[0])
    forms: list[dict[str, str]] = []

    def post(form):
        forms.append(form)
        return {"access_token": f"at-{len(forms)}", "expires_in": 3600,
                "refresh_token": f"rt-NEW{len(forms)}"}

    monkeypatch.setattr(ts, "_post", post)
    ts.get()
    fails[0] = False
    now[0] += 3600
    assert ts.get() == "at-2"
    assert forms[1]["refresh_token"] == "rt-NEW1"
    assert [t for _, t, _ in saved] == ["rt-NEW1", "rt-NEW2"]
    assert all(fp == fingerprint("rt") for _, _, fp in saved)
