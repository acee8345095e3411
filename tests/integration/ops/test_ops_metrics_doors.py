"""/metrics counts the outbound doors too: a submission accepted and its relay delivery."""

from __future__ import annotations

import smtplib
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port


def sample(body: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


class TestOutboundMetrics:
    def test_submission_and_relay_counters(self, dashboard):
        """A message submitted over SMTP counts as submission/in/queued; its delivery (relay
        in maildir mode) as relay/out/sent; the submission latency is observed."""
        sport = free_port()
        d = dashboard(f'[submission]\nlisten = ["127.0.0.1:{sport}"]\n'
                      '[relay]\nmode = "maildir"\npoll_interval = "200ms"\n')
        before = d.get("/metrics")[2]
        q0 = sample(before, "deskgate_messages_total", door="submission", direction="in",
                    result="queued")
        s0 = sample(before, "deskgate_messages_total", door="relay", direction="out",
                    result="sent")
        c0 = sample(before, "deskgate_pipeline_seconds_count", door="submission")
        with smtplib.SMTP("127.0.0.1", sport, timeout=30) as smtp:
            smtp.sendmail("app@example.org", ["cust@customer.test"],
                          b"From: support@example.org\r\nTo: cust@customer.test\r\n"
                          b"Subject: Re: printer\r\n\r\nFixed.\r\n")
        deadline = time.monotonic() + 30
        while True:
            body = d.get("/metrics")[2]
            sent = sample(body, "deskgate_messages_total", door="relay", direction="out",
                          result="sent")
            if sent >= s0 + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sent == s0 + 1
        assert sample(body, "deskgate_messages_total", door="submission", direction="in",
                      result="queued") == q0 + 1
        assert sample(body, "deskgate_pipeline_seconds_count", door="submission") == c0 + 1
        assert sample(body, "deskgate_outbound_queue_depth") == 0
