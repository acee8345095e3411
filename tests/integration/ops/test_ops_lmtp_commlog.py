"""What the LMTP door writes to the communication log, seen through the log views."""

from __future__ import annotations

from gateway import commlog_views as views
from tests.integration.ops.ops_web import message
from tests.peers.lmtp import LmtpClient


def comms(rg, **kw):
    with rg.gateway.engine.connect() as conn:
        return [views.get_communication(conn, r["id"]) for r in
                views.list_communications(conn, views.LogFilter(sort="id", **kw))]


class TestLmtpEntries:
    def test_one_successful_communication_per_message(self, config, run_gateway):
        """Each delivered message: an Incoming LMTP communication, Successful, with one
        Message object linked to its ticket and Envelope/Ticket entries."""
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        for n in (1, 2):
            _, data = c.transaction(f"cust{n}@customer.test", ["support@example.org"],
                                    message(n))
            assert [d[0] for d in data] == [250]
        c.close()
        got = comms(rg)
        assert len(got) == 2
        for n, d in enumerate(got, 1):
            assert (d["direction"], d["account_type"], d["status"]) == \
                ("Incoming", "LMTP", "Successful")
            assert d["end"] is not None and d["end"] >= d["start"]
            (o,) = d["objects"]
            assert o["type"] == "Message" and o["status"] == "Successful"
            assert o["article_id"] and o["ticket_number"]
            keys = [e["key"] for e in o["entries"]]
            assert keys[0] == "Envelope" and "Ticket" in keys
            assert f"cust{n}@customer.test" in o["entries"][0]["value"]

    def test_duplicate_and_problems_are_logged(self, config, run_gateway):
        """A redelivery logs a Duplicate notice; a bad X-header queue (trusted LMTP) an Error
        that the priority filter finds."""
        import dataclasses
        cfg = dataclasses.replace(config, lmtp=dataclasses.replace(config.lmtp, trusted=True))
        rg = run_gateway(cfg)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        for msg in (message(1), message(1), message(2, extra="X-OTOBO-Queue: Nowhere\r\n")):
            _, data = c.transaction("a@customer.test", ["support@example.org"], msg)
            assert [d[0] for d in data] == [250]
        c.close()
        first, dup, bad = comms(rg)
        assert [e["key"] for e in dup["objects"][0]["entries"]].count("Duplicate") == 1
        assert dup["status"] == "Successful"
        assert [d["id"] for d in comms(rg, priority="Error")] == [bad["id"]]
        assert [d["id"] for d in comms(rg, priority="Notice")] == [dup["id"], bad["id"]]
        assert first["id"] not in [d["id"] for d in comms(rg, priority="Warn")]
        assert [d["id"] for d in comms(rg, search="nowhere")] == [bad["id"]]

    def test_unparseable_pipeline_failure_is_a_failed_message(self, config, run_gateway,
                                                              monkeypatch):
        """When a stage crashes the message goes to quarantine: its object is Failed with
        an Error entry, the communication Warning, and the MTA still gets 250."""
        from gateway.inbound import pipeline

        def boom(ctx, rt):
            raise RuntimeError("stage exploded")

        monkeypatch.setitem(pipeline.PREPARE, "trust", boom)
        rg = run_gateway(config)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("a@customer.test", ["support@example.org"], message(3))
        c.close()
        assert [d[0] for d in data] == [250]
        (d,) = comms(rg)
        assert d["status"] == "Warning"
        (o,) = d["objects"]
        assert o["status"] == "Failed"
        assert any(e["priority"] == "Error" and "quarantine" in e["value"]
                   for e in o["entries"])
