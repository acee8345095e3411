"""/metrics counts the recipients the LMTP listener refuses at RCPT, by reply code and
a reason from a small fixed set, never by address; accepted recipients are not counted."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.ops.ops_web import message
from tests.peers.lmtp import LmtpClient

NAME = "deskgate_lmtp_recipients_refused_total"


def refused(body: str) -> dict[tuple[str, str], float]:
    """{(code, reason): value} of the refused-recipients counter."""
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == NAME:
                assert set(s.labels) == {"code", "reason"}, s.labels
                out[(s.labels["code"], s.labels["reason"])] = s.value
    return out


class TestRefusedRecipientsMetric:
    def test_each_refusal_counts_once_under_its_code_and_reason(self, dashboard):
        """Over one real LMTP session: an unknown address (550 unknown), a disabled one (550
        invalid), a paused one (450 temporarily_invalid), malformed ones (501/553 syntax), an
        unsupported RCPT parameter (555 parameter), RCPT before MAIL (503 sequence) and
        the recipient over lmtp.max_recipients (452 too_many) each count once; the
        accepted recipients count nowhere, and no label holds an address."""
        d = dashboard("[lmtp]\nmax_recipients = 2\n")
        before = refused(d.get("/metrics")[2])
        assert ("550", "unknown") in before, before     # present from the start
        c = LmtpClient(d.rg.socket_path)
        c.lhlo()
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 503
        assert c.cmd("MAIL FROM:<a@customer.test>")[0] == 250
        assert c.cmd("RCPT TO:<nobody@example.org>")[0] == 550
        assert c.cmd("RCPT TO:<old@example.org>")[0] == 550
        assert c.cmd("RCPT TO:<paused@example.org>")[0] == 450
        assert c.cmd("RCPT TO:<not an address>")[0] == 501
        assert c.cmd("RCPT TO:<justaname>")[0] == 553
        assert c.cmd("RCPT TO:<support@example.org> FOO=bar")[0] == 555
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<sales@example.org>")[0] == 250
        assert c.cmd("RCPT TO:<helpdesk@example.org>")[0] == 452
        assert c.cmd("DATA")[0] == 354
        c.sock.sendall(message(1) + b".\r\n")
        assert [c.reply()[0] for _ in range(2)] == [250, 250]
        c.close()
        body = d.get("/metrics")[2]
        after = refused(body)
        grown = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k)}
        assert grown == {("503", "sequence"): 1, ("550", "unknown"): 1,
                         ("550", "invalid"): 1, ("450", "temporarily_invalid"): 1,
                         ("501", "syntax"): 1, ("553", "syntax"): 1, ("555", "parameter"): 1,
                         ("452", "too_many"): 1}, grown
        assert "example.org" not in "".join(
            line for line in body.splitlines() if line.startswith(NAME))

    def test_accepted_recipients_leave_it_alone(self, dashboard):
        """A transaction whose recipients are all accepted changes no series."""
        d = dashboard()
        before = refused(d.get("/metrics")[2])
        assert d.deliver(message(2), ["support@example.org", "sales@example.org"]) == [250,
                                                                                        250]
        assert refused(d.get("/metrics")[2]) == before
