"""End to end with Request Tracker 5: LMTP → deskgate → hand-off worker → RT REST2."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway.config import load_config
from tests.integration.helpdesk.test_handoff_webhook import cli, deliver, handoffs, wait_for
from tests.peers.rt import RtServer

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

pytestmark = [pytest.mark.rt, pytest.mark.postgres]


POLICY = """
    [[filter]]
    name = "010-server"
    match = [{ header = "Subject", value = "server" }]
    [filter.set]
    "X-Deskgate-DynamicField-Server" = "web01"
    "X-Deskgate-DynamicField-Colour" = "red"
    """


@pytest.fixture
def rt_gateway(rt5: RtServer, make_confdir: Callable[..., Path],
               run_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    """A gateway handing off to the session's RT (deskgate queue Support → RT Support)."""
    return rt_gateway_with(rt5, make_confdir, run_gateway, POLICY)


def rt_gateway_with(rt5: RtServer, make_confdir: Callable[..., Path],
                    run_gateway: Callable[..., RunningGateway], policy: str
                    ) -> RunningGateway:
    conf = make_confdir({"50-helpdesk.toml": textwrap.dedent(f"""
        [helpdesk]
        type = "rt-rest2"
        url = "{rt5.url}/REST/2.0"
        token_file = "secrets/rt.token"
        retry = "1s, 1s, 1s"
        poll_interval = "0.2s"
        ticket_url = "{rt5.url}/Ticket/Display.html?id={{id}}"
        [helpdesk.queues]
        Raw = "General"
        """)}, policies={"10.toml": policy})
    secrets = conf.parent / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "rt.token").write_text(rt5.token + "\n")
    (secrets / "rt.token").chmod(0o600)
    return run_gateway(load_config(conf))


def message(mid: str, subject: str, body: str, extra: str = "") -> bytes:
    return (f"From: Alice Example <alice@customer.test>\r\nTo: support@example.org\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{mid}@customer.test>\r\n{extra}"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" + body).encode()


class TestRtHandoff:
    """Mail over LMTP becomes an RT ticket, and its follow-up RT correspondence."""

    def test_filter_set_subject_from_and_body_reach_rt(
            self, rt5: RtServer, make_confdir: Callable[..., Path],
            run_gateway: Callable[..., RunningGateway]) -> None:
        """What a postmaster filter set (Subject, From, Body) is RT's subject, requestor
        and content: RT gets deskgate's article, not the original message."""
        tag = uuid.uuid4().hex[:8]
        rg = rt_gateway_with(rt5, make_confdir, run_gateway, rf"""
            [[filter]]
            name = "010-webform"
            match = [{{ header = "Subject", value = "^web form {tag}$" }},
                     {{ header = "Body", value = "email:\\s*(?P<who>\\S+@\\S+)" }}]
            [filter.set]
            "Subject" = "Printer order {tag}"
            "From" = "Web Customer <[**\\who**]>"
            "Body" = "The customer wants a printer."
            """)
        assert deliver(rg, message(f"w-{tag}", f"web form {tag}",
                                   "email: dora@customer.test\r\nplease call\r\n")) == 250
        assert wait_for(lambda: [h["status"] for h in handoffs(rg)] == ["delivered"], 60)
        [t] = rt5.database.tickets(f"Printer order {tag}")
        assert t.requestors == ["dora@customer.test"]
        [create] = rt5.database.transactions(t.id)
        assert create.content.strip() == "The customer wants a printer."

    def test_create_and_followup_reach_rt(self, rt5: RtServer,
                                          rt_gateway: RunningGateway) -> None:
        """The first message creates an RT ticket in the mapped queue with requestor and
        body; a reply (In-Reply-To) corresponds on it; `tickets show --json` carries RT's
        ticket id under helpdesk."""
        tag = uuid.uuid4().hex[:8]
        subject = f"Printer on fire {tag}"
        assert deliver(rt_gateway, message(f"c-{tag}", subject,
                                           "The printer is on fire. Ünïcödé.\r\n")) == 250
        assert wait_for(lambda: [h["status"] for h in handoffs(rt_gateway)] == ["delivered"],
                        60)
        [t] = rt5.database.tickets(subject)
        assert (t.queue, t.requestors) == ("Support", ["alice@customer.test"])
        [create] = rt5.database.transactions(t.id)
        assert "The printer is on fire. Ünïcödé." in create.content

        assert deliver(rt_gateway, message(
            f"r-{tag}", f"Re: {subject}", "Still burning.\r\n",
            f"In-Reply-To: <c-{tag}@customer.test>\r\n")) == 250
        assert wait_for(lambda: [h["status"] for h in handoffs(rt_gateway)]
                        == ["delivered", "delivered"], 60)
        txs = rt5.database.transactions(t.id)
        assert [x.type for x in txs] == ["Create", "Correspond"]
        assert "Still burning." in txs[1].content
        assert len(rt5.database.tickets(f"%{subject}")) == 1

        number = handoffs(rt_gateway)[0]["ticket"]
        assert number == str(t.id)                 # RT's id is the number deskgate keeps
        out = cli(rt_gateway, "tickets", "show", number, "--json")
        assert out.returncode == 0, out.stderr
        shown = json.loads(out.stdout)
        assert shown["helpdesk"]["type"] == "rt-rest2"
        assert shown["helpdesk"]["ticket_id"] == str(t.id)
        assert shown["helpdesk"]["state"] == "delivered"
        assert shown["helpdesk"]["url"] == f"{rt5.url}/Ticket/Display.html?id={t.id}"

    def test_filter_decisions_fill_rt_custom_fields_and_log_what_rt_lacks(
            self, rt5: RtServer, rt_gateway: RunningGateway) -> None:
        """A filter's DynamicField-Server fills RT's Server field; DynamicField-Colour,
        which RT lacks, is a Warn in the hand-off's communication log."""
        tag = uuid.uuid4().hex[:8]
        subject = f"server down {tag}"
        assert deliver(rt_gateway, message(f"s-{tag}", subject, "It is down.\r\n")) == 250
        assert wait_for(lambda: [h["status"] for h in handoffs(rt_gateway)] == ["delivered"],
                        60)
        [t] = rt5.database.tickets(subject)
        assert t.custom_fields == {"Server": "web01"}
        comms = [c for c in json.loads(cli(rt_gateway, "log", "list", "--json").stdout)
                 if c["account_type"] == "Handoff"]
        assert len(comms) == 1 and comms[0]["status"] == "Successful"
        warn = cli(rt_gateway, "log", "show", str(comms[0]["id"]), "--priority", "Warn",
                   "--json").stdout
        assert "RT has no ticket custom field 'Colour'" in warn

    def test_helpdesk_check_cli(self, rt_gateway: RunningGateway) -> None:
        """`deskgate helpdesk check --json` logs in to RT and finds every deskgate queue
        (Raw mapped to General, the others by their own names)."""
        out = cli(rt_gateway, "helpdesk", "check", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        report = json.loads(out.stdout)
        assert report["ok"] and report["type"] == "rt-rest2"
        steps = {s["step"]: s for s in report["steps"]}
        assert "RT 5." in steps["login"]["text"]
        assert {k for k in steps if k.startswith("queue ")} == {
            "queue General", "queue Support", "queue Sales", "queue Junk"}
