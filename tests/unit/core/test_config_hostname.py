"""gateway.hostname is the name deskgate gives itself in every SMTP/LMTP greeting, in
Received headers, Message-IDs and the Reporting-MTA of its DSNs: a name that would break
those lines (a space, a line break, a character no host name has) is refused by
`check` with file, key and reason, as Postfix refuses a bad myhostname."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors


@pytest.mark.parametrize("value", [
    "mx.example.org\\r\\n250 injected", "mail host.example.org", "mx.example.org\\u0000",
    "", "mx..example.org", "-mx.example.org", "mx.example.org-", "mx/example.org",
    "a" * 64 + ".example.org", ("abcdefghi." * 26) + "org"])
def test_bad_hostname_is_refused(make_confdir, value):
    conf = make_confdir({"50-h.toml": f'[gateway]\nhostname = "{value}"\n'})
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf)
    found = [str(e) for e in exc.value.errors if ": gateway.hostname: " in str(e)]
    assert found, [str(e) for e in exc.value.errors]
    assert found[0].startswith(f"{conf / '50-h.toml'}: gateway.hostname: ")
    assert "host name" in found[0]


@pytest.mark.parametrize("value", ["localhost", "mx1.example.org", "MX-2.Example.ORG",
                                   "mx.example.org.", "helpdesk_gw.example.org",
                                   "mx.bücher.example"])
def test_ordinary_hostnames_load(make_confdir, value):
    conf = make_confdir({"50-h.toml": f'[gateway]\nhostname = "{value}"\n'})
    assert load_config(conf).gateway.hostname == value
