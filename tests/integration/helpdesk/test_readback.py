"""The classifier's labels read back from the helpdesk: a ticket an agent moved in OTOBO
(REST) or RT becomes a move by "helpdesk" in deskgate, which training learns from."""

from __future__ import annotations

import base64
import json
import textwrap
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from gateway.config import load_config
from tests.integration.helpdesk.test_handoff_otobo import delivered, msg, rest_conf
from tests.integration.helpdesk.test_handoff_rt import message
from tests.integration.helpdesk.test_handoff_webhook import cli, deliver, handoffs, wait_for
from tests.peers.otobo import AGENT, AGENT_PASSWORD, Otobo
from tests.peers.rt import ROOT_PASSWORD, RtServer

if TYPE_CHECKING:
    from tests.conftest import RunningGateway


def rest(method: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None
         ) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,  # noqa: S310
                                 headers={"Content-Type": "application/json",
                                          **(headers or {})})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read() or b"null")


@pytest.fixture
def start(make_confdir: Callable[..., Path], run_gateway: Callable[..., RunningGateway]
          ) -> Callable[[str], RunningGateway]:
    def run(conf: str) -> RunningGateway:
        conf_dir = make_confdir({"50-helpdesk.toml": conf})
        secrets = conf_dir.parent / "secrets"
        secrets.mkdir(exist_ok=True)
        for name, value in SECRETS.items():
            (secrets / name).write_text(value)
            (secrets / name).chmod(0o600)
        return run_gateway(load_config(conf_dir))
    return run


SECRETS: dict[str, str] = {}


def show(rg: RunningGateway, number: str) -> dict[str, Any]:
    out = cli(rg, "tickets", "show", number, "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


@pytest.mark.otobo
class TestOtoboReadBack:
    def test_agent_move_in_otobo_becomes_a_move_in_deskgate(
            self, otobo: Otobo, start: Callable[[str], RunningGateway]) -> None:
        """After an agent moved one of two handed-off tickets to Sales and raised its
        priority in OTOBO, `classify readback` records exactly that move (by helpdesk)
        and leaves the other, still in the mapped queue, alone."""
        url = otobo.start_rest()
        rg = start(rest_conf(url))
        assert deliver(rg, msg("rb1", "billing question")) == 250
        assert deliver(rg, msg("rb2", "printer broken")) == 250
        assert delivered(rg, 2)
        rows = sorted(handoffs(rg), key=lambda h: h["id"])
        moved, kept = rows[0], rows[1]
        rest("PATCH", f"{url}/Ticket/{moved['helpdesk_ticket_id']}",
             {"UserLogin": AGENT, "Password": AGENT_PASSWORD,
              "Ticket": {"Queue": "Sales", "Priority": "4 high"}})
        out = cli(rg, "classify", "readback", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout) == {"supported": True, "checked": 2, "moved": 1,
                                          "unknown_queue": 0, "failed": 0, "errors": []}
        t = show(rg, moved["ticket"])
        assert (t["queue"], t["priority"]) == ("Sales", "4 high")
        assert [(m["from_queue"], m["to_queue"], m["by"]) for m in t["moves"]] == [
            ("Support", "Sales", "helpdesk")]
        assert show(rg, kept["ticket"])["moves"] == []          # Misc maps back to Support
        again = json.loads(cli(rg, "classify", "readback", "--json").stdout)
        assert again["moved"] == 0


@pytest.mark.rt
class TestRtReadBack:
    def test_queue_changed_in_rt_is_read_back(
            self, rt5: RtServer, start: Callable[[str], RunningGateway]) -> None:
        """A ticket moved to Sales in RT is moved in deskgate by `classify readback`."""
        SECRETS["rt.token"] = rt5.token
        rt_gateway = start(textwrap.dedent(f"""
            [helpdesk]
            type = "rt-rest2"
            url = "{rt5.url}"
            token_file = "secrets/rt.token"
            retry = "1s, 1s, 1s"
            poll_interval = "0.2s"
            """))
        tag = uuid.uuid4().hex[:8]
        assert deliver(rt_gateway, message(f"rb-{tag}", f"Read back {tag}", "hi\r\n")) == 250
        assert wait_for(lambda: [h["status"] for h in handoffs(rt_gateway)] == ["delivered"],
                        60)
        h = handoffs(rt_gateway)[0]
        root = base64.b64encode(f"root:{ROOT_PASSWORD}".encode()).decode()   # an RT admin
        answer = rest("PUT", f"{rt5.url}/REST/2.0/ticket/{h['helpdesk_ticket_id']}",
                      {"Queue": "Sales"}, {"Authorization": f"Basic {root}"})
        assert rt5.database.ticket(int(h["helpdesk_ticket_id"])).queue == "Sales", answer
        out = cli(rt_gateway, "classify", "readback")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "1 moved" in out.stdout
        t = show(rt_gateway, h["ticket"])
        assert t["queue"] == "Sales" and t["moves"][-1]["by"] == "helpdesk"


class TestReadBackUnsupported:
    def test_webhook_cannot_be_asked(self, webhook_gateway: Callable[..., RunningGateway]
                                     ) -> None:
        """The webhook is one-way: readback says so and exits 1."""
        rg = webhook_gateway()
        out = cli(rg, "classify", "readback")
        assert out.returncode == 1 and "cannot be asked" in out.stderr
