"""The checks across sections (gateway.config.validate) name the file as
docs/configuration.md says: the conf.d file that sets the key; for a key left at its
default, the file that has its section, or the conf.d directory when none has."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors


def errors_of(conf: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf, environ={})
    return [str(e) for e in exc.value.errors]


class TestCoreChecksNameTheFile:
    @pytest.mark.parametrize(("key", "toml"), [
        ("lmtp.max_sessions", "[lmtp]\nmax_sessions = 0\n"),
        ("submission.max_sessions", "[submission]\nmax_sessions = 0\n"),
        ("submission.max_sessions_per_ip", "[submission]\nmax_sessions_per_ip = -1\n"),
    ])
    def test_a_key_set_in_a_later_file(self, make_confdir, key, toml):
        """The session limits were filed under the first file with the section (the
        base file, which has [lmtp] but not this key), not the file that sets them."""
        conf = make_confdir({"50-x.toml": toml})
        errs = errors_of(conf)
        assert [e for e in errs if f": {key}: " in e] == [
            f"{conf / '50-x.toml'}: {key}: must be between "
            f"{0 if key.endswith('per_ip') else 1} and 100000"], errs

    def test_a_state_is_named_by_the_file_that_adds_it(self, make_confdir):
        """[postmaster.states] merged from two files: a bad entry is in the second."""
        conf = make_confdir({"40-states.toml": '[postmaster.states]\n"new" = "new"\n'
                                               '"open" = "open"\n',
                             "50-x.toml": '[postmaster.states]\n"waiting" = "pendng"\n'})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: postmaster.states.waiting: state type 'pendng' is not "
            "one of new, open, pending, closed, merged, removed"]

    def test_tls_cert_without_key_is_named_by_the_file_that_sets_it(self, make_confdir):
        """submission.tls_cert set alone in a file of its own: that file, not the first
        one with a [submission] table."""
        conf = make_confdir({"40-sub.toml": "[submission]\nmax_recipients = 10\n",
                             "50-x.toml": '[submission]\ntls_cert = "keys/tls/cert.pem"\n'})
        errs = errors_of(conf)
        assert [e for e in errs if ": submission.tls_key: " in e] == [
            f"{conf / '50-x.toml'}: submission.tls_key: tls_cert and tls_key go together"], errs

    def test_a_default_no_section_holds_is_named_by_the_directory(self, make_confdir):
        """relay.host is missing and no file has a [relay] section: the error is filed
        under the conf.d directory (as the section checks do), not under whichever
        file happens to come first."""
        conf = make_confdir({"50-x.toml": '[submission]\nlisten = ["127.0.0.1:8587"]\n'})
        assert errors_of(conf) == [
            f"{conf}: relay.host: required when mode = \"smtp\" and submission is enabled"]
