"""X-OTOBO-* rendering of deskgate's decisions for the otobo-postmaster pipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from gateway.config import load_config
from gateway.helpdesk.otobo_pipe import (
    OtoboPostmaster,
    canonical_prefix,
    decision_headers,
    rewrite_headers,
)
from tests.integration.helpdesk.items import item, mail

PREFIXES = ("X-Deskgate-", "X-OTOBO-", "X-OTRS-")


class TestRewriteHeaders:
    """Prefixed headers go, deskgate's come, everything else stays byte for byte."""

    def test_strips_all_prefixes_folded_and_any_case(self) -> None:
        """Folded and lower-case prefixed headers are removed with their continuations."""
        raw = (b"From: a@b\r\nx-otobo-queue: Junk\r\n  still junk\r\nX-OTRS-State: closed\r\n"
               b"X-Deskgate-Priority: 1\r\nSubject: s\r\n\r\nX-OTOBO-Queue: in body\r\n")
        out = rewrite_headers(raw, PREFIXES, [("X-OTOBO-Queue", "Support")])
        assert out == (b"From: a@b\r\nSubject: s\r\nX-OTOBO-Queue: Support\r\n\r\n"
                       b"X-OTOBO-Queue: in body\r\n")

    def test_values_cannot_inject_headers(self) -> None:
        """CR/LF in a value collapse to spaces; non-ASCII becomes an RFC 2047 word."""
        out = rewrite_headers(b"From: a\n\nbody\n", PREFIXES,
                              [("X-OTOBO-Title", "x\r\nX-OTOBO-Queue: Junk"),
                               ("X-OTOBO-CustomerUser", "Jürgen")])
        assert out == (b"From: a\nX-OTOBO-Title: x X-OTOBO-Queue: Junk\n"
                       b"X-OTOBO-CustomerUser: =?utf-8?q?J=C3=BCrgen?=\n\nbody\n")


class TestDecisionHeaders:
    """Which OTOBO header names a create and a follow-up get."""

    def test_canonical_prefix(self) -> None:
        """The first prefix that is not X-Deskgate- is the helpdesk's spelling."""
        assert canonical_prefix(PREFIXES) == "X-OTOBO-"
        assert canonical_prefix(("X-Deskgate-", "X-OTRS-")) == "X-OTRS-"
        assert canonical_prefix(("X-Deskgate-",)) == "X-OTOBO-"

    def test_create_and_followup(self, make_confdir: Callable[..., Path]) -> None:
        """A create renders new-ticket names (queue = the item's), a follow-up FollowUp-* and
        only the queue besides."""
        cfg = load_config(make_confdir({"60.toml": """
            [gateway]
            header_prefixes = ["X-Deskgate-", "X-OTRS-"]
            [helpdesk]
            type = "otobo-postmaster"
            command = ["/bin/true"]
            """}))
        it = dataclasses.replace(item(mail("s"), decisions={
            "Queue": "Support", "Priority": "4 high", "DynamicField-Server": "a",
            "FollowUp-State": "open", "Loop": "yes"}), queue="Support::L1")
        got = dict(decision_headers(it, cfg))
        assert got["Queue"] == "Support::L1" and got["Priority"] == "4 high"
        assert got["DynamicField-Server"] == "a" and got["Loop"] == "yes"
        assert got["SenderType"] == "customer" and got["IsVisibleForCustomer"] == "1"
        assert "FollowUp-State" not in got
        fu = dataclasses.replace(it, kind="followup")
        got = dict(decision_headers(fu, cfg))
        assert set(got) == {"Queue", "FollowUp-State", "FollowUp-SenderType",
                            "FollowUp-IsVisibleForCustomer", "Loop"}
        rendered, _ = OtoboPostmaster(cfg).render(fu)
        assert b"X-OTRS-FollowUp-State: open\n" in rendered and b"X-OTOBO" not in rendered


class TestPartlySigned:
    """A valid signature that covers only part of the body is not shown as signed OK."""

    VALID = {"signed": True, "signature_valid": True, "signer": "alice@customer.test",
             "method": "pgp"}

    def test_pipe_headers_say_partly_signed_without_signed_ok(self) -> None:
        """The pipe gets a Signed text that says so and no SignedOK flag."""
        from gateway.helpdesk.otobo_pipe import crypto_headers

        whole = dict(crypto_headers(self.VALID))
        assert whole["SignedOK"] == "1"
        part = dict(crypto_headers({**self.VALID, "partially_signed": True}))
        assert "SignedOK" not in part
        assert "alice@customer.test" in part["Signed"]
        assert "only part of the message is signed" in part["Signed"]

    def test_rest_history_comment_says_partly_signed(self) -> None:
        """The REST hand-off's history comment names the partial signature."""
        from gateway.helpdesk.otobo_rest import history_comment

        assert "signature valid by alice" in history_comment("k", self.VALID)
        text = history_comment("k", {**self.VALID, "partially_signed": True})
        assert "valid for part of the message only" in text and "by alice" in text
