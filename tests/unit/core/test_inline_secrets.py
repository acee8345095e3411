"""Secrets written inline in a conf.d file that group or others may read: a warning
(key, reason) naming the file, its mode and the fix; the configuration stays valid."""

from __future__ import annotations

import os

import pytest

from gateway.config import load_config
from gateway.inline_secrets import SECRET_KEYS, inline_secret_warnings

ACCOUNT = """
[[account]]
name = "box"
type = "imaps"
host = "imap.test"
login = "u"
"""

CASES = {
    "relay.password": '[relay]\nhost = "smtp.test"\nuser = "gw"\npassword = "s3cret"\n',
    "account[0].password": ACCOUNT + 'password = "s3cret"\n',
    "account[0].oauth2.client_secret": (
        ACCOUNT + '[account.oauth2]\ntoken_url = "https://login.test/token"\n'
        'client_id = "c"\nclient_secret = "s3cret"\nrefresh_token_env = "HOME"\n'),
    "account[0].oauth2.refresh_token": (
        ACCOUNT + '[account.oauth2]\ntoken_url = "https://login.test/token"\n'
        'client_id = "c"\nrefresh_token = "s3cret"\n'),
    "helpdesk.password": ('[helpdesk]\ntype = "otobo-rest"\nurl = "https://otobo.test"\n'
                          'user = "gw"\npassword = "s3cret"\n'),
    "helpdesk.token": '[helpdesk]\ntype = "rt-rest2"\nurl = "https://rt.test"\ntoken = "s3cret"\n',
    "helpdesk.secret": ('[helpdesk]\ntype = "webhook"\nurl = "https://hook.test/in"\n'
                        'secret = "s3cret"\n'),
    "dashboard.token": '[dashboard]\ntoken = "s3cret"\n',
    "gateway.database": '[gateway]\ndatabase = "postgresql+psycopg://gw:s3cret@db.test/deskgate"\n',
}


def private_base(conf):
    """The fixture's base file is written under the umask; make it private."""
    (conf / "10-base.toml").chmod(0o600)
    return conf


class TestSecretKeys:
    def test_every_secret_field_is_known(self):
        """The keys come from the fields marked secret() in the configuration."""
        assert {"relay.password", "account[].password", "account[].oauth2.client_secret",
                "account[].oauth2.refresh_token", "helpdesk.password", "helpdesk.token",
                "helpdesk.secret", "dashboard.token"} == set(SECRET_KEYS)


class TestInlineSecretWarnings:
    @pytest.mark.parametrize("key", sorted(CASES))
    def test_world_readable_file_with_an_inline_secret(self, make_confdir, key):
        """Each inline secret in a 0644 file is one warning naming file, mode and fix; the
        configuration still loads."""
        conf = private_base(make_confdir({"50-x.toml": CASES[key]}))
        (conf / "50-x.toml").chmod(0o644)
        load_config(conf, section_checks=False, environ={"HOME": "x"})
        warnings = inline_secret_warnings(conf)
        assert [k for k, _ in warnings] == [key]
        reason = warnings[0][1]
        assert reason.startswith(f"{conf / '50-x.toml'} (mode 0644) holds the secret inline "
                                 "and others may read it: ")
        fix = reason.partition(" may read it: ")[2]
        assert fix.startswith("chmod 600 it (or chmod 640 with group ")
        assert (f"move the secret to {key.rpartition('.')[2]}_file" in fix) \
            != (key == "gateway.database")
        assert "s3cret" not in reason

    def test_private_file_is_not_reported(self, make_confdir):
        """0600 (and 0400) files may hold inline secrets."""
        conf = private_base(make_confdir({"50-x.toml": CASES["relay.password"],
                                          "60-y.toml": CASES["dashboard.token"]}))
        (conf / "50-x.toml").chmod(0o600)
        (conf / "60-y.toml").chmod(0o400)
        assert inline_secret_warnings(conf) == []

    def test_group_of_the_gateway_may_read(self, make_confdir):
        """0640 is fine when the file's group is the gateway's own group."""
        conf = private_base(make_confdir({"50-x.toml": CASES["relay.password"]}))
        os.chown(conf / "50-x.toml", -1, os.getegid())
        (conf / "50-x.toml").chmod(0o640)
        assert inline_secret_warnings(conf) == []

    def test_another_group_may_not_read(self, make_confdir):
        """0640 with a group other than the gateway's is reported, naming that group."""
        conf = private_base(make_confdir({"50-x.toml": CASES["relay.password"]}))
        (conf / "50-x.toml").chmod(0o640)
        ours = os.getegid() + 4242
        [(key, reason)] = inline_secret_warnings(conf, gid=ours)
        assert key == "relay.password"
        assert "(mode 0640) holds the secret inline and members of group " in reason
        assert f"chgrp {ours} it" in reason

    def test_file_and_env_references_are_not_secrets(self, make_confdir, tmp_path):
        """password_file / token_env in a readable file name a secret, they are none."""
        conf = private_base(make_confdir({"50-x.toml": (
            '[relay]\nhost = "smtp.test"\nuser = "gw"\npassword_file = "pw"\n'
            '[dashboard]\ntoken_env = "TOKEN"\n'
            '[gateway]\ndatabase = "postgresql+psycopg://gw@db.test/deskgate"\n')}))
        (conf / "50-x.toml").chmod(0o644)
        assert inline_secret_warnings(conf) == []

    def test_array_entries_are_numbered_as_merged(self, make_confdir):
        """An [[account]] of a later file is named with its index in the merged list."""
        conf = private_base(make_confdir({
            "40-a.toml": ACCOUNT + 'password = "s3cret"\n',
            "50-b.toml": ACCOUNT.replace("box", "other") + 'password = "s3cret"\n'}))
        (conf / "40-a.toml").chmod(0o600)
        (conf / "50-b.toml").chmod(0o604)
        assert [k for k, _ in inline_secret_warnings(conf)] == ["account[1].password"]

    def test_unreadable_toml_is_skipped(self, make_confdir):
        """A file that is not TOML is check's error, not a warning (and no crash)."""
        conf = private_base(make_confdir({"50-x.toml": "[relay\npassword = 'x'\n"}))
        (conf / "50-x.toml").chmod(0o644)
        assert inline_secret_warnings(conf) == []


WARNING = "a secret in the configuration is readable by group or others"


class TestReloadWarning:
    """A reload (SIGHUP, `deskgate reload`, a dashboard save) warns as `serve` does."""

    def test_a_reload_that_brings_a_readable_secret_warns_once(self, make_confdir,
                                                              run_gateway):
        """A world-readable file with an inline secret added before a reload: the
        reload logs the warning once, naming key and file, never the secret."""
        from structlog.testing import capture_logs

        conf = private_base(make_confdir())
        rg = run_gateway(load_config(conf))
        (conf / "50-x.toml").write_text(CASES["dashboard.token"])
        (conf / "50-x.toml").chmod(0o644)
        with capture_logs() as logs:
            assert rg.call(rg.gateway.reload()) is True
        warned = [e for e in logs if e["event"] == WARNING]
        assert [e["key"] for e in warned] == ["dashboard.token"]
        assert str(conf / "50-x.toml") in warned[0]["reason"]
        assert "s3cret" not in repr(logs)

    def test_no_warning_from_a_refused_reload_or_a_worker(self, make_confdir, run_gateway):
        """A reload refused for an invalid configuration keeps the running one and does
        not warn; an LMTP worker's reload (no services) leaves the warning to the main
        process, so one reload warns once."""
        import asyncio

        from structlog.testing import capture_logs

        from gateway.app import Gateway

        conf = private_base(make_confdir())
        rg = run_gateway(load_config(conf))
        (conf / "50-x.toml").write_text(CASES["dashboard.token"] + "bogus = 1\n")
        (conf / "50-x.toml").chmod(0o644)
        with capture_logs() as logs:
            assert rg.call(rg.gateway.reload()) is False
        assert [e for e in logs if e["event"] == WARNING] == []
        (conf / "50-x.toml").write_text(CASES["dashboard.token"])
        worker = Gateway(load_config(conf))
        try:
            with capture_logs() as logs:
                assert asyncio.run(worker.reload()) is True
        finally:
            worker.close()
        assert [e for e in logs if e["event"] == WARNING] == []
