"""`deskgate deliver` of a message delivered before: the answer names the ticket the
first delivery stored it in (docs/cli.md: `duplicate: ticket N article M`), run as
real `deskgate` processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.integration.cli.test_cli_contract import cli

MAIL = (b"From: alice@customer.test\nTo: support@example.org\nSubject: printer\n"
        b"Message-ID: <dup1@customer.test>\n\nThe printer is broken.\n")


def deliver_json(conf: Path, mail: bytes, *args: str) -> dict[str, object]:
    r = cli(conf, "deliver", "--json", *args, stdin=mail)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out: dict[str, object] = json.loads(r.stdout)
    return out


def database(conf: Path) -> Path:
    return conf.parent / "var" / "deskgate.db"


class TestDuplicateNamesItsTicket:
    def test_text_and_json_name_the_ticket_of_the_first_delivery(self, make_confdir):
        """Delivered twice, the second answer is `duplicate: ticket N article M` with the
        ticket number and article of the first (text and --json alike); it said
        `ticket -` and `"ticket": ""`."""
        conf = make_confdir()
        first = deliver_json(conf, MAIL)
        assert first["action"] == "new" and first["ticket"], first
        again = deliver_json(conf, MAIL)
        assert (again["action"], again["ticket"], again["article_id"]) == (
            "duplicate", first["ticket"], first["article_id"]), again
        r = cli(conf, "deliver", stdin=MAIL)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"duplicate: ticket {first['ticket']} article {first['article_id']}\n"
        shown = cli(conf, "tickets", "show", str(first["ticket"]), "--json")
        assert len(json.loads(shown.stdout)["articles"]) == 1

    def test_the_helpdesk_number_is_named_as_tickets_show_takes_it(self, make_confdir):
        """A ticket whose number is the helpdesk's (deskgate's own number not set) is named
        by that number, the one `tickets show` finds it by; one whose number the helpdesk
        has not told yet is named by none."""
        conf = make_confdir()
        first = deliver_json(conf, MAIL)
        with sqlite3.connect(database(conf)) as db:
            db.execute("UPDATE ticket SET number = NULL, helpdesk_ticket_number = '4711'")
        again = deliver_json(conf, MAIL)
        assert (again["action"], again["ticket"], again["article_id"]) == (
            "duplicate", "4711", first["article_id"]), again
        shown = cli(conf, "tickets", "show", "4711", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["id"], shown.stderr
        with sqlite3.connect(database(conf)) as db:
            db.execute("UPDATE ticket SET helpdesk_ticket_number = ''")
        pending = deliver_json(conf, MAIL)
        assert (pending["action"], pending["ticket"], pending["article_id"]) == (
            "duplicate", "", first["article_id"]), pending

    def test_an_ignored_message_has_no_ticket(self, make_confdir):
        """The redelivery of a message ignored the first time (X-Deskgate-Ignore) is a
        duplicate without ticket or article."""
        conf = make_confdir()
        mail = MAIL.replace(b"Subject:", b"X-Deskgate-Ignore: yes\nSubject:")
        first = deliver_json(conf, mail, "--trusted")
        assert first["action"] == "ignore", first
        again = deliver_json(conf, mail, "--trusted")
        assert (again["action"], again["ticket"], again["article_id"]) == (
            "duplicate", "", None), again
        r = cli(conf, "deliver", "--trusted", stdin=mail)
        assert r.stdout == "duplicate: ticket - article -\n", (r.stdout, r.stderr)
