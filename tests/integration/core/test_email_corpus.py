"""CPython's own e-mail test corpus (test/test_email/data/msg_*.txt) through the
LMTP listener: every message is answered 250 and kept byte for byte, as a
ticket or in the quarantine; none takes the listener down."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from sqlalchemy import select

from gateway.store.tables import Quarantine, RawMessage
from tests.peers.lmtp import LmtpClient
from tests.peers.require import missing_peer


def corpus() -> list[Path]:
    spec = importlib.util.find_spec("test")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(next(iter(spec.submodule_search_locations))) / "test_email" / "data"
    return sorted(data.glob("msg_*.txt"))


def as_sent(data: bytes) -> bytes:
    """What LmtpClient puts on the wire (before dot-stuffing): CRLF lines, final CRLF."""
    body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return body if body.endswith(b"\r\n") else body + b"\r\n"


class TestEmailCorpus:
    def test_every_corpus_message_answered_and_kept(self, gateway, store_of):
        """Each msg_*.txt gets 250 per recipient; its exact bytes are stored (ticket or
        quarantine) and the listener still answers afterwards."""
        files = corpus()
        if not files:
            missing_peer("CPython's test.test_email data is not installed with this Python")
        rg = gateway()
        client = LmtpClient(rg.socket_path)
        assert client.lhlo()[0] == 250
        sent: dict[str, str] = {}
        for f in files:
            raw = f.read_bytes()
            rcpt, data = client.transaction("corpus@customer.test",
                                            ["support@example.org", "sales@example.org"], raw)
            assert [c for c, _ in rcpt] == [250, 250], f.name
            assert [c for c, _ in data] == [250, 250], (f.name, data)
            sent[hashlib.sha256(as_sent(raw)).hexdigest()] = f.name
        client.close()
        with rg.gateway.engine.connect() as conn:
            kept = {hashlib.sha256(bytes(r)).hexdigest()
                    for r in conn.execute(select(RawMessage.data)).scalars()}
            kept |= {hashlib.sha256(bytes(r)).hexdigest()
                     for r in conn.execute(select(Quarantine.raw)).scalars()}
        missing = sorted(name for h, name in sent.items() if h not in kept)
        assert missing == []
        st = store_of(rg)
        assert len(st.tickets()) + len(st.quarantine()) == len(sent) == len(files)
        # The listener survived all of it.
        again = LmtpClient(rg.socket_path)
        assert again.lhlo()[0] == 250
        again.close()
