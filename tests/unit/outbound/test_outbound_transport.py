"""The SMTP transport against a smarthost whose replies are scripted line by line: what
each recipient's outcome is when the DATA command itself is refused (a real Postfix
does this with smtpd_data_restrictions after per-recipient 4xx/5xx at RCPT)."""

from __future__ import annotations

import socket
import threading

import pytest

from gateway.config import RelayConfig
from gateway.outbound.transport import SmtpTransport


class ScriptedSmarthost:
    """One connection; answers each command with the reply `script` gives for it."""

    def __init__(self, rcpt: dict[str, str], data: str) -> None:
        self.rcpt, self.data = rcpt, data
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(10)
        f = conn.makefile("rwb")
        f.write(b"220 smarthost.test ESMTP\r\n")
        f.flush()
        for raw in f:
            line = raw.decode().rstrip("\r\n")
            self.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                reply = "250-smarthost.test\r\n250 8BITMIME"
            elif verb == "RCPT":
                addr = line[line.index("<") + 1:line.index(">")]
                reply = self.rcpt.get(addr, "250 2.1.5 OK")
            elif verb == "DATA":
                reply = self.data
            elif verb == "QUIT":
                f.write(b"221 bye\r\n")
                f.flush()
                break
            else:
                reply = "250 2.0.0 OK"
            f.write(reply.encode() + b"\r\n")
            f.flush()
        conn.close()
        self.sock.close()


@pytest.mark.parametrize(("data_reply", "codes"), [
    ("554 5.7.1 Data command rejected", [554, 450, 550]),
    ("451 4.3.0 Try again later", [451, 450, 550]),
])
def test_refused_data_command_keeps_each_recipients_own_answer(data_reply, codes):
    """a@ 250 at RCPT gets the DATA command's answer; b@ 450 stays temporary (retried,
    not bounced with a), c@ 550 stays permanent (not retried with a)."""
    host = ScriptedSmarthost({"b@x.test": "450 4.2.0 Mailbox busy",
                              "c@x.test": "550 5.1.1 No such user"}, data_reply)
    transport = SmtpTransport(RelayConfig(host="127.0.0.1", port=host.port, security="none",
                                          timeout=10.0), local_hostname="deskgate.test")
    try:
        att = transport.deliver("app@deskgate.test", ["a@x.test", "b@x.test", "c@x.test"],
                                b"Subject: t\r\n\r\nbody\r\n")
    finally:
        transport.close()
    host.thread.join(10)
    assert [c for c, _ in att.codes] == codes
    assert att.codes[0][1] == data_reply[4:]
    assert att.error == (f"host 127.0.0.1[127.0.0.1] said: {data_reply} "
                         "(in reply to DATA command)")
    # the connection stays usable (pooled, then closed with QUIT)
    assert [c.split(" ", 1)[0].upper() for c in host.commands] == [
        "EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA", "QUIT"]


class TestFinalDotWait:
    def test_a_smarthost_slow_to_answer_the_dot_is_waited_for(self):
        """A smarthost that scans the content before answering the final dot (longer
        than relay.timeout, as Postfix's smtp_data_done_timeout allows 600 s) gets its
        250 read: no timeout, so the message is not sent a second time."""
        from tests.peers.smarthost import AuthSink

        with AuthSink() as sink:
            sink.handler.data_delay = 2.5
            transport = SmtpTransport(RelayConfig(host="127.0.0.1", port=sink.port,
                                                  security="none", timeout=1.0),
                                      local_hostname="deskgate.test")
            try:
                att = transport.deliver("app@deskgate.test", ["a@x.test"],
                                        b"Subject: t\r\n\r\nbody\r\n")
            finally:
                transport.close()
        assert att.error == "" and [c for c, _ in att.codes] == [250]
        assert len(sink.received) == 1


def relay_to(port: int) -> SmtpTransport:
    return SmtpTransport(RelayConfig(host="127.0.0.1", port=port, security="none",
                                     timeout=10.0), local_hostname="deskgate.test")


class TestTooManyRecipients:
    def test_recipients_over_the_limit_go_in_following_transactions(self):
        """A smarthost taking two recipients per transaction (452 4.5.3 for the others)
        gets the rest in following transactions within one delivery; a 451 to the last
        transaction's DATA defers only its recipient, the others stay delivered."""
        from tests.peers.smarthost import AuthSink

        seen = {"rcpt": 0}

        def script(stage: str, addr: str) -> str | None:
            if stage == "RCPT":
                seen["rcpt"] += 1
                return "452 4.5.3 Too many recipients" if seen["rcpt"] > 2 else None
            seen["rcpt"] = 0
            return "451 4.3.0 Try again later" if addr == "e@x.test" else None

        rcpts = ["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"]
        with AuthSink() as sink:
            sink.set_script(script)
            transport = relay_to(sink.port)
            try:
                att = transport.deliver("app@deskgate.test", rcpts, b"Subject: t\r\n\r\nb\r\n")
            finally:
                transport.close()
        assert [c for c, _ in att.codes] == [250, 250, 250, 250, 451]
        assert [r.rcpts for r in sink.received] == [rcpts[:2], rcpts[2:4]]
        assert att.codes[4] == (451, "4.3.0 Try again later")

    def test_a_452_without_progress_is_not_sent_again(self):
        """A recipient answered 452 even alone in its transaction is deferred (no loop):
        one following transaction, then the attempt ends."""
        from tests.peers.smarthost import AuthSink

        with AuthSink() as sink:
            sink.set_script(lambda stage, addr: "452 4.5.3 Too many recipients"
                            if stage == "RCPT" and addr == "c@x.test" else None)
            transport = relay_to(sink.port)
            try:
                att = transport.deliver("app@deskgate.test", ["a@x.test", "b@x.test",
                                                              "c@x.test"],
                                        b"Subject: t\r\n\r\nb\r\n")
            finally:
                transport.close()
            seen = sink.handler.rcpt_seen
        assert [c for c, _ in att.codes] == [250, 250, 452] and att.error == ""
        assert [r.rcpts for r in sink.received] == [["a@x.test", "b@x.test"]]
        assert seen == 4

    def test_a_following_transaction_that_fails_as_a_whole_answers_its_recipients(self):
        """The smarthost stalls in the following transaction (longer than relay.timeout):
        its recipients get that failure as their answer, not the 452 of the transaction
        before; those the first transaction delivered stay delivered."""
        import time

        from tests.peers.smarthost import AuthSink

        seen = {"rcpt": 0}

        def script(stage: str, addr: str) -> str | None:
            if stage == "RCPT":
                seen["rcpt"] += 1
                if seen["rcpt"] == 5:
                    time.sleep(2.0)        # the first RCPT of the following transaction
                return "452 4.5.3 Too many recipients" if seen["rcpt"] in (3, 4) else None
            return None

        rcpts = ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]
        with AuthSink() as sink:
            sink.set_script(script)
            transport = SmtpTransport(RelayConfig(host="127.0.0.1", port=sink.port,
                                                  security="none", timeout=0.5),
                                      local_hostname="deskgate.test")
            try:
                att = transport.deliver("app@deskgate.test", rcpts, b"Subject: t\r\n\r\nb\r\n")
            finally:
                transport.close()
            assert [r.rcpts for r in sink.received] == [rcpts[:2]]
        assert [c for c, _ in att.codes] == [250, 250, 0, 0]
        assert att.codes[2][1] == att.error and "timed out" in att.error
