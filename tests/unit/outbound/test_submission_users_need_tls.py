"""`deskgate check` refuses [[submission.user]] entries on a submission listener without
a certificate: AUTH is offered only after TLS, so none of them could ever log in."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.passwords import hash_password
from tests.peers.ca import TestCA

RELAY = '[relay]\nhost = "127.0.0.1"\n'
LISTEN = '[submission]\nlisten = ["127.0.0.1:8587"]\n'


def user(name: str = "app") -> str:
    return f'[[submission.user]]\nname = "{name}"\npassword_hash = "{hash_password("pw", ln=4)}"\n'


def errors_of(conf: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf, environ={})
    return [str(e) for e in exc.value.errors]


class TestSubmissionUsersNeedTls:
    def test_users_without_a_certificate_are_refused(self, make_confdir):
        """Users on a listener without tls_cert: `file: submission.tls_cert: reason`
        naming the users that could not log in."""
        conf = make_confdir({"50-sub.toml": RELAY + LISTEN, "60-users.toml": user() + user("crm")})
        errs = [e for e in errors_of(conf) if ": submission.tls_cert: " in e]
        assert len(errs) == 1, errors_of(conf)
        assert errs[0].startswith(f"{conf / '50-sub.toml'}: submission.tls_cert: ")
        assert "AUTH" in errs[0] and "'app', 'crm'" in errs[0]

    def test_check_exits_1_with_the_line(self, make_confdir, capsys):
        """`deskgate check` prints it and exits 1, as for other unusable settings."""
        conf = make_confdir({"50-sub.toml": RELAY + LISTEN + user()})
        assert main(["--config", str(conf), "check"]) == 1
        assert f"{conf / '50-sub.toml'}: submission.tls_cert: " in capsys.readouterr().err

    def test_users_with_a_certificate_pass(self, make_confdir, tmp_path):
        """With tls_cert and tls_key the same users load."""
        leaf = TestCA(tmp_path / "ca").issue("submission", hosts=("127.0.0.1",))
        conf = make_confdir({"50-sub.toml": RELAY + LISTEN + f'tls_cert = "{leaf.cert}"\n'
                             f'tls_key = "{leaf.key}"\n' + user()})
        assert [u.name for u in load_config(conf, environ={}).submission.user] == ["app"]

    def test_users_without_a_listener_pass(self, make_confdir):
        """No submission listener (listen = []): nothing is offered, nothing to refuse."""
        conf = make_confdir({"50-sub.toml": user()})
        assert load_config(conf, environ={}).submission.listen == ()

    def test_a_listener_without_users_passes(self, make_confdir):
        """Submission from allow_networks only needs no certificate."""
        conf = make_confdir({"50-sub.toml": RELAY + LISTEN})
        assert load_config(conf, environ={}).submission.tls_cert == ""
