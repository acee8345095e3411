"""[submission] listen: TCP addresses only (a unix: socket is refused by the config
check instead of crashing `deskgate serve` at start)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors

RELAY = '[relay]\nhost = "127.0.0.1"\n'


def errors_of(conf: Path, key: str) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf, environ={})
    return [str(e) for e in exc.value.errors if f": {key}: " in str(e)]


class TestListenIsTcp:
    def test_unix_socket_is_refused_with_file_key_and_reason(self, make_confdir):
        """`listen = ["unix:..."]` is refused, named by the file that sets it, with the
        alternatives a local application has."""
        conf = make_confdir({"40-sub.toml": "[submission]\nmax_recipients = 10\n",
                             "50-x.toml": RELAY + '[submission]\n'
                             'listen = ["127.0.0.1:8587", "unix:var/run/submission.sock"]\n'})
        [err] = errors_of(conf, "submission.listen")
        assert err.startswith(f"{conf / '50-x.toml'}: submission.listen: "
                              "'unix:var/run/submission.sock' is not HOST:PORT"), err
        assert "deskgate send" in err and "127.0.0.1" in err, err

    def test_tcp_addresses_are_taken(self, make_confdir):
        conf = make_confdir({"50-x.toml": RELAY + '[submission]\n'
                             'listen = ["127.0.0.1:8587", "[::1]:8587"]\n'})
        assert load_config(conf, environ={}).submission.listen == ("127.0.0.1:8587",
                                                                    "[::1]:8587")

    def test_the_listener_refuses_a_unix_address_without_crashing(self, make_confdir):
        """A configuration built around the check (a test, a caller of its own) still
        gets InUse naming the address, not a ValueError from int()."""
        import dataclasses

        from gateway.errors import InUse
        from gateway.outbound.submission import Submission, SubmissionService

        cfg = load_config(make_confdir({"50-x.toml": RELAY}), environ={})
        cfg = dataclasses.replace(cfg, submission=dataclasses.replace(
            cfg.submission, listen=("unix:var/run/submission.sock",)))
        runtime = SimpleNamespace(config=cfg)
        sub = Submission(lambda: runtime, None, lambda comm: None)  # type: ignore[arg-type]
        svc = SubmissionService(sub, cfg.submission.listen)
        with pytest.raises(InUse, match=re.escape("unix:var/run/submission.sock")):
            asyncio.run(svc.start())
