"""Malformed and hostile input over LMTP, against SQLite and PostgreSQL: every
message is answered 250 per recipient only after its exact bytes are committed
(as a ticket or in the quarantine), the size limit answers 552 5.3.4, and the
session keeps working afterwards."""

from __future__ import annotations

import hashlib
import random
import time

import pytest
from sqlalchemy import select, text

from gateway.config import load_config
from gateway.inbound.ticket import store
from gateway.model import Envelope
from gateway.store.tables import Quarantine, RawMessage
from tests.integration.core.stored import Store, db_conf
from tests.peers.lmtp import LmtpClient

RCPTS = ["support@example.org", "sales@example.org"]
HEAD = (b"From: Customer <customer@customer.test>\r\nTo: support@example.org\r\n"
        b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n")


def msg(extra_headers: bytes, body: bytes = b"body\r\n", mid: bytes = b"<m@customer.test>"
        ) -> bytes:
    return HEAD + b"Message-ID: " + mid + b"\r\n" + extra_headers + b"\r\n" + body


def boundary_msg(body: bytes) -> bytes:
    return msg(b"Subject: broken mime\r\nMIME-Version: 1.0\r\n"
               b'Content-Type: multipart/mixed; boundary="BOUND"\r\n', body)


MALFORMED: dict[str, bytes] = {
    "200k-header-line": msg(b"Subject: long\r\nX-Long: " + b"a" * 200_000 + b"\r\n"),
    "200k-subject": msg(b"Subject: " + b"s" * 200_000 + b"\r\n"),
    "200k-message-id": msg(b"Subject: long id\r\n", mid=b"<" + b"i" * 200_000 + b"@x>"),
    "10000-headers": msg(b"Subject: many\r\n" + b"".join(
        b"X-H-%d: value %d\r\n" % (i, i) for i in range(10_000))),
    "broken-base64": msg(b"Subject: b64\r\nMIME-Version: 1.0\r\n"
                         b"Content-Transfer-Encoding: base64\r\n", b"!!!not base64 at all===\r\n"),
    "broken-qp": msg(b"Subject: qp\r\nContent-Transfer-Encoding: quoted-printable\r\n",
                     b"=ZZ=\r\n=F\r\n"),
    "broken-rfc2047": msg(b"Subject: =?utf-8?B?####?= and =?x-bogus?Q?=FF?= =?utf-8?q?\r\n"),
    "invalid-charset": msg(b'Subject: cs\r\nContent-Type: text/plain; charset="x-no-such"\r\n'
                           b"Content-Transfer-Encoding: 8bit\r\n", b"caf\xe9 \xff\xfe\r\n"),
    "unknown-cte": msg(b"Subject: cte\r\nContent-Transfer-Encoding: x-uuencode-ish\r\n"),
    "no-closing-boundary": boundary_msg(b"--BOUND\r\nContent-Type: text/plain\r\n\r\nhi\r\n"),
    "boundary-never-used": boundary_msg(b"just text, no parts\r\n"),
    "nested-broken": boundary_msg(
        b"--BOUND\r\nContent-Type: multipart/alternative; boundary=INNER\r\n\r\n"
        b"--INNER\r\nContent-Type: text/html\r\n\r\n<p>x\r\n--BOUND--\r\n"),
    "attachment-rfc2231-garbage": boundary_msg(
        b"--BOUND\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=x-bad''%ZZ%\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n@@@@\r\n--BOUND--\r\n"),
    "8bit-headers": msg(b"Subject: Gr\xc3\xbc\xc3\x9fe aus K\xf6ln\r\n"
                        b"X-Latin: \xe4\xf6\xfc\r\n", b"8-bit body \xc3\xa4\r\n"),
    "nul-bytes": msg(b"Subject: nul\x00here\r\nX-Nul: a\x00b\r\n", b"body\x00with\x00nuls\r\n"),
    "line-over-1000": msg(b"Subject: long line\r\n", b"x" * 5000 + b"\r\nend\r\n"),
    "only-headers-no-body": HEAD + b"Subject: no body\r\nMessage-ID: <nb@x>\r\n",
    "no-headers": b"just a line of text\r\n",
    "long-from-address": msg(b"Subject: from\r\n").replace(
        b"customer@customer.test", b"c" * 600 + b"@customer.test"),
    "long-content-type": msg(b"Subject: ct\r\nContent-Type: text/" + b"x" * 400 + b"\r\n"),
    "long-disposition": boundary_msg(
        b"--BOUND\r\nContent-Type: application/" + b"y" * 300 + b"\r\n"
        b"Content-Disposition: " + b"z" * 300 + b"; filename=a.bin\r\n\r\ndata\r\n--BOUND--\r\n"),
    "leading-dot-first-line": b".first line starts with a dot\r\nSubject: dot\r\n\r\nb\r\n",
    "dots": msg(b"Subject: dots\r\n", b".\r\n..\r\n.leading dot\r\n"),
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend_gateway(request, gateway):
    """A gateway on SQLite or on a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return gateway(db_conf(request.getfixturevalue("pg_url")))
    return gateway()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url_for_nodes(request, tmp_path) -> str:
    """One database shared by several gateways (nodes)."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'shared.db'}"


def as_sent(data: bytes) -> bytes:
    """The message after LmtpClient's line-ending normalisation (what the server receives)."""
    body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return body if body.endswith(b"\r\n") else body + b"\r\n"


def kept(rg, raw: bytes) -> str:
    """Where the exact bytes ended up: 'article', 'quarantine' or ''."""
    digest = hashlib.sha256(raw).hexdigest()
    with rg.gateway.engine.connect() as conn:
        if any(hashlib.sha256(bytes(r)).hexdigest() == digest
               for r in conn.execute(select(RawMessage.data)).scalars()):
            return "article"
        if any(hashlib.sha256(bytes(r)).hexdigest() == digest
               for r in conn.execute(select(Quarantine.raw)).scalars()):
            return "quarantine"
    return ""


def raw_transaction(client: LmtpClient, wire: bytes, rcpts: list[str] = RCPTS
                    ) -> list[tuple[int, str]]:
    """MAIL/RCPT/DATA, then `wire` exactly as given (already dot-stuffed, with terminator)."""
    assert client.cmd("MAIL FROM:<customer@customer.test>")[0] == 250
    for r in rcpts:
        assert client.cmd(f"RCPT TO:<{r}>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    client.sock.sendall(wire)
    return [client.reply() for _ in rcpts]


class TestMalformed:
    def test_malformed_messages_answered_and_kept(self, backend_gateway):
        """Each malformed message gets 250 per recipient and its exact bytes are committed;
        the session goes on after each of them."""
        rg = backend_gateway
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        problems: dict[str, object] = {}
        for case in sorted(MALFORMED):
            _, data = c.transaction("customer@customer.test", RCPTS, MALFORMED[case])
            where = kept(rg, as_sent(MALFORMED[case]))
            if [code for code, _ in data] != [250, 250] or where not in ("article", "quarantine"):
                problems[case] = (data, where)
        _, data = c.transaction("customer@customer.test", RCPTS[:1],
                                msg(b"Subject: after\r\n", mid=b"<after@x>"))
        assert [code for code, _ in data] == [250]
        c.close()
        assert problems == {}

    def test_bare_lf_lines_kept_as_sent(self, backend_gateway):
        """Bare LF line endings are accepted and stored unchanged."""
        rg = backend_gateway
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        raw = (b"From: customer@customer.test\nTo: support@example.org\nSubject: bare lf\n"
               b"Message-ID: <lf@x>\n\nline one\nline two\n")
        replies = raw_transaction(c, raw + b"\r\n.\r\n")
        assert [code for code, _ in replies] == [250, 250]
        assert kept(rg, raw + b"\r\n") == "article"
        c.close()

    def test_bare_lf_dot_does_not_end_data(self, backend_gateway, store_of):
        """LF.LF inside DATA is content, not the end of the message (no smuggling)."""
        rg = backend_gateway
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        raw = (b"From: customer@customer.test\r\nSubject: outer\r\nMessage-ID: <outer@x>\r\n\r\n"
               b"text\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<sales@example.org>\r\nDATA\r\n"
               b"Subject: smuggled\r\n\r\nevil\r\n")
        replies = raw_transaction(c, raw + b".\r\n")
        assert [code for code, _ in replies] == [250, 250]
        assert c.cmd("NOOP")[0] == 250
        c.close()
        assert [t.title for t in store_of(rg).tickets()] == ["outer"]
        assert kept(rg, raw) == "article"


class TestSizeLimit:
    def test_over_max_message_size_552_per_recipient(self, gateway, store_of):
        """A message over max_message_size (1 MiB here) gets 552 5.3.4 for every recipient
        after DATA, nothing is stored, and the session goes on."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        big = msg(b"Subject: big\r\n", b"".join(b"%0998d\r\n" % i for i in range(1100)))
        assert len(big) > 1024 * 1024
        _, data = c.transaction("customer@customer.test", RCPTS, big)
        assert [(code, text[:5]) for code, text in data] == [(552, "5.3.4")] * 2
        _, data = c.transaction("customer@customer.test", RCPTS[:1],
                                msg(b"Subject: small\r\n", mid=b"<small@x>"))
        assert [code for code, _ in data] == [250]
        c.close()
        assert [t.title for t in store_of(rg).tickets()] == ["small"]

    def test_size_parameter_over_limit_refused_at_mail(self, gateway):
        """MAIL FROM with SIZE= above the limit is refused with 552 5.3.4; below it is fine."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        code, text = c.lhlo()
        assert f"SIZE {1024 * 1024}" in text
        code, text = c.cmd(f"MAIL FROM:<a@customer.test> SIZE={2 * 1024 * 1024}")
        assert (code, text[:5]) == (552, "5.3.4")
        assert c.cmd("MAIL FROM:<a@customer.test> SIZE=1000")[0] == 250
        c.close()


class TestQuarantine:
    def test_parse_crash_quarantined_before_250(self, backend_gateway, monkeypatch, store_of):
        """A message whose parsing raises is committed raw to the quarantine; the 250
        arrives only after that commit."""
        rg = backend_gateway

        def boom(ctx, rt):
            raise RuntimeError("parser exploded")

        rg.gateway.pipeline.stages = rg.gateway.pipeline.stages.with_stage("prepare", "parse",
                                                                           boom)
        raw = msg(b"Subject: crash\r\n", mid=b"<crash@x>")
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("customer@customer.test", RCPTS, raw)
        assert [code for code, _ in data] == [250, 250]
        q = store_of(rg).quarantine()        # read right after the reply: already committed
        assert len(q) == 1 and "parser exploded" in q[0].reason
        assert bytes(q[0].raw) == as_sent(raw)
        assert q[0].recipients == RCPTS
        assert store_of(rg).tickets() == []
        c.close()

    def test_store_crash_quarantined(self, backend_gateway, monkeypatch, store_of):
        """A commit stage that raises a non-database error sends the message to the
        quarantine (not a 451 loop), answered 250."""
        rg = backend_gateway

        def boom(ctx, rt, conn):
            raise ValueError("store exploded")

        rg.gateway.pipeline.stages = rg.gateway.pipeline.stages.with_stage("commit", "store",
                                                                           boom)
        raw = msg(b"Subject: crash in store\r\n", mid=b"<crash2@x>")
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("customer@customer.test", RCPTS, raw)
        assert [code for code, _ in data] == [250, 250]
        [q] = store_of(rg).quarantine()
        assert "store exploded" in q.reason and bytes(q.raw) == as_sent(raw)
        c.close()


    @pytest.mark.postgres
    def test_database_data_error_quarantined_not_retried(self, pg_url, gateway, monkeypatch,
                                                         store_of):
        """An error about the data (PostgreSQL DataError) fails the same on every retry: the
        message goes to the quarantine with 250 instead of 451 until the MTA bounces it."""
        rg = gateway(db_conf(pg_url))

        def bad_data(ctx, rt, conn):
            conn.execute(text("SELECT CAST('not a number' AS integer)"))

        rg.gateway.pipeline.stages = rg.gateway.pipeline.stages.with_stage("commit", "store",
                                                                           bad_data)
        raw = msg(b"Subject: data error\r\n", mid=b"<dataerror@x>")
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("customer@customer.test", RCPTS, raw)
        c.close()
        assert [code for code, _ in data] == [250, 250]
        [q] = store_of(rg).quarantine()
        assert "DataError" in q.reason and bytes(q.raw) == as_sent(raw)


class TestUnstorableEnvelope:
    def test_nul_in_mail_from_stored(self, backend_gateway, store_of):
        """A NUL byte in MAIL FROM (accepted by the LMTP listener) is stored like any other
        message; PostgreSQL refused it in the communication log, and in the quarantine's
        log too, so the message was answered 451 on every attempt."""
        rg = backend_gateway
        raw = msg(b"Subject: nul sender\r\n", mid=b"<nulsender@x>")
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("a\x00b@customer.test", RCPTS[:1], raw)
        c.close()
        assert [code for code, _ in data] == [250]
        assert kept(rg, as_sent(raw)) == "article"
        assert [t.title for t in store_of(rg).tickets()] == ["nul sender"]

    def test_nul_in_an_attachment_filename_charset_is_a_ticket(self, gateway):
        """A first part of application/octet-stream whose RFC 2231 filename charset holds a
        NUL (the crypto check reads its filename) is stored as a ticket, not quarantined."""
        rg = gateway()
        raw = boundary_msg(b"--BOUND\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Disposition: attachment; filename*=ut\x00f-8''a.p7m\r\n"
                           b"\r\ndata\r\n--BOUND--\r\n")
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        _, data = c.transaction("customer@customer.test", RCPTS[:1], raw)
        c.close()
        assert [code for code, _ in data] == [250]
        assert kept(rg, as_sent(raw)) == "article"

    def test_undecodable_sender_argument_stored(self, backend_gateway, store_of):
        """A sender that reached `deskgate deliver -f` as bytes that are not UTF-8 (a lone
        surrogate in Python) is stored too, not answered with a temporary failure."""
        rg = backend_gateway
        raw = msg(b"Subject: 8-bit sender\r\n", mid=b"<8bitsender@x>")
        env = Envelope(mail_from="a\udcffb@customer.test", recipients=(RCPTS[0],), raw=raw,
                       source="STDIN", account="stdin")
        out = rg.call(rg.gateway.pipeline.deliver(env))
        assert [r.code for r in out.replies] == [250] and out.action == "new"
        assert [t.title for t in store_of(rg).tickets()] == ["8-bit sender"]


class TestPipelining:
    def test_commands_after_final_dot_in_one_write(self, gateway, store_of):
        """'...CRLF.CRLF RSET MAIL RCPT' in one write: per-recipient replies, then the replies
        to the pipelined commands, in order; the next transaction is stored too."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("MAIL FROM:<customer@customer.test>")[0] == 250
        for r in RCPTS:
            assert c.cmd(f"RCPT TO:<{r}>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        first = msg(b"Subject: first\r\n", mid=b"<first@x>")
        c.sock.sendall(first + b".\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<support@example.org>\r\n"
                       b"DATA\r\n")
        replies = [c.reply() for _ in range(6)]
        assert [code for code, _ in replies] == [250, 250, 250, 250, 250, 354]
        assert [text[:5] for _, text in replies[:2]] == ["2.1.5", "2.1.5"]
        second = msg(b"Subject: second\r\n", mid=b"<second@x>")
        c.sock.sendall(second + b".\r\nNOOP\r\n")
        assert [c.reply()[0] for _ in range(2)] == [250, 250]
        c.close()
        assert sorted(t.title for t in store_of(rg).tickets()) == ["first", "second"]


class TestRedelivery:
    def test_same_message_twice_one_article(self, backend_gateway, store_of):
        """The same bytes delivered twice to the same recipient: 250 both times, one article."""
        rg = backend_gateway
        raw = msg(b"Subject: twice\r\n", mid=b"<twice@x>")
        for _ in range(2):
            c = LmtpClient(rg.socket_path)
            c.lhlo()
            _, data = c.transaction("customer@customer.test", ["support@example.org"], raw)
            assert [code for code, _ in data] == [250]
            c.close()
        st = store_of(rg)
        assert len(st.tickets()) == 1 and len(st.articles()) == 1

    def test_same_message_to_two_nodes_at_once(self, db_url_for_nodes, make_confdir,
                                               run_gateway, monkeypatch, tmp_path):
        """Two gateways on one database get the same message at the same moment (an MTA
        retrying on another node): both answer 250, one article is stored."""
        def slow_store(ctx, rt, conn):
            store(ctx, rt, conn)
            time.sleep(0.5)          # keep both transactions open at the same time

        nodes = [run_gateway(load_config(make_confdir(db_conf(db_url_for_nodes),
                                                      root=tmp_path / f"node{i}")))
                 for i in range(2)]
        for n in nodes:
            n.gateway.pipeline.stages = n.gateway.pipeline.stages.with_stage("commit", "store",
                                                                             slow_store)
        raw = msg(b"Subject: race\r\n", mid=b"<race@x>")
        clients = [LmtpClient(n.socket_path) for n in nodes]
        for c in clients:
            c.lhlo()
            assert c.cmd("MAIL FROM:<customer@customer.test>")[0] == 250
            assert c.cmd("RCPT TO:<support@example.org>")[0] == 250
            assert c.cmd("DATA")[0] == 354
        for c in clients:
            c.sock.sendall(raw + b".\r\n")
        replies = [c.reply() for c in clients]
        for c in clients:
            c.close()
        assert [code for code, _ in replies] == [250, 250], replies
        st = Store(nodes[0].gateway.engine)
        assert len(st.articles()) == 1 and len(st.tickets()) == 1
        assert st.quarantine() == []

    def test_changed_bytes_same_message_id_is_new(self, gateway, store_of):
        """Same Message-ID but different content is not a redelivery: it is stored."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        for body in (b"one\r\n", b"two\r\n"):
            _, data = c.transaction("customer@customer.test", ["support@example.org"],
                                    msg(b"Subject: same id\r\n", body, mid=b"<same@x>"))
            assert [code for code, _ in data] == [250]
        c.close()
        assert len(store_of(rg).articles()) == 2


class TestDuplicateRecipients:
    def test_same_recipient_twice_in_one_envelope(self, gateway, store_of):
        """RCPT TO the same address twice (also differing in case) gets one 250 per RCPT
        after DATA and one article, not a 451 loop."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        rcpts = ["support@example.org", "Support@example.org", "sales@example.org",
                 "sales@example.org"]
        _, data = c.transaction("customer@customer.test", rcpts,
                                msg(b"Subject: twice in one envelope\r\n", mid=b"<dup@x>"))
        c.close()
        assert [code for code, _ in data] == [250] * 4
        st = store_of(rg)
        assert len(st.tickets()) == 1 and len(st.articles()) == 1
        assert sorted(d.recipient for d in st.deliveries()) == ["sales@example.org",
                                                                "support@example.org"]


class TestDataFraming:
    @pytest.mark.parametrize("cut", [1, 2, 3, 4])
    def test_terminator_split_across_writes(self, gateway, store_of, cut):
        """CRLF.CRLF arriving in two writes (cut anywhere) still ends DATA, and a stuffed dot
        split from its line start is unstuffed."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("MAIL FROM:<customer@customer.test>")[0] == 250
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        head = b"Subject: split\r\nMessage-ID: <split@x>\r\n\r\nline\r\n"
        for part in (head, b"..dotted\r\nlast" + b"\r\n.\r\n"[:cut]):
            c.sock.sendall(part)
            time.sleep(0.05)
        c.sock.sendall(b"\r\n.\r\n"[cut:])
        assert c.reply()[0] == 250
        c.close()
        [raw] = store_of(rg).article_raws()
        assert raw == head + b".dotted\r\nlast\r\n"

    def test_empty_message(self, gateway):
        """DATA followed directly by the final dot is answered 250 (kept, not dropped)."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        replies = raw_transaction(c, b".\r\n")
        assert [code for code, _ in replies] == [250, 250]
        assert kept(rg, b"") in ("article", "quarantine")
        c.close()

    def test_disconnect_in_the_middle_of_data(self, gateway, store_of):
        """A client that vanishes inside DATA leaves nothing stored; the listener goes on."""
        rg = gateway()
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        assert c.cmd("MAIL FROM:<customer@customer.test>")[0] == 250
        assert c.cmd("RCPT TO:<support@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.sock.sendall(b"Subject: cut off\r\n\r\nhalf a mess")
        c.sock.close()
        c2 = LmtpClient(rg.socket_path)
        c2.lhlo()
        _, data = c2.transaction("customer@customer.test", ["support@example.org"],
                                 msg(b"Subject: complete\r\n", mid=b"<complete@x>"))
        assert [code for code, _ in data] == [250]
        c2.close()
        assert [t.title for t in store_of(rg).tickets()] == ["complete"]


def random_message(rng: random.Random) -> bytes:
    """Header-ish lines, MIME-ish bits and raw garbage, with every byte value possible."""
    parts: list[bytes] = []
    for _ in range(rng.randint(0, 12)):
        name = rng.choice([b"Subject", b"From", b"To", b"Content-Type", b"Message-ID",
                           b"Content-Transfer-Encoding", b"X-" + bytes(rng.randbytes(3).hex(),
                                                                      "ascii")])
        value = rng.choice([rng.randbytes(rng.randint(0, 300)),
                            b"=?utf-8?b?" + rng.randbytes(20).hex().encode() + b"?=",
                            b"multipart/mixed; boundary=" + rng.randbytes(5).hex().encode(),
                            b"text/plain; charset=" + rng.choice([b"utf-8", b"bogus", b'"'])])
        parts.append(name + b": " + value + rng.choice([b"\r\n", b"\n", b"\r\n\t"]))
    parts.append(b"\r\n")
    for _ in range(rng.randint(0, 20)):
        parts.append(rng.choice([rng.randbytes(rng.randint(0, 2000)), b".\r\n", b"..\r\n",
                                 b"--" + rng.randbytes(4).hex().encode() + b"\r\n",
                                 b"\r\n.\n", b"\x00\r\n"]))
    return b"".join(parts)


def wire_for(body: bytes) -> tuple[bytes, bytes]:
    """(what the server must store, the dot-stuffed DATA that carries it)."""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return body, stuffed + b".\r\n"


class TestFuzz:
    def test_random_messages_answered_and_kept(self, backend_gateway):
        """120 random messages (fixed seed): each answered 250 per recipient with its exact
        bytes committed; the session never desynchronises."""
        rg = backend_gateway
        rng = random.Random(20261126)
        c = LmtpClient(rg.socket_path)
        c.lhlo()
        problems = {}
        for i in range(120):
            body, wire = wire_for(random_message(rng))
            replies = raw_transaction(c, wire)
            if [code for code, _ in replies] != [250, 250] or not kept(rg, body):
                problems[i] = (replies, body[:200])
        assert c.cmd("NOOP")[0] == 250
        c.close()
        assert problems == {}
