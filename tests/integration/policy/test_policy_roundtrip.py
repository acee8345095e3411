"""With the real outbound side: an answer sent through `deskgate send`, a DSN for it
and a customer reply coming back through `deskgate deliver`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, select

from gateway.config import load_config
from gateway.store.tables import Article, Ticket
from tests.unit.policy.mails import dsn, mail

REPO = Path(__file__).resolve().parents[3]


def cli(conf: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          input=stdin, capture_output=True, cwd=conf.parent, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)


class TestRoundTrip:
    def test_sent_answer_bounce_and_reply(self, make_confdir):
        """The DSN for a sent answer marks that article failed; replies thread to its ticket."""
        conf = make_confdir({"40-relay.toml": '[relay]\nhost = "127.0.0.1"\nport = 9\n'})
        sent = cli(conf, "send", "--queue", "Support", "--json",
                   stdin=b"From: agent@internal.test\nTo: Gone <gone@customer.test>\n"
                         b"Subject: About your printer\n\nPlease restart it.\n")
        assert sent.returncode == 0, sent.stderr
        number = json.loads(sent.stdout)["ticket"]
        engine = create_engine(load_config(conf).database_url)
        try:
            with engine.connect() as conn:
                out = conn.execute(select(Article.id, Article.message_id)
                                   .where(Article.direction == "outgoing")).one()
            assert out.message_id.startswith("<")
            res = cli(conf, "deliver", "-r", "support@example.org", "--json",
                      stdin=dsn(out.message_id))
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["action"] == "followup"
            assert json.loads(res.stdout)["ticket"] == number
            reply = mail("Re: About your printer", frm="Gone <gone@customer.test>",
                         in_reply_to=out.message_id)
            res = cli(conf, "deliver", "-r", "support@example.org", "--json", stdin=reply)
            assert json.loads(res.stdout)["ticket"] == number
            with engine.connect() as conn:
                status, error = conn.execute(select(Article.transmission_status,
                                                    Article.transmission_error)
                                             .where(Article.id == out.id)).one()
                loops = conn.execute(select(Article.loop).join(Ticket)
                                     .where(Ticket.number == number, Article.direction ==
                                            "incoming").order_by(Article.id)).scalars().all()
        finally:
            engine.dispose()
        assert status == "failed" and "5.1.1" in error
        assert loops == [True, False]
