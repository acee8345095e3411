"""Mail deskgate found looping (an auto-reply, a list, a bounce: the article's `loop`)
reaches the helpdesk marked so that the helpdesk sends no auto-response to it either;
mail whose loop flag a filter cleared (`Loop: no`) is handed over unmarked."""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, load_config
from gateway.helpdesk.base import HandoffItem
from gateway.helpdesk.otobo_pipe import OtoboPostmaster, decision_headers
from gateway.helpdesk.otobo_rest import NO_AUTO_RESPONSE, OtoboRest
from gateway.helpdesk.rt_rest2 import RtRest2
from gateway.helpdesk.webhook import document
from tests.integration.helpdesk.items import item, mail
from tests.unit.helpdesk.fakehttp import Answer, FakeHttp, Request, fake_http


def looped(it: HandoffItem, loop: bool = True) -> HandoffItem:
    """`it` with the stored article's loop flag (decisions as they were: X-Autoreply alone
    sets no Loop decision)."""
    return dataclasses.replace(it, article={**it.article, "loop": loop})


def auto_reply(kind: str = "create", decisions: dict[str, str] | None = None) -> HandoffItem:
    return item(mail("Out of office", headers={"X-Autoreply": "yes"}),
                kind="followup" if kind == "followup" else "create",
                helpdesk_ticket_id="7" if kind == "followup" else "", decisions=decisions)


@pytest.fixture
def config(make_confdir: Callable[..., Path]) -> Callable[[str, str], Config]:
    def make(kind: str, url: str) -> Config:
        auth = {"otobo-rest": 'user = "deskgate"\npassword_file = "sec"',
                "rt-rest2": 'token_file = "sec"', "otobo-postmaster": 'command = ["/bin/true"]',
                "webhook": 'secret_file = "sec"'}[kind]
        conf = make_confdir({"60-hd.toml": textwrap.dedent(f"""
            [helpdesk]
            type = "{kind}"
            """) + (f'url = "{url}"\n' if url else "") + auth + "\n"})
        (conf.parent / "sec").write_text("s3cret\n")
        (conf.parent / "sec").chmod(0o600)
        return load_config(conf)
    return make


@pytest.fixture
def server() -> Iterator[FakeHttp]:
    with fake_http() as f:
        yield f


class TestPostmasterPipe:
    """X-OTOBO-Loop: yes when deskgate found a loop, whatever signal it found."""

    @pytest.mark.parametrize("kind", ["create", "followup"])
    def test_detected_loop_sends_the_loop_header(
            self, config: Callable[[str, str], Config], kind: str) -> None:
        """An auto-reply OTOBO itself would not recognise (X-Autoreply) gets Loop: yes."""
        cfg = config("otobo-postmaster", "")
        it = looped(auto_reply(kind))
        assert ("Loop", "yes") in decision_headers(it, cfg)
        message, _ = OtoboPostmaster(cfg).render(it)
        assert b"\nX-OTOBO-Loop: yes\n" in message

    def test_cleared_loop_sends_none(self, config: Callable[[str, str], Config]) -> None:
        """A filter's `Loop: no` cleared the flag: no loop header reaches OTOBO."""
        cfg = config("otobo-postmaster", "")
        it = looped(auto_reply(decisions={"Loop": "no"}), loop=False)
        assert [n for n, _v in decision_headers(it, cfg) if n == "Loop"] == []

    def test_no_loop_no_header(self, config: Callable[[str, str], Config]) -> None:
        """Ordinary mail: no loop header."""
        it = looped(item(mail("Printer")), loop=False)
        assert "Loop" not in dict(decision_headers(it, config("otobo-postmaster", "")))


@pytest.fixture
def otobo(server: FakeHttp, config: Callable[[str, str], Config]) -> OtoboRest:
    server.on("POST", "/ws/Session", (200, {}, {"SessionID": "sid"}))
    server.on("POST", "/ws/Ticket", (200, {}, {"TicketID": "7", "TicketNumber": "20261206100071",
                                               "ArticleID": "9"}))
    server.on("PATCH", "/ws/Ticket/7", (200, {}, {"TicketID": "7", "ArticleID": "10"}))
    server.on("GET", "/ws/Ticket/7", (200, {}, {"Ticket": [
        {"TicketID": "7", "TicketNumber": "20261206100071", "State": "open",
         "StateType": "open"}]}))
    return OtoboRest(config("otobo-rest", f"{server.url}/ws"))


def sent(server: FakeHttp) -> list[dict[str, Any]]:
    return [r.json for r in server.requests if r.method in ("POST", "PATCH")
            and r.path != "/ws/Session"]


class TestOtoboRest:
    """TicketCreate / TicketUpdate name an auto-response type no queue is meant to have."""

    @pytest.mark.parametrize("kind", ["create", "followup"])
    def test_detected_loop_asks_for_no_auto_response(
            self, server: FakeHttp, otobo: OtoboRest, kind: str) -> None:
        """The article's AutoResponseType is 'auto remove' (OTOBO's defaults, auto reply
        and auto follow up, would answer the auto-reply); the log says why."""
        res = otobo.deliver(looped(auto_reply(kind)))
        assert sent(server)[-1]["Article"]["AutoResponseType"] == NO_AUTO_RESPONSE \
            == "auto remove"
        assert any(k == "AutoResponseType" and "looping" in text for _lvl, k, text in res.log)

    @pytest.mark.parametrize("loop", [False, None])
    def test_without_loop_otobo_decides(self, server: FakeHttp, otobo: OtoboRest,
                                        loop: bool | None) -> None:
        """No loop (or an item without the flag): OTOBO's configured default applies."""
        it = item(mail("Printer"))
        otobo.deliver(it if loop is None else looped(it, loop))
        assert "AutoResponseType" not in sent(server)[-1]["Article"]

    def test_otobo_refusing_the_type_still_gets_the_article(
            self, server: FakeHttp, otobo: OtoboRest) -> None:
        """An OTOBO where that type was set invalid refuses it: the article is sent again
        with OTOBO's default and a Warn line says an auto-response may have gone out."""
        def create(r: Request) -> Answer:
            if r.json["Article"].get("AutoResponseType"):
                return 200, {}, {"Error": {
                    "ErrorCode": "TicketCreate.InvalidParameter",
                    "ErrorMessage": "TicketCreate: Article->AutoResponseType parameter is "
                                    "invalid!"}}
            return 200, {}, {"TicketID": "7", "TicketNumber": "20261206100071"}
        server.on("POST", "/ws/Ticket", create)
        res = otobo.deliver(looped(auto_reply()))
        assert res.ticket_id == "7"
        assert [("AutoResponseType" in b["Article"]) for b in sent(server)] == [True, False]
        assert any(lvl == "Warn" and k == "AutoResponseType" for lvl, k, _t in res.log)


@pytest.fixture
def rt(server: FakeHttp, config: Callable[[str, str], Config]) -> RtRest2:
    server.on("GET", "/REST/2.0/queue/Raw", (200, {}, {"TicketCustomFields": []}))
    server.on("POST", "/REST/2.0/ticket", (201, {}, {"id": 5}))
    server.on("POST", "/REST/2.0/ticket/7/correspond", (201, {}, ["Correspondence added"]))
    return RtRest2(config("rt-rest2", server.url))


class TestRtRest2:
    """A new RT ticket from looping mail squelches RT's mail to its requestor (what
    rt-mailgate does for mail it finds auto-generated)."""

    def test_detected_loop_squelches_the_requestor_on_create(
            self, server: FakeHttp, rt: RtRest2) -> None:
        """The ticket's SquelchMailTo names the requestor (a plain value: REST2 drops a
        list): RT's "On Create Autoreply To Requestors" skips it."""
        res = rt.deliver(looped(auto_reply()))
        body = server.requests[-1].json
        assert body["Requestor"] == "alice@example.com"
        assert body["SquelchMailTo"] == "alice@example.com"
        assert "TransSquelchMailTo" not in body
        assert any("looping" in text for _lvl, _k, text in res.log)

    @pytest.mark.parametrize("loop", [False, None])
    def test_without_loop_nothing_is_squelched(self, server: FakeHttp, rt: RtRest2,
                                               loop: bool | None) -> None:
        """Ordinary mail (or an item without the flag) gets RT's auto-reply as configured."""
        it = item(mail("Printer"))
        rt.deliver(it if loop is None else looped(it, loop))
        assert "SquelchMailTo" not in server.requests[-1].json

    def test_follow_up_notes_what_rest2_cannot_do(self, server: FakeHttp, rt: RtRest2) -> None:
        """REST2's correspond takes no squelch list: the body is unchanged and a Notice
        says what RT's scrips must do."""
        res = rt.deliver(looped(auto_reply("followup")))
        assert set(server.requests[-1].json) <= {"Content", "ContentType", "Attachments"}
        assert any(lvl == "Notice" and "looping" in text for lvl, _k, text in res.log)


class TestWebhook:
    """The JSON document carries the loop flag in the article (a key added, none changed)."""

    @pytest.mark.parametrize("loop", [True, False])
    def test_article_loop(self, loop: bool) -> None:
        """article.loop is the stored flag; the other article keys are as before."""
        it = looped(auto_reply(), loop)
        doc = document(it)
        assert doc["article"]["loop"] is loop
        assert {k: v for k, v in doc["article"].items() if k != "loop"} == {
            "id": it.article_id, **{k: v for k, v in it.article.items() if k != "loop"}}
