"""The example conf.d's commented submission TLS keys (tls_listen, tls_cert, tls_key)
pass `deskgate check` when switched on with a certificate in keys/tls/."""

from __future__ import annotations

import shutil

from gateway.config import load_config
from tests.integration.cli.test_cli_example_conf import cli, example_copy, switch_on
from tests.peers.ca import TestCA


def test_implicit_tls_block_checks_clean(tmp_path):
    """Uncommenting tls_listen, tls_cert and tls_key, with the certificate where the
    comment says, gives a configuration that check passes and whose tls_listen is set."""
    conf = example_copy(tmp_path)
    leaf = TestCA(tmp_path / "ca").issue("submission", hosts=("127.0.0.1",))
    tls = conf.parent / "keys" / "tls"
    tls.mkdir(parents=True)
    shutil.copyfile(leaf.cert, tls / "cert.pem")
    shutil.copyfile(leaf.key, tls / "key.pem")
    (tls / "key.pem").chmod(0o600)
    path = conf / "30-outbound.toml"
    text = switch_on(path.read_text(), "tls_listen", "tls_key")
    assert "\ntls_listen = " in text
    path.write_text(text)
    res = cli(conf, "check")
    assert (res.returncode, res.stderr) == (0, ""), res.stdout
    cfg = load_config(conf, environ={})
    assert cfg.submission.tls_listen and cfg.submission.listen
    assert cfg.path(cfg.submission.tls_cert) == tls / "cert.pem"
