"""`deskgate deliver --account NAME` run by an MTA (a Postfix pipe transport) where
NAME is no [[account]] of conf.d: the message stays queued, as with a configuration
that is refused, instead of bouncing as an unknown recipient. Run as real `deskgate`
processes."""

from __future__ import annotations

from tests.integration.cli.test_cli_contract import cli

MAIL = (b"From: alice@customer.test\nTo: support@example.org\nSubject: printer\n"
        b"Message-ID: <acct1@customer.test>\n\nThe printer is broken.\n")


class TestDeliverForAnUnknownAccount:
    def test_is_a_temporary_failure_and_stores_nothing(self, make_confdir):
        """An --account that conf.d does not define (renamed or removed there while the
        MTA's pipe command still names it) exits 75 (EX_TEMPFAIL): the MTA keeps the
        message and delivers it once the files and the command agree. It exited 67
        (EX_NOUSER), which Postfix's pipe turns into a `5.1.1 user unknown` bounce to
        the customer, though every recipient was a known system address."""
        conf = make_confdir()
        assert cli(conf, "db", "upgrade").returncode == 0
        r = cli(conf, "deliver", "--account", "tpyo", "-r", "support@example.org",
                stdin=MAIL)
        assert r.returncode == 75, (r.stdout, r.stderr)
        assert r.stderr == "deliver: no [[account]] named 'tpyo'\n", r.stderr
        assert r.stdout == ""
        listed = cli(conf, "tickets", "list", "--json")
        assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stdout

    def test_an_unknown_recipient_is_still_67(self, make_confdir):
        """What 67 is for: no system address among the recipients."""
        conf = make_confdir()
        r = cli(conf, "deliver", "-r", "nobody@example.org", stdin=MAIL)
        assert r.returncode == 67, (r.stdout, r.stderr)
