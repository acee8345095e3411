"""`deskgate deliver -r A -r B` where the gateway takes A and answers B with a 4xx (an
address that is `invalid-temporarily`): a pipe transport has one exit code for all
recipients, so exit 0 would tell the MTA that B has the message too and it would never
be tried again. The exit is 75; the retry finds A's copy stored (a duplicate) and
tries B again. In-process and --via-socket alike, as real `deskgate` processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import load_config
from tests.integration.cli.test_cli_contract import cli

if TYPE_CHECKING:
    from tests.conftest import RunningGateway


def mail() -> bytes:
    return (f"From: alice@customer.test\nTo: support@example.org, paused@example.org\n"
            f"Subject: printer\nMessage-ID: <{uuid.uuid4().hex}@customer.test>\n\n"
            "The printer is broken.\n").encode()


def tickets(conf: Path) -> list[dict[str, object]]:
    r = cli(conf, "tickets", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed: list[dict[str, object]] = json.loads(r.stdout)
    return listed


class TestOneRecipientTemporarilyRefused:
    def test_in_process(self, make_confdir: Callable[..., Path]) -> None:
        """The known recipient's copy is stored, the 450 is named on stderr and the exit
        is 75; delivered again, the stored copy is a duplicate (one ticket) and the exit
        is 75 again while the address stays paused."""
        conf = make_confdir()
        raw = mail()
        args = ("deliver", "-r", "support@example.org", "-r", "paused@example.org")
        r = cli(conf, *args, stdin=raw)
        assert r.returncode == 75, (r.stdout, r.stderr)
        assert "<paused@example.org>: 450 4.2.1" in r.stderr, r.stderr
        assert r.stdout.startswith("new: ticket "), r.stdout
        again = cli(conf, *args, stdin=raw)
        assert again.returncode == 75, (again.stdout, again.stderr)
        assert again.stdout.startswith("duplicate: ticket "), again.stdout
        assert len(tickets(conf)) == 1

    def test_in_process_all_taken_is_still_0(self, make_confdir: Callable[..., Path]) -> None:
        """Two recipients the gateway takes: exit 0."""
        conf = make_confdir()
        r = cli(conf, "deliver", "-r", "support@example.org", "-r", "sales@example.org",
                stdin=mail())
        assert r.returncode == 0, (r.stdout, r.stderr)

    def test_via_socket(self, make_confdir: Callable[..., Path],
                        run_gateway: Callable[..., RunningGateway]) -> None:
        """The same over the running gateway's LMTP socket: 450 at RCPT for one
        recipient, 250 after the data for the other, exit 75."""
        conf = make_confdir()
        run_gateway(load_config(conf), tcp=False)
        r = cli(conf, "deliver", "--via-socket", "--json", "-r", "support@example.org",
                "-r", "paused@example.org", stdin=mail())
        assert r.returncode == 75, (r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert sorted((x["recipient"], x["reply"][:3]) for x in out["recipients"]) == [
            ("paused@example.org", "450"), ("support@example.org", "250")], out
