"""What `deskgate outqueue show` reports of a queued message: its DSN parameters
(RFC 3461) and, per recipient, the last reply worded as in the message's last_error."""

from __future__ import annotations

from sqlalchemy import select

from gateway.outbound import queue as oq
from gateway.outbound.context import OutboundContext
from gateway.outbound.dsn_params import MessageDsn, RecipientDsn
from gateway.outbound.pipeline import process_in_transaction
from gateway.outbound.rewrite import parse_submission
from gateway.store.tables import OutboundMessage, OutboundRecipient

RAW = (b"From: app@internal.test\r\nTo: a@customer.test, b@customer.test\r\n"
       b"Subject: Hello\r\n\r\nbody\r\n")
MX = "mx.customer.test[192.0.2.1]"


def enqueue(engine, rt, **dsn) -> int:
    ctx = OutboundContext(mail_from="app@internal.test",
                          recipients=["a@customer.test", "b@customer.test"], raw=RAW,
                          trusted=True, **dsn)
    with engine.begin() as conn:
        parse_submission(ctx, rt)
        return process_in_transaction(ctx, rt, conn)


def attempt(engine, *replies: tuple[int, str]) -> None:
    with engine.begin() as conn:
        (m,) = oq.claim(conn, "n", limit=1, lease=60)
        oq.record_attempt(conn, m, [oq.RcptResult(rid, addr, code, text, host=MX,
                                                  command="RCPT TO")
                                    for (rid, addr), (code, text) in zip(m.recipients, replies,
                                                                         strict=True)],
                          schedule=(60.0,), warn_after=0)


class TestDsnParameters:
    def test_show_includes_ret_envid_notify_and_orcpt(self, ob_engine, rt):
        """The RET/ENVID of MAIL FROM and each recipient's NOTIFY/ORCPT are in show's JSON."""
        oid = enqueue(ob_engine, rt, dsn=MessageDsn("HDRS", "QQ314159"),
                      dsn_rcpt={"a@customer.test": RecipientDsn(
                          "SUCCESS,FAILURE", "rfc822;A@customer.test")})
        with ob_engine.connect() as conn:
            d = oq.show(conn, oid)
        assert d is not None
        assert d["dsn_ret"] == "HDRS" and d["dsn_envid"] == "QQ314159"
        a, b = d["recipient_status"]
        assert a["dsn_notify"] == "SUCCESS,FAILURE"
        assert a["dsn_orcpt"] == "rfc822;A@customer.test"
        assert b["dsn_notify"] == "" and b["dsn_orcpt"] == ""

    def test_show_without_dsn_parameters_has_empty_values(self, ob_engine, rt):
        """A message submitted without DSN parameters shows them empty, not missing."""
        oid = enqueue(ob_engine, rt)
        with ob_engine.connect() as conn:
            d = oq.show(conn, oid)
        assert d is not None
        assert (d["dsn_ret"], d["dsn_envid"]) == ("", "")
        assert all((r["dsn_notify"], r["dsn_orcpt"]) == ("", "")
                   for r in d["recipient_status"])


class TestLastReply:
    def test_last_reply_names_the_host_and_the_command(self, ob_engine, rt):
        """A recipient's stored last_reply is worded as in last_error: the server, its
        reply and the command it answered."""
        oid = enqueue(ob_engine, rt)
        attempt(ob_engine, (550, "5.1.1 no such user"), (450, "4.2.0 mailbox busy"))
        with ob_engine.connect() as conn:
            stored = conn.execute(select(OutboundRecipient.last_reply)
                                  .order_by(OutboundRecipient.id)).scalars().all()
            last_error = conn.execute(select(OutboundMessage.last_error)).scalar_one()
            d = oq.show(conn, oid)
        a = f"host {MX} said: 550 5.1.1 no such user (in reply to RCPT TO command)"
        b = f"host {MX} said: 450 4.2.0 mailbox busy (in reply to RCPT TO command)"
        assert stored == [a, b]
        assert last_error == f"<a@customer.test>: {a}; <b@customer.test>: {b}"
        assert d is not None
        assert [r["last_reply"] for r in d["recipient_status"]] == [a, b]
        assert [r["last_code"] for r in d["recipient_status"]] == [550, 450]

    def test_multi_line_reply_is_one_line(self, ob_engine, rt):
        """A multi-line reply is stored on one line, as Postfix writes it."""
        oid = enqueue(ob_engine, rt)
        attempt(ob_engine, (550, "5.1.1 first\n5.1.1 second"), (250, "2.0.0 ok"))
        with ob_engine.connect() as conn:
            d = oq.show(conn, oid)
        assert d is not None
        assert d["recipient_status"][0]["last_reply"] == (
            f"host {MX} said: 550-5.1.1 first 550 5.1.1 second (in reply to RCPT TO command)")
