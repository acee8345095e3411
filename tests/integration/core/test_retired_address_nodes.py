"""Several nodes on one PostgreSQL database: a system address that one node's
configuration change retired is refused as invalid (550 5.2.1) by another node once
that node has reloaded the same change."""

from __future__ import annotations

from gateway.config import load_config
from tests.peers.lmtp import LmtpClient

RETIRING = '[[address]]\nemail = "retiring@example.org"\nqueue = "Support"\n'


def rcpt(sock, address: str = "retiring@example.org") -> str:
    c = LmtpClient(sock)
    try:
        c.lhlo()
        c.cmd("MAIL FROM:<a@c.test>")
        code, text = c.cmd(f"RCPT TO:<{address}>")
    finally:
        c.close()
    return f"{code} {text[:5]}"


def test_retired_by_another_node_counts_after_this_nodes_reload(pg_url, make_confdir,
                                                                 run_gateway, tmp_path):
    """Node B drops the address and reloads (it writes the database); node A answers
    from its own configuration until it reloads the same files, then 550 5.2.1 though
    its reload had nothing left to write."""
    nodes = []
    for name in ("a", "b"):
        conf = make_confdir({"40-db.toml": f'[gateway]\ndatabase = "{pg_url}"\n',
                             "60-retiring.toml": RETIRING}, root=tmp_path / name)
        nodes.append((conf, run_gateway(load_config(conf))))
    (conf_a, a), (conf_b, b) = nodes
    assert rcpt(a.socket_path) == rcpt(b.socket_path) == "250 2.1.5"

    (conf_b / "60-retiring.toml").unlink()
    assert b.call(b.gateway.reload()) is True
    assert rcpt(b.socket_path) == "550 5.2.1"
    assert rcpt(a.socket_path) == "250 2.1.5"      # not reloaded: its files still name it

    (conf_a / "60-retiring.toml").unlink()
    assert a.call(a.gateway.reload()) is True
    assert rcpt(a.socket_path) == "550 5.2.1"
    assert rcpt(a.socket_path, "never@example.org") == "550 5.1.1"
