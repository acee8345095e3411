"""[submission] tls_listen (implicit TLS, RFC 8314): the configuration checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from tests.peers.ca import TestCA

RELAY = '[relay]\nhost = "127.0.0.1"\n'
# Files that do not exist: their own errors (submission.tls_cert/tls_key) are not these tests'.
NO_FILES = 'tls_cert = "c.pem"\ntls_key = "k.pem"\n'


def errors_of(conf: Path, *keys: str) -> list[str]:
    """The configuration errors of `keys` (all when none is given)."""
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf, environ={})
    errs = [str(e) for e in exc.value.errors]
    return [e for e in errs if any(f": {k}: " in e or f": {k}[" in e for k in keys)
            ] if keys else errs


class TestTlsListenConfig:
    def test_default_is_empty(self, make_confdir):
        """No tls_listen: no implicit-TLS socket."""
        cfg = load_config(make_confdir({"50-x.toml": RELAY}), environ={})
        assert cfg.submission.tls_listen == ()

    def test_addresses_are_taken(self, make_confdir, tmp_path):
        """HOST:PORT addresses next to tls_cert/tls_key are taken as given."""
        leaf = TestCA(tmp_path / "ca").issue("submission", hosts=("127.0.0.1",))
        conf = make_confdir({"50-x.toml": RELAY + '[submission]\nlisten = ["127.0.0.1:8587"]\n'
                             'tls_listen = ["127.0.0.1:8465", "[::1]:8465"]\n'
                             f'tls_cert = "{leaf.cert}"\ntls_key = "{leaf.key}"\n'})
        cfg = load_config(conf, environ={})
        assert cfg.submission.tls_listen == ("127.0.0.1:8465", "[::1]:8465")

    def test_needs_a_certificate(self, make_confdir):
        """tls_listen without tls_cert/tls_key is refused, named by the file that sets it."""
        conf = make_confdir({"40-sub.toml": "[submission]\nmax_recipients = 10\n",
                             "50-x.toml": RELAY + "[submission]\n"
                             'tls_listen = ["127.0.0.1:8465"]\n'})
        assert errors_of(conf, "submission.tls_listen") == [
            f"{conf / '50-x.toml'}: submission.tls_listen: implicit TLS needs tls_cert and "
            "tls_key (the certificate the TLS handshake presents)"]

    def test_relay_host_is_needed_for_an_implicit_tls_listener_alone(self, make_confdir):
        """Submission on tls_listen only is submission enabled: [relay] host is needed."""
        conf = make_confdir({"50-x.toml": '[submission]\ntls_listen = ["127.0.0.1:8465"]\n'
                             + NO_FILES})
        assert errors_of(conf, "relay.host") == [
            f"{conf}: relay.host: required when mode = \"smtp\" and submission is enabled"]

    def test_an_address_in_both_lists_is_refused(self, make_confdir):
        """One socket speaks STARTTLS or implicit TLS, not both."""
        conf = make_confdir({"50-x.toml": RELAY + '[submission]\nlisten = ["127.0.0.1:8587"]\n'
                             'tls_listen = ["127.0.0.1:8587"]\n' + NO_FILES})
        assert errors_of(conf, "submission.tls_listen") == [
            f"{conf / '50-x.toml'}: submission.tls_listen: '127.0.0.1:8587' is also in "
            "submission.listen; a socket speaks either STARTTLS (listen) or implicit TLS "
            "(tls_listen)"]

    @pytest.mark.parametrize(("value", "why"), [
        ('["unix:var/run/smtps.sock"]', "is not HOST:PORT (implicit TLS listens on TCP)"),
        ('["8465"]', "is neither unix:PATH nor HOST:PORT")])
    def test_not_host_port_is_refused(self, make_confdir, value, why):
        """Implicit TLS listens on HOST:PORT addresses."""
        conf = make_confdir({"50-x.toml": RELAY + f'[submission]\ntls_listen = {value}\n'
                             + NO_FILES})
        errs = errors_of(conf, "submission.tls_listen")
        assert len(errs) == 1 and errs[0].endswith(why), errs


class TestRefusedMetricHelp:
    def test_help_names_failed_tls_handshakes(self):
        """deskgate_sessions_refused_total also counts tls_listen connections whose TLS
        handshake failed; its HELP line in /metrics says so, as docs/operations.md does."""
        from gateway import metrics

        body = metrics.render()[0].decode()
        [help_line] = [line for line in body.splitlines()
                       if line.startswith("# HELP deskgate_sessions_refused_total ")]
        assert "TLS handshake failed" in help_line, help_line
        assert "tls_listen" in help_line, help_line
