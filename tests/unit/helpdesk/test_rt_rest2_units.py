"""The rt-rest2 connector's pure parts: URL base, priority mapping, RT's subject tag,
body comparison, and construction from a config (auth header, no secret in account)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.helpdesk.base import HandoffError
from gateway.helpdesk.rt_rest2 import TAG_RE, RtRest2, api_base, normalize_text, rt_priority


class TestPieces:
    """Small functions the connector is built from."""

    @pytest.mark.parametrize("url", ["http://rt.test", "http://rt.test/", "http://rt.test/REST/2.0",
                                     "http://rt.test/REST/2.0/"])
    def test_api_base_with_or_without_rest_path(self, url: str) -> None:
        """The base URL may or may not end in /REST/2.0."""
        assert api_base(url) == "http://rt.test/REST/2.0"

    def test_api_base_keeps_a_web_path(self) -> None:
        """RT under a path (WebPath) keeps it."""
        assert api_base("https://x.test/rt/") == "https://x.test/rt/REST/2.0"

    @pytest.mark.parametrize(("prio", "rt"), [("1 very low", 0), ("2 low", 25), ("3 normal", 50),
                                              ("4 high", 75), ("5 very high", 100),
                                              ("urgent", None), ("", None), ("9 odd", None)])
    def test_priority_mapping(self, prio: str, rt: int | None) -> None:
        """deskgate 1..5 → RT 0..100 in steps of 25; anything else leaves RT's default."""
        assert rt_priority(prio) == rt

    @pytest.mark.parametrize(("subject", "tid"), [
        ("Re: [hd.test #42] printer", "42"), ("[example.com #7]", "7"),
        ("AW: [My Company #1234] x", "1234"), ("[Ticket#2026] no", None), ("#12 no", None)])
    def test_rt_tag(self, subject: str, tid: str | None) -> None:
        """RT's "[rtname #id]" tag is found; deskgate's own hook is not mistaken for it."""
        m = TAG_RE.search(subject)
        assert (m.group(1) if m else None) == tid

    def test_normalize_text_ignores_line_ends_and_trailing_space(self) -> None:
        """CRLF/LF and trailing blanks do not make two bodies differ; words do."""
        assert normalize_text("a  \r\nb\r\n\r\n") == normalize_text("a\nb")
        assert normalize_text("a b") != normalize_text("a  b")


class TestConstruction:
    """The connector as the worker builds it from the whole config."""

    def conf(self, make_confdir: Callable[..., Path], body: str) -> RtRest2:
        conf = make_confdir({"60-hd.toml": textwrap.dedent(body)})
        (conf.parent / "tok").write_text("1-2-secret-token\n")
        (conf.parent / "pw").write_text("pw-secret\n")
        (conf.parent / "tok").chmod(0o600)     # secret files must be private (check)
        (conf.parent / "pw").chmod(0o600)
        return RtRest2(load_config(conf))

    def test_token_auth_header_and_account_without_secret(
            self, make_confdir: Callable[..., Path]) -> None:
        """token_file → "Authorization: token …"; account is the API URL only."""
        c = self.conf(make_confdir, """
            [helpdesk]
            type = "rt-rest2"
            url = "https://rt.example.org/"
            token_file = "tok"
            """)
        assert c.auth == "token 1-2-secret-token"
        assert c.account == "https://rt.example.org/REST/2.0"
        assert c.context is not None            # https: certificates are verified

    def test_basic_auth_from_user_and_password(self, make_confdir: Callable[..., Path]) -> None:
        """user + password_file → HTTP basic auth."""
        c = self.conf(make_confdir, """
            [helpdesk]
            type = "rt-rest2"
            url = "http://rt.example.org"
            user = "deskgate"
            password_file = "pw"
            """)
        assert c.auth == "Basic ZGVza2dhdGU6cHctc2VjcmV0"
        assert "pw-secret" not in c.account

    def test_expected_queues_are_every_deskgate_queue_as_rt_sees_it(
            self, make_confdir: Callable[..., Path]) -> None:
        """check() looks for each deskgate queue, mapped or under its own name."""
        c = self.conf(make_confdir, """
            [helpdesk]
            type = "rt-rest2"
            url = "http://rt.example.org"
            token_file = "tok"
            [helpdesk.queues]
            Raw = "General"
            """)
        assert c.expected_queues == ["General", "Support", "Sales", "Junk"]

    def test_non_numeric_ticket_id_is_permanent(self, make_confdir: Callable[..., Path]) -> None:
        """A follow-up naming something that is no RT id fails before any request."""
        from tests.integration.helpdesk.test_helpdesk_rt import item

        c = self.conf(make_confdir, """
            [helpdesk]
            type = "rt-rest2"
            url = "http://127.0.0.1:9"
            token_file = "tok"
            """)
        with pytest.raises(HandoffError) as exc:
            c.deliver(item(kind="followup", rt_ticket="T-17"))
        assert not exc.value.temporary and "'T-17' is not an RT ticket id" in str(exc.value)
