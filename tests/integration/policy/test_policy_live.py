"""Policy behaviour on a running gateway (LMTP) and on PostgreSQL."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from tests.integration.policy.conftest import POLICY_QUEUES, add_outgoing, deliver, ticket
from tests.peers.lmtp import LmtpClient
from tests.unit.policy.mails import dsn, mail

GOOD = """
[[filter]]
name = "010-printer"
match = [{ header = "Subject", value = "printer" }]
set = { "X-Deskgate-Queue" = "Sales" }
"""


def lmtp_send(rg, raw: bytes) -> list[tuple[int, str]]:
    c = LmtpClient(rg.socket_path)
    c.lhlo()
    _rcpt, data = c.transaction("carla@customer.test", ["support@example.org"], raw)
    c.close()
    return data


class TestLiveReload:
    def test_reload_on_running_gateway_keeps_old_policy_when_broken(self, make_confdir,
                                                                     run_gateway):
        """While serving LMTP, a broken policy reload is refused and mail keeps routing."""
        cfg = load_config(make_confdir(policies={"10-p.toml": GOOD}))
        rg = run_gateway(cfg)
        assert lmtp_send(rg, mail("printer jam"))[0][0] == 250
        pfile = cfg.root / "policies" / "10-p.toml"
        pfile.write_text(GOOD.replace('"printer"', '"printer[", not = maybe'))
        assert rg.call(rg.gateway.reload()) is False
        old_rt = rg.gateway.runtime
        assert lmtp_send(rg, mail("printer jam again"))[0][0] == 250
        assert rg.gateway.runtime is old_rt
        from sqlalchemy import select

        from gateway.store.tables import Ticket
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(Ticket.queue)).scalars().all() == ["Sales", "Sales"]


@pytest.mark.postgres
class TestPostgres:
    def test_followup_threading_and_bounce_on_postgresql(self, make_confdir, pg_url):
        """Subject follow-up, References threading and a DSN work on PostgreSQL too."""
        from gateway.app import Gateway

        conf = make_confdir({"40-q.toml": POLICY_QUEUES,
                             "90-db.toml": f'[gateway]\ndatabase = "{pg_url}"\n'})
        gw = Gateway(load_config(conf))
        try:
            gw.prepare_store()
            n = deliver(gw, mail("printer", mid="<pg-1@customer.test>")).ticket_number
            assert deliver(gw, mail(f"Re: [Ticket#{n}]")).ticket_number == n
            assert deliver(gw, mail("Re: x", frm="x@elsewhere.test",
                                    references="<pg-1@customer.test>")).ticket_number == n
            out_id = add_outgoing(gw, n, "<pg-out@helpdesk.test>")
            assert deliver(gw, dsn("<pg-out@helpdesk.test>")).ticket_number == n
            t = ticket(gw, n)
            assert len(t["articles"]) == 5
            assert next(a for a in t["articles"] if a["id"] == out_id)[
                "transmission_status"] == "failed"
        finally:
            gw.close()
