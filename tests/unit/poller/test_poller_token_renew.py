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


def test_a_rotated_token_that_cannot_be_stored_is_not_written_into_the_error(
        make_confdir, monkeypatch):
    """The database error of storing a rotated refresh token carries the statement's
    parameters (the new token): the Authentication error names the failure without it."""
    import pytest
    from sqlalchemy.exc import OperationalError

    from gateway.inbound.poller.session import MailboxError

    cfg = load_config(make_confdir({"50-acc.toml": ACCOUNT}))

    def save(account, token, fp):
        raise OperationalError("INSERT INTO poller_token ...", (account, token, fp),
                               Exception("database is locked"))

    ts = TokenSource(cfg.account[0], cfg.root, lambda a: None, save)
    monkeypatch.setattr(ts, "_post", lambda form: {"access_token": "at-1", "expires_in": 3600,
                                                   "refresh_token": "rt-NEW-s3cret"})
    with pytest.raises(MailboxError) as info:
        ts.get()
    assert info.value.step == "auth"
    assert "rt-NEW-s3cret" not in str(info.value) and "at-1" not in str(info.value)
    assert "could not be stored" in info.value.reason
    assert "database is locked" in info.value.reason
