"""The inventory CLI against the database of a running gateway."""

from __future__ import annotations

import json

from gateway.cli import main
from gateway.config import load_config
from gateway.inventory import REMOVED_SOURCE
from tests.peers.lmtp import LmtpClient

EXTRA = """
[[queue]]
name = "Promo"
address = "promo@example.org"

[[address]]
email = "promo@example.org"
display_name = "Promotions"
queue = "Promo"
"""


def msg(n: int, to: str) -> bytes:
    return (f"From: c{n}@customer.test\r\nTo: {to}\r\nSubject: s{n}\r\n"
            f"Message-ID: <{n}@customer.test>\r\n\r\nbody {n}\r\n").encode()


class TestInventoryOfRunningGateway:
    def test_reload_removes_address_and_lists_show_it(self, make_confdir, run_gateway, capsys):
        """After a reload without an address the CLI lists it invalid, 'removed', and counts
        the open tickets the LMTP door created."""
        conf = make_confdir({"60-promo.toml": EXTRA})
        rg = run_gateway(load_config(conf))
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        for n, to in enumerate(("promo@example.org", "support@example.org",
                                "support@example.org")):
            _, data = c.transaction(f"c{n}@customer.test", [to], msg(n, to))
            assert [d[0] for d in data] == [250]

        (conf / "60-promo.toml").write_text('[[queue]]\nname = "Promo"\n')
        assert rg.call(rg.gateway.reload()) is True
        rcpt, _ = c.transaction("x@customer.test", ["promo@example.org"], msg(9, "promo"))
        c.close()
        assert rcpt[0][0] == 550

        capsys.readouterr()
        assert main(["--config", str(conf), "addresses", "list", "--search", "promo",
                     "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(r["email"], r["valid"], r["source"], r["display_name"]) for r in rows] == [
            ("promo@example.org", "invalid", REMOVED_SOURCE, "Promotions")]

        assert main(["--config", str(conf), "queues", "list", "--json"]) == 0
        counts = {r["name"]: r["open_tickets"] for r in json.loads(capsys.readouterr().out)}
        assert counts["Promo"] == 1 and counts["Support"] == 2 and counts["Sales"] == 0
