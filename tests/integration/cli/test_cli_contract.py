"""The command line as docs/cli.md promises it, run as real `deskgate` processes: bad
option values are refused before anything is written, and the exit codes and messages
are the documented ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def cli(conf: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """`deskgate -c conf ARGS` as its own process."""
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          input=stdin.decode(), capture_output=True, cwd=conf.parent,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
                          text=True, check=False)


class TestDkimKeygenNames:
    @pytest.mark.parametrize(("domain", "selector", "bad"), [
        ("example.org", "bad sel", "selector"),
        ("example.org", "s1;h=x", "selector"),
        ("example.org", "../../../outside", "selector"),
        ("bad domain", "s1", "domain"),
        ('example.org"\nx', "s1", "domain"),
        ("example..org", "s1", "domain"),
    ])
    def test_a_name_dns_cannot_hold_is_refused(self, make_confdir, domain, selector, bad):
        """`dkim keygen` refuses a domain or selector that is no DNS name (RFC 6376: the
        selector is dot-separated letters, digits and hyphens) with exit 2 naming the
        argument, and writes no key: such a name would give a DKIM-Signature (d=, s=) and
        a TXT record that no verifier can use."""
        conf = make_confdir()
        r = cli(conf, "dkim", "keygen", domain, selector)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert f"argument {bad}:" in r.stderr, r.stderr
        assert r.stdout == ""
        assert not list(conf.parent.rglob("*.pem")), list(conf.parent.rglob("*.pem"))

    def test_dns_names_are_accepted(self, make_confdir):
        """A usual selector (letters, digits, hyphens, dots) and an internationalised
        domain are accepted; the TXT record names them, the domain by its A-labels (the
        name DNS holds)."""
        conf = make_confdir()
        r = cli(conf, "dkim", "keygen", "exämple.org", "s-2026.a", "--ed25519")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("s-2026.a._domainkey.xn--exmple-cua.org. IN TXT"), r.stdout
        assert (conf.parent / "keys" / "dkim" / "exämple.org.s-2026.a.pem").is_file()


class TestInventoryWithTheDatabaseDown:
    def test_lists_say_which_database_and_why_and_claim_no_counts(self, make_confdir):
        """With the database down, `queues list` still lists the files' queues (exit 0, as
        docs/cli.md says) but the warning names gateway.database with its URL (password
        hidden) and the reason, and OPEN_TICKETS is unknown (null), not a made-up 0."""
        import json

        from tests.conftest import free_port

        port = free_port()
        conf = make_confdir({"90-db.toml": f"""
            [gateway]
            database = "postgresql+psycopg://gw:hunter2@127.0.0.1:{port}/nothing"
            """})
        r = cli(conf, "queues", "list", "--json")
        assert r.returncode == 0, r.stderr
        assert (f"gateway.database (postgresql+psycopg://gw:***@127.0.0.1:{port}/nothing): "
                in r.stderr), r.stderr
        assert "hunter2" not in r.stderr
        rows = json.loads(r.stdout)
        assert rows and {row["open_tickets"] for row in rows} == {None}, rows
        section = (REPO / "docs" / "cli.md").read_text().split("## deskgate queues", 1)[0]
        assert "`addresses list`, `queues list` and `accounts list`" in section

    def test_no_database_yet_is_zero_open_tickets(self, make_confdir):
        """Before the first `db upgrade` there is nothing to count: open_tickets is 0 and
        nothing is warned."""
        import json

        conf = make_confdir()
        r = cli(conf, "queues", "list", "--json")
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert {row["open_tickets"] for row in json.loads(r.stdout)} == {0}


class TestKeyImportOfAMissingFile:
    @pytest.mark.parametrize("kind", ["smime", "pgp"])
    def test_names_the_file_and_the_reason(self, make_confdir, kind):
        """`keys smime|pgp import` of a file that is not there exits 65 with one line
        naming the file and why it cannot be read (as --key does), not a Python errno
        tuple."""
        conf = make_confdir()
        missing = conf.parent / "nowhere.pem"
        r = cli(conf, "keys", kind, "import", str(missing))
        assert r.returncode == 65, r.stderr
        assert r.stderr == (f"keys {kind} import: {missing}: cannot read: "
                            "No such file or directory\n"), r.stderr


class TestFetchNamesAConfiguredAccount:
    @pytest.mark.parametrize("mode", ["--status", "--list-oversized"])
    def test_unknown_account_is_67_in_every_mode(self, make_confdir, mode):
        """`fetch --status NAME` and `fetch --list-oversized NAME` of an account that is
        not configured exit 67 naming it, as `fetch NAME` does (docs/cli.md: 67 for an
        unknown account), instead of an empty table that reads as "nothing to report"."""
        conf = make_confdir()
        r = cli(conf, "fetch", mode, "tpyo")
        assert r.returncode == 67, (r.stdout, r.stderr)
        assert r.stderr == "fetch: no [[account]] named 'tpyo'\n", r.stderr
        assert r.stdout == ""

    @pytest.mark.parametrize("mode", ["--status", "--list-oversized"])
    def test_a_disabled_account_can_still_be_looked_at(self, make_confdir, mode):
        """Neither mode polls, so an account with valid = false is shown (exit 0)."""
        conf = make_confdir({"60-acc.toml": """
            [[account]]
            name = "old"
            type = "imaps"
            host = "127.0.0.1"
            login = "x"
            password = "pw"
            valid = false
            """})
        (conf / "60-acc.toml").chmod(0o600)
        r = cli(conf, "fetch", mode, "old", "--json")
        assert r.returncode == 0, r.stderr


class TestClassifyCountsAreChecked:
    @pytest.mark.parametrize("args", [
        ("train", "--min-per-class", "1"),
        ("train", "--min-per-class", "-5"),
        ("evaluate", "--min-per-class", "1"),
        ("evaluate", "--folds", "1"),
        ("evaluate", "--folds", "-1"),
    ])
    def test_values_the_configuration_would_refuse_are_wrong_usage(self, make_confdir, args):
        """`--min-per-class` below 2 (the least `[classifier] min_per_class` takes) and
        `--folds` below 2 are refused as wrong usage (exit 2, naming the option) before
        any ticket is read; with tickets in two queues `--min-per-class 1` crashed the
        learner with a traceback."""
        conf = make_confdir()
        assert cli(conf, "db", "upgrade").returncode == 0
        for n, to in enumerate(["support@example.org"] * 3 + ["sales@example.org"]):
            mail = (f"From: c{n}@customer.test\nTo: {to}\nSubject: printer {n}\n"
                    f"Message-ID: <m{n}@customer.test>\n\nThe printer is broken.\n")
            assert cli(conf, "deliver", stdin=mail.encode()).returncode == 0
        r = cli(conf, "classify", *args)
        assert r.returncode == 2, r.stderr
        assert f"argument {args[1]}: " in r.stderr and "at least 2" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


BEYOND = str(2**63)     # no 64-bit row id is this large


class TestIdsNoRowCanHave:
    @pytest.mark.parametrize(("args", "message"), [
        (("outqueue", "show", BEYOND), f"outqueue: no message {BEYOND}\n"),
        (("outqueue", "retry", BEYOND), f"outqueue: no queued message {BEYOND}\n"),
        (("outqueue", "delete", BEYOND), f"outqueue: no message {BEYOND}\n"),
        (("handoff", "show", BEYOND), f"handoff: no hand-off {BEYOND}\n"),
        (("handoff", "retry", BEYOND), f"handoff: hand-off {BEYOND} does not exist\n"),
        (("handoff", "delete", BEYOND), f"handoff: hand-off {BEYOND} does not exist\n"),
    ])
    def test_is_an_unknown_id(self, make_confdir, args, message):
        """An id larger than any database id is an unknown id: exit 1 with the usual
        one-line message (docs/cli.md), not an OverflowError traceback."""
        conf = make_confdir()
        assert cli(conf, "db", "upgrade").returncode == 0
        r = cli(conf, *args)
        assert (r.returncode, r.stderr) == (1, message), r.stderr

    @pytest.mark.parametrize("limit", ["-3", BEYOND])
    def test_handoff_list_limit_out_of_range_is_wrong_usage(self, make_confdir, limit):
        """`handoff list --limit` outside 0..2**63-1 is refused (exit 2) as `tickets list`
        refuses it; -3 listed everything and 2**63 crashed."""
        conf = make_confdir()
        assert cli(conf, "db", "upgrade").returncode == 0
        r = cli(conf, "handoff", "list", "--limit", limit)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("handoff list: --limit must be between 0 and "), r.stderr


class TestDeliverEnvelopeAddresses:
    @pytest.mark.parametrize("args", [
        ("-r", "support@example.org", "-f", "alice@customer.test\r\nX-Injected: 1"),
        ("-r", "support@example.org\nRCPT TO:<sales@example.org>"),
        ("-r", "<support@example.org>"),
        ("-r", ""),
        ("-r", "support\x1b@example.org"),
        ("-r", "support@example.org", "-f", "alice\x7f@customer.test"),
    ])
    def test_an_address_no_mta_can_send_is_wrong_usage_in_process_too(self, make_confdir,
                                                                         args):
        """In-process `deliver` refuses an envelope address with a control character
        (CR, LF, ESC, DEL), < or > (and an empty recipient) with 64 (EX_USAGE) and
        stores nothing, as `--via-socket` does; a sender with CR LF (or ESC, DEL) in it
        was stored and delivered (exit 0)."""
        conf = make_confdir()
        mail = (b"From: alice@customer.test\nTo: support@example.org\nSubject: hi\n"
                b"Message-ID: <env1@customer.test>\n\nHello\n")
        r = cli(conf, "deliver", *args, stdin=mail)
        assert r.returncode == 64, (r.stdout, r.stderr)
        assert r.stderr.startswith("deliver: "), r.stderr
        listed = cli(conf, "tickets", "list", "--json")
        assert listed.stdout.strip() in ("", "[]"), listed.stdout


class TestSendEnvelopeAddresses:
    @pytest.mark.parametrize("args", [
        ("-r", "alice@customer.test>\r\nRCPT TO:<evil@elsewhere.test"),
        ("-r", "alice@customer.test\nbob@customer.test"),
        ("-r", ""),
        ("-f", "bounces@example.org\r\nX-Injected: 1"),
        ("-f", "<bounces@example.org>"),
        ("-r", "alice\x1b[31m@customer.test"),
        ("-r", "alice\tbob@customer.test"),
        ("-r", "alice\x85@customer.test"),
        ("-f", "bounces\x7f@example.org"),
    ])
    def test_an_address_no_smtp_client_could_give_is_wrong_usage(self, make_confdir, args):
        """`send -r/-f` with a control character (CR, LF, TAB, ESC, DEL, NEL), < or > in
        an address, or an empty -r, exits 64 (EX_USAGE) and queues nothing. Such a
        recipient was queued (exit 0), to be put into an RCPT TO line for the smarthost
        (with a control character other than CR or LF, until the transport refused it
        too), and an empty one queued as <>."""
        conf = make_confdir()
        assert cli(conf, "db", "upgrade").returncode == 0
        mail = b"From: support@example.org\nTo: alice@customer.test\nSubject: hi\n\nHello\n"
        r = cli(conf, "send", *args, stdin=mail)
        assert r.returncode == 64, (r.stdout, r.stderr)
        assert r.stderr.startswith("send: "), r.stderr
        assert cli(conf, "outqueue", "list", "--all", "--json").stdout.strip() == "[]"
