"""Whose request it is behind a reverse proxy: [dashboard] trusted_proxies and the
forwarded client address (gateway.web.auth.client_address)."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.web.auth import client_address

PROXIES = ("127.0.0.1", "::1", "10.0.0.0/8")


def xff(*values: str) -> list[tuple[str, str]]:
    return [("X-Forwarded-For", v) for v in values]


class TestClientAddress:
    def test_without_trusted_proxies_the_peer_is_the_client(self):
        """The default (no trusted proxies) keeps today's behaviour: X-Forwarded-For and
        Forwarded are ignored, whoever sends them."""
        headers = [*xff("192.0.2.7"), ("Forwarded", "for=192.0.2.8")]
        assert client_address("127.0.0.1", headers, ()) == "127.0.0.1"

    def test_an_untrusted_peer_cannot_name_a_client(self):
        """A peer outside trusted_proxies is the client, whatever it forwards."""
        assert client_address("198.51.100.4", xff("192.0.2.7"), PROXIES) == "198.51.100.4"

    def test_rightmost_untrusted_address_of_x_forwarded_for(self):
        """Addresses are read from the right, skipping trusted proxies, as nginx's
        real_ip_recursive does; what a client wrote further left is not believed."""
        chain = xff("203.0.113.66, 192.0.2.7, 10.1.2.3")
        assert client_address("127.0.0.1", chain, PROXIES) == "192.0.2.7"
        # Several headers are one list, in order.
        assert client_address("10.0.0.1", xff("203.0.113.66", "192.0.2.7"),
                              PROXIES) == "192.0.2.7"
        # Every hop trusted: the leftmost is the client.
        assert client_address("127.0.0.1", xff("10.9.9.9, ::1"), PROXIES) == "10.9.9.9"
        # Without the header the proxy itself is the client.
        assert client_address("127.0.0.1", [], PROXIES) == "127.0.0.1"

    def test_a_malformed_hop_is_not_believed(self):
        """A hop that is no address (a client's garbage, `unknown`) ends the walk: the
        trusted hop to its right is the client, never anything left of it."""
        assert client_address("127.0.0.1", xff("192.0.2.7, nonsense"),
                              PROXIES) == "127.0.0.1"
        assert client_address("127.0.0.1", xff("192.0.2.7, unknown, 10.0.0.5"),
                              PROXIES) == "10.0.0.5"

    def test_forwarded_header(self):
        """RFC 7239 Forwarded (for=, quoted IPv6 with a port, several elements) is read
        the same way when there is no X-Forwarded-For."""
        fwd = [("Forwarded", 'for=203.0.113.66;proto=https, for="[2001:db8::7]:4711"'),
               ("Forwarded", "for=10.0.0.9;by=10.0.0.1")]
        assert client_address("::1", fwd, PROXIES) == "2001:db8::7"
        assert client_address("::1", [("Forwarded", "for=192.0.2.1:8080")],
                              PROXIES) == "192.0.2.1"
        assert client_address("::1", [("Forwarded", "for=_hidden")], PROXIES) == "::1"

    def test_x_forwarded_for_wins_over_forwarded(self):
        """nginx appends to X-Forwarded-For and passes a client's own Forwarded through
        unchanged: with both present the X-Forwarded-For chain names the client."""
        headers = [*xff("192.0.2.7"), ("Forwarded", "for=203.0.113.66")]
        assert client_address("127.0.0.1", headers, PROXIES) == "192.0.2.7"

    def test_ipv4_mapped_peer_is_matched(self):
        """A proxy connecting over a dual-stack socket (::ffff:127.0.0.1) is trusted."""
        assert client_address("::ffff:127.0.0.1", xff("192.0.2.7"), PROXIES) == "192.0.2.7"


class TestTrustedProxiesKey:
    def test_default_is_empty(self, make_confdir):
        assert load_config(make_confdir()).dashboard.trusted_proxies == ()

    def test_addresses_and_networks_are_accepted(self, make_confdir):
        conf = make_confdir({"60-d.toml": '[dashboard]\ntrusted_proxies = '
                                          '["127.0.0.1", "::1", "10.0.0.0/8"]\n'})
        assert load_config(conf).dashboard.trusted_proxies == PROXIES

    @pytest.mark.parametrize("value", ['["10.0.0.0/33"]', '["proxy.example.org"]', '"::1"',
                                       "[1]"])
    def test_malformed_entry_is_refused_with_file_key_and_reason(self, make_confdir, value):
        """`deskgate check` names the file, dashboard.trusted_proxies and what is wrong."""
        conf = make_confdir({"60-d.toml": f"[dashboard]\ntrusted_proxies = {value}\n"})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        errors = [str(e) for e in exc.value.errors]
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"{conf / '60-d.toml'}: dashboard.trusted_proxies"), errors
        assert len(errors[0].split(": ", 2)[2]) > 10, errors


class TestForwardedHttps:
    def test_trusted_proxy_says_https(self):
        """A trusted proxy's X-Forwarded-Proto (or Forwarded proto=) https means the
        browser talks TLS; an untrusted peer's word, or none, does not count."""
        from gateway.web.auth import forwarded_https

        assert forwarded_https("127.0.0.1", [("X-Forwarded-Proto", "https")], PROXIES)
        assert forwarded_https("::1", [("Forwarded", "for=192.0.2.1;proto=https")], PROXIES)
        assert not forwarded_https("127.0.0.1", [("X-Forwarded-Proto", "http")], PROXIES)
        assert not forwarded_https("198.51.100.4", [("X-Forwarded-Proto", "https")], PROXIES)
        assert not forwarded_https("127.0.0.1", [("X-Forwarded-Proto", "https")], ())
        assert not forwarded_https("127.0.0.1", [], PROXIES)
