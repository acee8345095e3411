"""`deskgate tickets show N` of a ticket with many articles: a page of them
(--limit, --offset), their number in all, and a word when some were left out, run as
real `deskgate` processes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, insert, select

from gateway.store.tables import Article, Ticket
from tests.integration.cli.test_cli_contract import cli
from tests.integration.cli.test_cli_deliver_duplicate import MAIL, database, deliver_json


def ticket_with_articles(conf: Path, count: int) -> tuple[str, list[int]]:
    """A delivered ticket grown to `count` articles (a mail loop that slipped through);
    returns its number and its article ids in id order."""
    number = str(deliver_json(conf, MAIL)["ticket"])
    engine = create_engine(f"sqlite:///{database(conf)}")
    try:
        with engine.begin() as conn:
            tid = conn.execute(select(Ticket.id).where(Ticket.number == number)).scalar_one()
            now = datetime.now(UTC)
            if count > 1:
                conn.execute(insert(Article), [
                    {"ticket_id": tid, "direction": "incoming", "sender_type": "customer",
                     "from_addr": "alice@customer.test", "subject": f"Re: loop {n}",
                     "body": f"loop body {n}", "created": now} for n in range(1, count)])
            ids = list(conn.execute(select(Article.id).where(Article.ticket_id == tid)
                                    .order_by(Article.id)).scalars())
    finally:
        engine.dispose()
    return number, ids


class TestTicketsShowPages:
    def test_default_limit_leaves_out_the_rest_and_says_so(self, make_confdir):
        """A ticket with more articles than the default limit (100) shows the first 100
        in --json, with article_count (all of them) and how many were left out; the
        text output says which articles it shows and how to get the next ones."""
        conf = make_confdir()
        number, ids = ticket_with_articles(conf, 103)
        r = cli(conf, "tickets", "show", number, "--json")
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        assert [a["id"] for a in shown["articles"]] == ids[:100]
        assert shown["article_count"] == 103
        assert shown["article_offset"] == 0 and shown["articles_left_out"] == 3
        assert shown["number"] == number and shown["title"] == "printer"
        r = cli(conf, "tickets", "show", number)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n--- article ") == 100
        assert "loop body 99\n" in r.stdout and "loop body 100\n" not in r.stdout
        assert ("articles 1 to 100 of 103 shown; 3 left out (--offset 100 for the next)"
                in r.stdout), r.stdout

    def test_limit_and_offset_choose_the_page(self, make_confdir):
        """--limit and --offset choose the articles, in id order; the last page leaves
        nothing out after it, but still says the ones before it were left out."""
        conf = make_confdir()
        number, ids = ticket_with_articles(conf, 5)
        r = cli(conf, "tickets", "show", number, "--limit", "2", "--offset", "3", "--json")
        assert r.returncode == 0, r.stderr
        shown = json.loads(r.stdout)
        assert [a["id"] for a in shown["articles"]] == ids[3:]
        assert (shown["article_count"], shown["article_offset"],
                shown["articles_left_out"]) == (5, 3, 3)
        r = cli(conf, "tickets", "show", number, "--limit", "2", "--offset", "3")
        assert r.stdout.count("\n--- article ") == 2
        assert "articles 4 to 5 of 5 shown; 3 left out" in r.stdout, r.stdout
        r = cli(conf, "tickets", "show", number, "--offset", "9", "--json")
        shown = json.loads(r.stdout)
        assert (shown["articles"], shown["article_count"], shown["articles_left_out"]) == (
            [], 5, 5)

    def test_a_ticket_within_the_limit_shows_everything(self, make_confdir):
        """A ticket whose articles fit shows all of them, article_count equal to their
        number, nothing left out and no note about it."""
        conf = make_confdir()
        number, ids = ticket_with_articles(conf, 2)
        shown = json.loads(cli(conf, "tickets", "show", number, "--json").stdout)
        assert [a["id"] for a in shown["articles"]] == ids
        assert (shown["article_count"], shown["articles_left_out"]) == (2, 0)
        r = cli(conf, "tickets", "show", number)
        assert "left out" not in r.stdout and "2 articles" in r.stdout, r.stdout

    def test_bad_limit_or_offset_is_refused(self, make_confdir):
        """A negative --limit or --offset, or a --limit above the maximum, exits 2 with
        one line naming the option."""
        conf = make_confdir()
        number, _ = ticket_with_articles(conf, 1)
        for args, option in ((("--limit", "-1"), "--limit"), (("--offset", "-5"), "--offset"),
                             (("--limit", str(2**63)), "--limit"),
                             (("--offset", str(2**63)), "--offset")):
            r = cli(conf, "tickets", "show", number, *args)
            assert r.returncode == 2, (args, r.stderr)
            assert r.stderr.startswith(f"tickets show: {option} must be between 0 and "), \
                r.stderr
