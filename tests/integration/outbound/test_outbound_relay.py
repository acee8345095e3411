"""Submission → queue → smarthost, end to end through a running gateway."""

from __future__ import annotations

import smtplib

from sqlalchemy import select

from gateway import metrics
from gateway.store.tables import (
    Article,
    CommEntry,
    CommObject,
    Communication,
    OutboundMessage,
    Ticket,
)
from tests.integration.outbound.conftest import statuses, submission_port, wait_for
from tests.peers.smarthost import AuthSink

MSG = (b"From: Agent Smith <agent@internal.test>\r\nTo: Customer <cust@customer.test>\r\n"
       b"Subject: Your order\r\nX-Deskgate-Queue: Sales\r\nBcc: hidden@internal.test\r\n"
       b"\r\nHello,\r\nyour order shipped.\r\n")


class TestSubmissionToRelay:
    def test_allowed_network_message_is_rewritten_stored_and_delivered(
            self, tmp_path, outbound_config, run_gateway):
        """A client in allow_networks submits; the relay gets the rewritten message once."""
        with AuthSink() as sink:
            cfg = outbound_config(sink.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                refused = s.sendmail("agent@internal.test", ["cust@customer.test"], MSG)
            assert refused == {}
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="sent")
            got = sink.received
            assert len(got) == 1
            assert got[0].mail_from == "sales@example.org"
            assert got[0].rcpts == ["cust@customer.test"]
            data = got[0].data
            assert b"From: sales@example.org" in data
            assert b"X-Deskgate-Queue" not in data and b"hidden@internal.test" not in data
            assert b"Subject: [Ticket#" in data and b"Message-ID: <" in data
            with rg.gateway.engine.connect() as conn:
                art = conn.execute(select(Article)).one()
                t = conn.execute(select(Ticket)).one()
                comms = conn.execute(select(Communication.account_type, Communication.status)
                                     .where(Communication.direction == "Outgoing")).all()
                objs = conn.execute(select(CommObject.type)).scalars().all()
            assert art.direction == "outgoing" and art.sender_type == "agent"
            assert art.transmission_status == "sent"
            assert t.queue == "Sales" and f"[Ticket#{t.number}]" in art.subject
            assert ("SMTP", "Successful") in comms and len(comms) >= 2
            assert "Connection" in objs and "Message" in objs
            with rg.gateway.engine.connect() as conn:
                m = conn.execute(select(OutboundMessage)).one()
            assert m.attempts == 1


class TestReload:
    def test_reload_switches_the_relay(self, outbound_config, run_gateway):
        """After a reload with a new [relay] port, queued mail goes to the new smarthost."""
        with AuthSink() as old, AuthSink() as new:
            cfg = outbound_config(old.port)
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.sendmail("agent@internal.test", ["cust@customer.test"], MSG)
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="first delivery")
            conf = cfg.conf_dir / "40-outbound.toml"
            conf.write_text(conf.read_text().replace(f"port = {old.port}",
                                                     f"port = {new.port}"))
            assert rg.call(rg.gateway.reload())
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.sendmail("agent@internal.test", ["cust@customer.test"], MSG)
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent", "sent"],
                     what="second delivery")
            assert len(old.received) == 1 and len(new.received) == 1
            with rg.gateway.engine.connect() as conn:
                clients = conn.execute(select(CommEntry.value).where(
                    CommEntry.key == "Client")).scalars().all()
            assert clients and "no AUTH, client in allow_networks" in clients[0]


    def test_a_relay_added_by_reload_starts_the_sender(self, outbound_config, run_gateway):
        """No [relay] host at start (no submission: mail from `deskgate send` and
        auto-responses): it stays queued, no sender runs; a reload that adds the host
        starts the sender, and the queued mail goes out."""
        from tests.integration.outbound.test_outbound_cli import cli

        with AuthSink() as sink:
            cfg, rg, add_host = started_without_relay_host(sink, outbound_config, run_gateway)
            assert "outbound-sender" not in [s.name for s in rg.gateway.services]
            res = cli(cfg.conf_dir, "send", "--queue", "Sales", stdin=MSG)
            assert res.returncode == 0, res.stderr
            assert statuses(rg.gateway.engine) == ["queued"]
            add_host()
            assert rg.call(rg.gateway.reload())
            assert "outbound-sender" in [s.name for s in rg.gateway.services]
            assert metrics.SERVICE_UP.labels("outbound-sender")._value.get() == 1
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="sent after reload")
            assert len(sink.received) == 1

    def test_a_sender_that_cannot_start_on_reload_leaves_the_reload_done(
            self, outbound_config, run_gateway, monkeypatch):
        """The sender a reload adds fails to start: the reload still completes (new
        configuration, counted ok), the sender is reported down and tried again by
        the next reload."""
        from gateway import app

        with AuthSink() as sink:
            _cfg, rg, add_host = started_without_relay_host(sink, outbound_config, run_gateway)
            real = app._sender
            tries: list[str] = []

            def failing(host):
                svc = real(host)

                async def start() -> None:
                    tries.append("start")
                    raise OSError("cannot start")
                svc.start = start
                return svc
            monkeypatch.setattr(app, "_sender", failing)
            ok_before = metrics.RELOADS.labels("ok")._value.get()
            hooks = list(rg.gateway.reload_hooks)
            add_host()
            assert rg.call(rg.gateway.reload()) is True
            assert tries == ["start"]
            assert rg.gateway.reload_hooks == hooks     # the failed sender's hook is gone
            assert rg.gateway.config.relay.host == "127.0.0.1"
            assert metrics.RELOADS.labels("ok")._value.get() == ok_before + 1
            assert "outbound-sender" not in [s.name for s in rg.gateway.services]
            assert metrics.SERVICE_UP.labels("outbound-sender")._value.get() == 0
            monkeypatch.setattr(app, "_sender", real)
            assert rg.call(rg.gateway.reload()) is True
            assert "outbound-sender" in [s.name for s in rg.gateway.services]


def started_without_relay_host(sink, outbound_config, run_gateway):
    """A gateway whose [relay] has no host (no submission, so the configuration is
    valid): (its config, the running gateway, a function that puts the sink's host
    back into the file for a reload)."""
    from gateway.config import load_config

    cfg = outbound_config(sink.port, submission=False)
    conf = cfg.conf_dir / "40-outbound.toml"
    with_host = conf.read_text()
    conf.write_text(with_host.replace('host = "127.0.0.1"', 'host = ""'))
    return cfg, run_gateway(load_config(cfg.conf_dir)), lambda: conf.write_text(with_host)


class TestDkimEndToEnd:
    def test_relayed_message_carries_verifiable_signatures(self, tmp_path, outbound_config,
                                                           run_gateway):
        """With two [[dkim]] keys (RSA, Ed25519) the relayed copy, with its Received
        header, verifies for both; a header changed in transit makes it fail."""
        import dkim as dkimpy

        from gateway.outbound.dkim import dns_record, generate_key, key_pem

        keys = {"rsa": generate_key(), "ed": generate_key(True)}
        dkim_toml = ""
        for sel, key in keys.items():
            path = tmp_path / f"{sel}.pem"
            path.write_bytes(key_pem(key))
            path.chmod(0o600)
            dkim_toml += f'[[dkim]]\ndomain = "example.org"\nselector = "{sel}"\n' \
                         f'key_file = "{path}"\n'
        records = {f"{sel}._domainkey.example.org.".encode(): dns_record(k).encode()
                   for sel, k in keys.items()}

        def dnsfunc(name, timeout=5):
            return records.get(name)

        def verify(data, idx):
            try:
                return dkimpy.DKIM(data).verify(idx=idx, dnsfunc=dnsfunc)
            except dkimpy.DKIMException:
                return False

        with AuthSink() as sink:
            cfg = outbound_config(sink.port, files={"45-dkim.toml": dkim_toml})
            rg = run_gateway(cfg)
            with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
                s.sendmail("agent@internal.test", ["cust@customer.test"],
                           MSG.replace(b"X-Deskgate-Queue: Sales", b"X-Deskgate-Queue: Support"))
            wait_for(lambda: statuses(rg.gateway.engine) == ["sent"], what="delivery")
            data = sink.received[0].data
            assert data.count(b"DKIM-Signature:") == 2
            # The Received header of the submission, below the signatures (where it is
            # when added before signing), does not break them.
            assert data.count(b"\r\nReceived: from ") == 1
            assert data.rindex(b"DKIM-Signature:") < data.index(b"\r\nReceived: from ")
            assert verify(data, 0) and verify(data, 1)
            tampered = data.replace(b"Subject: [Ticket#", b"Subject: [Ticket #")
            assert not verify(tampered, 0) and not verify(tampered, 1)
