"""What a new admin meets on the command line: `deskgate deliver` refuses like LMTP,
exit codes match docs/cli.md, and the documented ticket numbers look like real ones.
Every test runs real `deskgate` processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, func, select

from gateway.config import load_config
from gateway.store.tables import Ticket

REPO = Path(__file__).resolve().parents[3]


def cli(conf: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """`deskgate -c conf ARGS` as its own process."""
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          input=stdin.decode(), capture_output=True, cwd=conf.parent,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
                          text=True, check=False)


def mail(to: str, n: int = 1) -> bytes:
    return (f"From: cust@customer.test\nTo: {to}\nSubject: Question {n}\n"
            f"Message-ID: <q{n}@customer.test>\n\nHello\n").encode()


def tickets(conf: Path) -> int:
    engine = create_engine(load_config(conf).database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Ticket)).scalar_one())
    finally:
        engine.dispose()


class TestDeliverWithoutRecipient:
    def test_unknown_to_is_refused_with_67(self, make_confdir):
        """Without -r and with unknown_recipient = "reject", a message whose To/Cc name no
        system address exits 67 and creates no ticket, as LMTP would answer 550 5.1.1."""
        conf = make_confdir()
        r = cli(conf, "deliver", stdin=mail("nobody@elsewhere.test"))
        assert r.returncode == 67, r.stderr
        assert "nobody@elsewhere.test" in r.stderr and "5.1.1" in r.stderr
        assert tickets(conf) == 0

    def test_known_to_is_delivered(self, make_confdir):
        """A To: naming a system address still delivers without -r."""
        conf = make_confdir()
        r = cli(conf, "deliver", stdin=mail("support@example.org", 2))
        assert r.returncode == 0, r.stderr
        assert tickets(conf) == 1

    def test_temporarily_invalid_is_75(self, make_confdir):
        """A To: naming only an invalid-temporarily address exits 75 (try again later)."""
        conf = make_confdir()
        r = cli(conf, "deliver", stdin=mail("paused@example.org", 3))
        assert r.returncode == 75, r.stderr
        assert tickets(conf) == 0

    def test_default_queue_setting_still_accepts(self, make_confdir):
        """With unknown_recipient = "default-queue" the unknown To: becomes a ticket."""
        conf = make_confdir({"40-unknown.toml": '[lmtp]\nunknown_recipient = "default-queue"\n'})
        r = cli(conf, "deliver", stdin=mail("nobody@elsewhere.test", 4))
        assert r.returncode == 0, r.stderr
        assert tickets(conf) == 1


class TestDeliverAddressesAsLmtp:
    def test_quoted_local_part_needing_no_quotes_is_the_plain_address(self, make_confdir):
        """-r '"support"@example.org' is support@example.org and opens a ticket in its queue,
        and -f '"alice"@customer.test' is alice@customer.test, as LMTP takes them."""
        conf = make_confdir()
        r = cli(conf, "deliver", "-r", '"support"@example.org', "-f", '"alice"@customer.test',
                "--json", stdin=mail("support@example.org", 6))
        assert r.returncode == 0, r.stderr
        number = json.loads(r.stdout)["ticket"]
        shown = cli(conf, "tickets", "show", number, "--json")
        assert json.loads(shown.stdout)["queue"] == "Support", shown.stderr
        comms = json.loads(cli(conf, "log", "list", "--json").stdout)
        entries = [e["value"] for c in comms
                   for o in json.loads(cli(conf, "log", "show", str(c["id"]),
                                           "--json").stdout)["objects"]
                   for e in o["entries"] if e["key"] == "Envelope"]
        assert entries and entries[0].startswith(
            "from <alice@customer.test> to <support@example.org>,"), entries

    def test_quoted_local_part_that_needs_quotes_stays_quoted(self, make_confdir):
        """-r '"john doe"@example.org' is no system address: refused with 67 naming it
        quoted, as LMTP refuses RCPT TO:<"john doe"@example.org>."""
        conf = make_confdir()
        r = cli(conf, "deliver", "-r", '"john doe"@example.org', stdin=mail("x@example.org", 7))
        assert r.returncode == 67, r.stderr
        assert '<"john doe"@example.org>' in r.stderr
        assert tickets(conf) == 0


class TestExitCodesAsDocumented:
    def test_accounts_check_unknown_account_exits_1(self, make_confdir):
        """`accounts check` of an unconfigured account exits 1, the code docs/cli.md gives
        for a failed check."""
        conf = make_confdir()
        r = cli(conf, "accounts", "check", "nope")
        assert r.returncode == 1, r.stderr
        section = (REPO / "docs" / "cli.md").read_text().split("deskgate accounts check", 1)[1]
        assert "1 when one fails or `NAME` is not a configured" in section.replace("\n", " ")


class TestDocumentedTicketNumbers:
    def test_examples_have_the_length_of_real_numbers(self, make_confdir):
        """Every ticket number in README.md and docs/ is as long as one `deskgate deliver`
        really creates (YYYYMMDD + system_id + 5 digits)."""
        conf = make_confdir()
        r = cli(conf, "deliver", "--json", stdin=mail("support@example.org", 5))
        assert r.returncode == 0, r.stderr
        real = re.search(r'"ticket": "(\d+)"', r.stdout)
        assert real is not None, r.stdout
        texts = [(REPO / "README.md").read_text()] + [
            p.read_text() for p in sorted((REPO / "docs").glob("*.md"))]
        found = [n for t in texts for n in re.findall(r"\b20\d{6}10\d{3,}\b", t)]
        assert found, "no example ticket number in the docs"
        assert {len(n) for n in found} == {len(real.group(1))}, found
