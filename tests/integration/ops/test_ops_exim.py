"""Debian's Exim (extracted, not installed) delivering into deskgate's LMTP socket with the
router + LMTP transport that docs/mta.md describes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config import load_config
from gateway.store.tables import Article, Ticket
from tests.integration.ops.ops_web import message
from tests.peers import exim as exim_peer
from tests.peers.require import requires_peer

pytestmark = requires_peer(exim_peer.unavailable())


@pytest.fixture
def open_root():
    """A root directory the `mail` user can traverse (pytest's tmp dirs are 0700 root),
    removed after the gateway using it has stopped."""
    d = Path(tempfile.mkdtemp(prefix="deskgate-exim-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class TestEximLmtp:
    def test_exim_delivers_per_recipient(self, open_root, make_confdir, run_gateway):
        """Exim's lmtp transport delivers one message to two system addresses in one
        transaction (both 250, one ticket) and bounces the unknown one with 550 5.1.1."""
        conf = make_confdir({"60-exim.toml": '[lmtp]\nsocket_group = "mail"\n'},
                            root=open_root / "gw")
        rg = run_gateway(load_config(conf), tcp=False)
        exim = exim_peer.Exim(open_root / "exim", rg.socket_path)
        r = exim.send("cust1@customer.test",
                      ["support@example.org", "sales@example.org", "nobody@example.org"],
                      message(1))
        log = exim.mainlog()
        assert r.returncode == 0, (r.stderr, log)
        delivered = [ln for ln in log.splitlines() if " => " in ln or " -> " in ln]
        assert any("support@example.org" in ln and "T=deskgate_lmtp" in ln
                   for ln in delivered), log
        assert any("sales@example.org" in ln for ln in delivered), log
        assert any(" ** nobody@example.org" in ln and "550 5.1.1" in ln
                   for ln in log.splitlines()), log
        with rg.gateway.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Ticket)).scalar() == 1
            assert conn.execute(select(func.count()).select_from(Article)).scalar() == 1
            assert conn.execute(select(Article.subject)).scalar() == "Printer broken 1"
