"""Password hashes, sd_notify, dashboard access rules, metrics rendering."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics, sdnotify
from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.passwords import hash_password, is_hash, verify_password
from gateway.web.auth import Authenticator, is_loopback


class TestPasswords:
    def test_hash_and_verify(self):
        """A hash verifies its password only; two hashes of one password differ (salt)."""
        h = hash_password("s3cret", ln=10)
        assert is_hash(h) and h.startswith("$scrypt$ln=10,r=8,p=1$")
        assert verify_password("s3cret", h)
        assert not verify_password("s3cret ", h)
        assert hash_password("s3cret", ln=10) != h

    def test_malformed_hashes_never_verify(self):
        """Garbage, other schemes and absurd parameters are refused, not raised."""
        for bad in ("", "plain", "$bcrypt$x$y$z", "$scrypt$ln=99,r=8,p=1$AAAA$BBBB",
                    "$scrypt$ln=10$AAAA$BBBB", "$scrypt$ln=10,r=8,p=1$!!$??"):
            assert not verify_password("x", bad)


class TestSdNotify:
    def test_sends_states_to_notify_socket(self, tmp_path, monkeypatch):
        """notify() sends newline-joined states as one datagram to $NOTIFY_SOCKET."""
        path = tmp_path / "n.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(path))
            s.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
            assert sdnotify.notify("READY=1", "STATUS=serving")
            assert s.recv(1024) == b"READY=1\nSTATUS=serving"
            assert sdnotify.reloading()
            msg = s.recv(1024).decode()
            assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=")

    def test_abstract_socket(self, monkeypatch):
        """'@name' addresses the abstract namespace."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind("\0deskgate-test-notify-" + str(id(s)))
            s.settimeout(5)
            monkeypatch.setenv("NOTIFY_SOCKET", "@deskgate-test-notify-" + str(id(s)))
            assert sdnotify.notify("STOPPING=1")
            assert s.recv(100) == b"STOPPING=1"

    def test_no_socket_is_a_noop(self, monkeypatch, tmp_path):
        """Without $NOTIFY_SOCKET (or with a dead one) notify() returns False quietly."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert sdnotify.notify("READY=1") is False
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
        assert sdnotify.notify("READY=1") is False


class TestDashboardAccessConfig:
    def test_loopback_detection(self):
        """127/8, ::1 and localhost are loopback; anything else is not."""
        assert is_loopback("127.0.0.1:8025") and is_loopback("[::1]:8025")
        assert is_loopback("localhost:1") and is_loopback("127.8.9.1:80")
        assert not is_loopback("0.0.0.0:8025") and not is_loopback("192.0.2.1:8025")

    def test_public_listen_needs_credentials(self, make_confdir):
        """`check` refuses a non-loopback dashboard without token or users."""
        conf = make_confdir({"60-d.toml": '[dashboard]\nlisten = "0.0.0.0:8025"\n'})
        with pytest.raises(ConfigErrors) as ei:
            load_config(conf)
        assert any(e.key == "dashboard.listen" and "not a loopback" in e.reason
                   for e in ei.value.errors)
        (conf / "61-t.toml").write_text('[dashboard]\ntoken = "abc"\n')
        assert load_config(conf).dashboard.token == "abc"

    def test_user_hash_must_be_a_hash(self, make_confdir):
        """A [[dashboard.user]] password_hash that is not a `deskgate passwd` hash is an error."""
        conf = make_confdir({"60-d.toml": '[[dashboard.user]]\nname = "a"\n'
                                          'password_hash = "plaintext"\n'})
        with pytest.raises(ConfigErrors) as ei:
            load_config(conf)
        assert any(e.key == "dashboard.user[0].password_hash" for e in ei.value.errors)

    def test_token_check(self, config):
        """Bearer or ?token= with the right token passes; a wrong one fails; no credentials
        configured means open (loopback)."""
        import dataclasses

        from gateway.config import Secret
        a = Authenticator()
        d = dataclasses.replace(config.dashboard, token=Secret("tok"))
        assert a.check_token(d, {"Authorization": "Bearer tok"}, {}) is True
        assert a.check_token(d, {}, {"token": "tok"}) is True
        assert a.check_token(d, {"Authorization": "Bearer nope"}, {}) is False
        assert a.check_token(d, {}, {}) is False
        assert a.check_token(config.dashboard, {}, {}) is True


class TestMetrics:
    def test_render_parses_and_runs_scrape_hooks(self):
        """render() output parses and the scrape hooks run first."""
        seen = []

        def hook(engine):
            seen.append(engine)
            metrics.OUTBOUND_QUEUE_DEPTH.set(7)

        metrics.FILTER_TIMEOUTS.labels("010-spam").inc()
        metrics.POLLER_ERRORS.labels("legacy").inc()
        body, ctype = metrics.render(engine="E", hooks=(hook,))  # type: ignore[arg-type]
        assert seen == ["E"] and ctype.startswith("text/plain")
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert fams["deskgate_outbound_queue_depth"].samples[0].value == 7
        assert any(s.labels == {"filter": "010-spam"} and s.value >= 1
                   for s in fams["deskgate_filter_timeouts"].samples)
        assert any(s.labels == {"account": "legacy"}
                   for s in fams["deskgate_poller_errors"].samples)
