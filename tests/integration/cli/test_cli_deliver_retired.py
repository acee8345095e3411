"""`deskgate deliver` for a system address removed from conf.d: it stays in the
database as invalid, so deliver refuses it as an invalid address (550 5.2.1, exit 67)
instead of taking it for a stranger. Run as real `deskgate` processes."""

from __future__ import annotations

import pytest

from tests.integration.cli.test_cli_contract import cli

RETIRING = '[[address]]\nemail = "retiring@example.org"\nqueue = "Support"\n'


def mail(to: str, n: int) -> bytes:
    return (f"From: alice@customer.test\nTo: {to}\nSubject: printer\n"
            f"Message-ID: <retired{n}@customer.test>\n\nThe printer is broken.\n").encode()


class TestDeliverToARetiredAddress:
    @pytest.mark.parametrize("unknown", ["reject", "default-queue"])
    def test_recipient_is_refused_as_invalid(self, make_confdir, unknown):
        """-r names an address removed from conf.d since it was synchronised: exit 67
        with 5.2.1 and nothing stored, also with unknown_recipient = "default-queue"
        (which delivered it into the default queue)."""
        conf = make_confdir({"50-lmtp.toml": f'[lmtp]\nunknown_recipient = "{unknown}"\n',
                             "60-retiring.toml": RETIRING})
        r = cli(conf, "deliver", "-r", "retiring@example.org",
                stdin=mail("retiring@example.org", 1))
        assert r.returncode == 0, (r.stdout, r.stderr)
        (conf / "60-retiring.toml").unlink()
        r = cli(conf, "deliver", "-r", "retiring@example.org",
                stdin=mail("retiring@example.org", 2))
        assert r.returncode == 67, (r.stdout, r.stderr)
        assert "<retiring@example.org>: 550 5.2.1" in r.stderr, r.stderr
        listed = cli(conf, "tickets", "list", "--json")
        assert listed.returncode == 0 and listed.stdout.count('"number"') == 1, listed.stdout

    def test_to_header_names_it_as_invalid(self, make_confdir):
        """Without -r, To/Cc stand in for the envelope: the refusal gives 5.2.1."""
        conf = make_confdir({"60-retiring.toml": RETIRING})
        assert cli(conf, "db", "upgrade").returncode == 0
        (conf / "60-retiring.toml").unlink()
        r = cli(conf, "deliver", stdin=mail("retiring@example.org", 3))
        assert r.returncode == 67, (r.stdout, r.stderr)
        assert "(retiring@example.org): 550 5.2.1" in r.stderr, r.stderr

    def test_put_back_is_delivered_again(self, make_confdir):
        """Back in conf.d, the address is valid again."""
        conf = make_confdir({"60-retiring.toml": RETIRING})
        assert cli(conf, "db", "upgrade").returncode == 0
        (conf / "60-retiring.toml").unlink()
        assert cli(conf, "db", "upgrade").returncode == 0
        (conf / "60-retiring.toml").write_text(RETIRING)
        r = cli(conf, "deliver", "-r", "retiring@example.org",
                stdin=mail("retiring@example.org", 4))
        assert r.returncode == 0, (r.stdout, r.stderr)
