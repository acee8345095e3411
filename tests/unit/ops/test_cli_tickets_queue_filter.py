"""`deskgate tickets list --queue NAME` matches queue names regardless of case, as the
configuration compares them ([[queue]] names are unique regardless of case, and
postmaster.default_queue or an address's queue may spell one in another case)."""

from __future__ import annotations

import json

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.store import repo
from gateway.store.db import make_engine, migrate

# (queue as stored on the ticket, title)
TICKETS = [("Support", "canonical"), ("support", "as default_queue spelled it"),
           ("Sales", "other queue"), ("Büro", "non-ASCII"), ("SupportX", "longer name")]


@pytest.fixture
def tickets_conf(make_confdir):
    conf = make_confdir({"50-q.toml": '[[queue]]\nname = "Büro"\n'})
    engine = make_engine(load_config(conf).database_url)
    migrate(engine)
    with engine.begin() as conn:
        for queue, title in TICKETS:
            repo.insert_ticket(conn, number=None, title=title, queue=queue, state="new",
                               state_type="new", priority="3 normal", dynamic_fields={})
    engine.dispose()
    return conf


def titles(capsys, conf, *argv: str) -> list[str]:
    assert main(["--config", str(conf), "tickets", "list", "--json", *argv]) == 0
    return sorted(t["title"] for t in json.loads(capsys.readouterr().out))


class TestTicketsListQueue:
    @pytest.mark.parametrize("name", ["Support", "support", "SUPPORT", "sUpPoRt"])
    def test_any_case_finds_every_spelling(self, tickets_conf, capsys, name):
        """--queue in any case lists the tickets of that queue however they spell it."""
        assert titles(capsys, tickets_conf, "--queue", name) == [
            "as default_queue spelled it", "canonical"]

    @pytest.mark.parametrize("name", ["Büro", "büro", "BÜRO"])
    def test_non_ascii_names(self, tickets_conf, capsys, name):
        """Case is folded beyond ASCII, as Python (and so the configuration) folds it."""
        assert titles(capsys, tickets_conf, "--queue", name) == ["non-ASCII"]

    def test_other_queues_stay_out(self, tickets_conf, capsys):
        """The match is the whole name: no prefix, no other queue."""
        assert titles(capsys, tickets_conf, "--queue", "sales") == ["other queue"]
        assert titles(capsys, tickets_conf, "--queue", "supp") == []
        assert titles(capsys, tickets_conf, "--queue", "support%") == []
