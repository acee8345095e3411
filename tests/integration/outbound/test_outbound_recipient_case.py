"""A relayed recipient keeps the case it was given (RFC 5321 2.4: only the destination
host may fold a local part; Postfix relays RCPT TO as it came): at the smarthost, in
`deskgate outqueue`, in the communication log and in a DSN. Two spellings of one
address are still one recipient, and keys are still found in any case."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from email import message_from_bytes
from email.parser import BytesParser
from email.policy import default as default_policy

import pytest
from sqlalchemy import select

from gateway.config import load_config
from gateway.store.tables import CommEntry, OutboundRecipient
from tests.integration.crypto.conftest import crypto_env  # noqa: F401  (fixture)
from tests.integration.crypto.crypto_helpers import CUSTOMER, SUPPORT, CryptoEnv
from tests.integration.outbound.conftest import outbound_toml, submission_port, wait_for
from tests.integration.outbound.test_outbound_autoresponse import desk, mail, notices  # noqa: F401
from tests.integration.outbound.test_outbound_cli import cli as send_cli
from tests.integration.outbound.test_outbound_reply_text import Smarthost, cli
from tests.peers.smarthost import AuthSink

GIVEN = "John.Doe@Example.ORG"
REFUSED = "Refused.User@Example.ORG"
MSG = (b"From: app@internal.test\r\nTo: John.Doe@Example.ORG\r\nSubject: Hi\r\n\r\n"
       b"body\r\n")
ALLOW = 'allow_networks = ["127.0.0.0/8"]'


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    """Refuses Refused.User@Example.ORG at RCPT TO, in whatever case it is given."""
    reply = f"550 5.1.1 <{REFUSED}>: no such user"
    host = Smarthost({REFUSED: reply, REFUSED.lower(): reply})
    yield host
    host.stop()


def test_submission_relays_recipients_as_given(smarthost, outbound_config, run_gateway):
    """RCPT TO:<John.Doe@Example.ORG> reaches the smarthost as John.Doe@Example.ORG,
    not john.doe@example.org; a second spelling of it is sent to once, the first kept;
    outqueue show, the communication log and the DSN of the refused recipient show the
    addresses as the client gave them."""
    cfg = outbound_config(smarthost.port, extra_submission=ALLOW, retry="1h*5")
    rg = run_gateway(cfg)
    with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
        assert s.sendmail("app@internal.test", [GIVEN, "john.doe@EXAMPLE.org", REFUSED],
                          MSG) == {}
    wait_for(lambda: len(smarthost.received) == 2, what="message and DSN")
    sent = [r for r, d in smarthost.received if b"multipart/report" not in d]
    dsns = [d for r, d in smarthost.received if b"multipart/report" in d]
    assert sent == [[GIVEN]]
    with rg.gateway.engine.connect() as conn:
        rows = conn.execute(select(OutboundRecipient.outbound_id, OutboundRecipient.address)
                            .order_by(OutboundRecipient.id)).all()
        comm = "\n".join(conn.execute(select(CommEntry.value)).scalars())
    assert [a for _, a in rows][:2] == [GIVEN, REFUSED]
    shown = json.loads(cli(cfg.root / "conf.d", "outqueue", "show", str(rows[0].outbound_id),
                           "--json").stdout)
    assert [r["address"] for r in shown["recipient_status"]] == [GIVEN, REFUSED]
    assert f"<{GIVEN}>" in comm and f"<{REFUSED}>" in comm
    assert "john.doe@example.org" not in comm
    (dsn,) = dsns
    report = BytesParser(policy=default_policy).parsebytes(dsn).get_payload()[1]
    fields = "\n".join(str(p) for p in report.get_payload())
    assert f"Final-Recipient: rfc822; {REFUSED}" in fields


def test_send_keeps_the_case_of_its_recipients(outbound_config):
    """deskgate send -r and the To/Cc/Bcc it reads without -r keep each address as
    written; a second spelling of an address is dropped."""
    cfg = outbound_config(9, submission=False)
    conf = cfg.root / "conf.d"
    res = send_cli(conf, "send", "--json", "-r", GIVEN, "-r", GIVEN.upper(), stdin=MSG)
    assert res.returncode == 0, res.stderr
    headers = (b"From: app@internal.test\r\n"
               b"To: Jane <Jane.Roe@Example.ORG>, jane.roe@example.ORG\r\n"
               b"Cc: JANE.ROE@example.org, Other@Customer.TEST\r\nSubject: x\r\n\r\nx\r\n")
    res = send_cli(conf, "send", "--json", stdin=headers)
    assert res.returncode == 0, res.stderr
    listed = json.loads(cli(conf, "outqueue", "list", "--json").stdout)
    assert [m["recipients"] for m in listed] == [
        [GIVEN], ["Jane.Roe@Example.ORG", "Other@Customer.TEST"]]


def test_key_of_a_mixed_case_recipient_is_found(crypto_env: CryptoEnv,  # noqa: F811
                                                run_gateway):
    """encrypt=required to Cust@Customer.TEST, whose certificate is stored under
    cust@customer.test: the message is encrypted and relayed to Cust@Customer.TEST."""
    import shutil

    shutil.copy(crypto_env.customer.cert, crypto_env.root / "keys" / "smime" /
                f"{CUSTOMER}.pem")
    mixed = "Cust@Customer.TEST"
    assert mixed.lower() == CUSTOMER
    with AuthSink() as sink:
        (crypto_env.conf / "40-outbound.toml").write_text(outbound_toml(
            sink.port, submission_port=_free(), extra_submission=ALLOW))
        cfg = load_config(crypto_env.conf)
        run_gateway(cfg)
        raw = (f"From: {SUPPORT}\r\nTo: {mixed}\r\nSubject: solved\r\n"
               "X-Deskgate-Encrypt: required\r\n\r\nsecret body\r\n").encode()
        with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
            assert s.sendmail(SUPPORT, [mixed], raw) == {}
        wait_for(lambda: sink.received, what="delivery")
        (got,) = sink.received
    assert got.rcpts == [mixed]
    assert b"application/pkcs7-mime" in got.data and b"secret body" not in got.data


def _free() -> int:
    from tests.conftest import free_port

    return free_port()


def test_auto_response_goes_to_the_sender_as_written(desk):  # noqa: F811
    """The auto-response of a message From: Jane.Doe@Customer.TEST goes to
    Jane.Doe@Customer.TEST (To: and RCPT TO), not jane.doe@customer.test; the daily
    limit still counts the address in any case."""
    rg, deliver, sink = desk
    for i, sender in enumerate(("Jane.Doe@Customer.TEST", "JANE.DOE@customer.test",
                                "jane.doe@Customer.test", "Jane.Doe@Customer.TEST")):
        deliver(mail(sender=f"Jane <{sender}>", subject=f"Problem {i}",
                     mid=f"<c{i}@customer.test>"), sender=sender)
    wait_for(lambda: len(sink.received) == 3, what="three auto-responses")
    got = {r.rcpts[0]: r for r in sink.received}       # delivered in any order
    assert sorted(got) == sorted(["Jane.Doe@Customer.TEST", "JANE.DOE@customer.test",
                                  "jane.doe@Customer.test"])
    assert all(len(r.rcpts) == 1 for r in got.values())
    assert "JANE.DOE@customer.test" in message_from_bytes(got["JANE.DOE@customer.test"].data
                                                          )["To"]
    assert any("already had 3 auto-responses" in n for n in notices(rg))


@pytest.mark.postgres
def test_recipient_case_kept_on_postgresql(pg_url, outbound_config, run_gateway):
    """On PostgreSQL too the queue keeps John.Doe@Example.ORG as given and the
    smarthost gets it so; its other spelling is one recipient."""
    with AuthSink() as sink:
        cfg = outbound_config(sink.port, extra_submission=ALLOW, files={
            "90-db.toml": f'[gateway]\ndatabase = "{pg_url}"\n'})
        rg = run_gateway(cfg)
        with smtplib.SMTP("127.0.0.1", submission_port(cfg)) as s:
            assert s.sendmail("app@internal.test", [GIVEN, GIVEN.lower()], MSG) == {}
        wait_for(lambda: sink.received, what="delivery")
        assert [r.rcpts for r in sink.received] == [[GIVEN]]
        with rg.gateway.engine.connect() as conn:
            assert rg.gateway.engine.dialect.name == "postgresql"
            assert list(conn.execute(select(OutboundRecipient.address)).scalars()) == [GIVEN]
