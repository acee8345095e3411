"""Address-like keys of conf.d ([[address]] email, [[queue]] address, relay.bounce_sender,
[[dkim]] domain) hold no control character and no space: `check` refuses them with
file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigErrors

# TOML escapes, so the files themselves stay plain text.
BAD = {
    "nul": ("\\u0000@example.org", "control character"),
    "soh": ("a\\u0001b@example.org", "control character"),
    "del": ("a\\u007f@example.org", "control character"),
    "tab": ("a\\tb@example.org", "control character"),
    "crlf": ("a@example.org\\r\\nRCPT TO:<x@evil.test>", "control character"),
    "nel": ("x\\u0085y@example.org", "control character"),
    "line separator": ("x\\u2028y@example.org", "control character"),
    "space": ("a b@example.org", "space"),
    "no-break space": ("ab\\u00a0@example.org", "space"),
    # invisible in every editor and log, so the address looks right and never matches
    "zero-width space": ("sup\\u200bport@example.org", "invisible formatting character"),
    "byte order mark": ("\\ufeffsupport@example.org", "invisible formatting character"),
    "soft hyphen": ("sup\\u00adport@example.org", "invisible formatting character"),
    "right-to-left mark": ("support@example.org\\u200f", "invisible formatting character"),
}


def errors_of(conf: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf)
    return [str(e) for e in exc.value.errors]


def refused(conf: Path, file: str, key: str) -> str:
    """The reason `check` gives for `key`, asserting it names the file."""
    found = [e for e in errors_of(conf) if f": {key}: " in e]
    assert found, errors_of(conf)
    prefix = f"{conf / file}: {key}: "
    assert found[0].startswith(prefix), found
    return found[0][len(prefix):]


class TestAddressText:
    @pytest.mark.parametrize("case", sorted(BAD))
    def test_address_email(self, make_confdir, case):
        """[[address]] email with a control character or a space is refused."""
        value, words = BAD[case]
        conf = make_confdir({"50-a.toml": f'[[address]]\nemail = "{value}"\nqueue = "Raw"\n'})
        assert words in refused(conf, "50-a.toml", "address[5].email")

    @pytest.mark.parametrize("case", ["nul", "del", "space"])
    def test_queue_address(self, make_confdir, case):
        """[[queue]] address is held to the same rule."""
        value, words = BAD[case]
        conf = make_confdir({"50-q.toml": f'[[queue]]\nname = "Billing"\naddress = "{value}"\n'})
        assert words in refused(conf, "50-q.toml", "queue[4].address")

    @pytest.mark.parametrize("case", ["nul", "crlf", "space", "no-break space"])
    def test_bounce_sender(self, make_confdir, case):
        """relay.bounce_sender (the envelope sender of DSNs) is held to it too."""
        value, words = BAD[case]
        conf = make_confdir({"50-r.toml": f'[relay]\nbounce_sender = "{value}"\n'})
        assert words in refused(conf, "50-r.toml", "relay.bounce_sender")

    def test_bounce_sender_that_is_no_address(self, make_confdir):
        """A bounce_sender without a domain is refused; empty (the null sender) is not."""
        conf = make_confdir({"50-r.toml": '[relay]\nbounce_sender = "postmaster"\n'})
        assert "not an e-mail address" in refused(conf, "50-r.toml", "relay.bounce_sender")
        conf = make_confdir({"50-r.toml": '[relay]\nbounce_sender = ""\n'})
        assert load_config(conf).relay.bounce_sender == ""

    def test_dkim_domain(self, make_confdir):
        """[[dkim]] domain with a NUL is no domain name."""
        conf = make_confdir({"50-d.toml": '[[dkim]]\ndomain = "ex\\u0000ample.org"\n'
                                          'selector = "s1"\nkey_file = "k.pem"\n'})
        assert "is not a domain name" in refused(conf, "50-d.toml", "dkim[0].domain")

    def test_ordinary_addresses_still_load(self, make_confdir):
        """Plain, mixed-case and internationalised addresses are accepted as before."""
        conf = make_confdir({"50-a.toml": '[[address]]\nemail = "Billing@Example.org"\n'
                                          'queue = "Raw"\n[[address]]\n'
                                          'email = "büro@exämple.org"\nqueue = "Raw"\n'
                                          '[relay]\nbounce_sender = "MAILER-DAEMON@example.org"\n'})
        cfg = load_config(conf)
        assert cfg.address_by_email("billing@example.org") is not None
        assert cfg.address_by_email("büro@exämple.org") is not None
        assert cfg.relay.bounce_sender == "MAILER-DAEMON@example.org"

    def test_check_prints_file_key_and_reason(self, make_confdir, capsys):
        """`deskgate check` exits 1 with the `file: key: reason` line."""
        conf = make_confdir({"50-a.toml": '[[address]]\nemail = "\\u0000@example.org"\n'
                                          'queue = "Raw"\n'})
        assert main(["--config", str(conf), "check"]) == 1
        err = capsys.readouterr().err
        line = f"{conf / '50-a.toml'}: address[5].email: "
        assert line in err
        assert "control character" in err.split(line, 1)[1]
