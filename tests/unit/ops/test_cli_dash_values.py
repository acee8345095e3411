"""Options whose values may begin with "-" (`log list --sort -duration`, `--search -ERR`)
take them as the next word as well as after "="."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.cli import build_parser, main
from gateway.commlog import Comm, write_comm
from gateway.config import load_config
from gateway.store.db import make_engine, migrate


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


class TestDashValueParsing:
    @pytest.mark.parametrize("value", ["-duration", "-start", "-id", "-account_type"])
    def test_sort_value_after_a_space(self, value):
        """`--sort -KEY` parses as `--sort=-KEY` does."""
        assert parse("log", "list", "--sort", value).sort == value
        assert parse("log", "list", f"--sort={value}").sort == value

    @pytest.mark.parametrize("argv", [
        ("log", "list", "--search", "-ERR"),
        ("log", "overview", "--search", "-ERR"),
        ("addresses", "list", "--search", "-ERR"),
    ])
    def test_search_text_after_a_space(self, argv):
        """A search text that begins with "-" (POP3's "-ERR") is taken as the text."""
        assert parse(*argv).search == "-ERR"

    def test_an_abbreviated_option_takes_it_too(self):
        """`--sor -id` is `--sort -id`, as argparse accepts `--sor id`."""
        assert parse("log", "list", "--sor", "-id").sort == "-id"

    def test_other_options_parse_as_before(self, tmp_path):
        """Flags and options around it, and -c after the command, keep their meaning."""
        args = parse("log", "list", "--sort", "-duration", "--json", "--limit", "5",
                     "-c", str(tmp_path), "--offset", "-1")
        assert (args.sort, args.json, args.limit, args.config, args.offset) == (
            "-duration", True, 5, str(tmp_path), -1)
        args = parse("log", "list", "--json", "--sort", "id")
        assert (args.sort, args.json) == ("id", True)

    def test_a_missing_value_is_still_a_usage_error(self, capsys):
        """`--sort --json` does not take the next option as the column."""
        with pytest.raises(SystemExit) as ei:
            parse("log", "list", "--sort", "--json")
        assert ei.value.code == 2
        assert "--sort: expected one argument" in capsys.readouterr().err

    def test_a_value_after_the_option_terminator_is_positional(self, capsys):
        """After `--` nothing is joined to the option before it."""
        args = parse("filter", "test", "--account", "x", "--", "-")
        assert args.account == "x"


@pytest.fixture
def three_durations(make_confdir):
    """A config dir whose log holds communications lasting 1, 3 and 2 seconds."""
    conf = make_confdir()
    engine = make_engine(load_config(conf).database_url)
    migrate(engine)
    now = datetime.now(UTC)
    ids = {}
    for n, seconds in enumerate((1, 3, 2)):
        c = Comm("Incoming", "POP3S", "legacy", start=now - timedelta(minutes=n))
        o = c.obj("Connection")
        o.log("Error", "Step", "server said -ERR mailbox locked" if seconds == 3 else "ok")
        o.close("Failed" if seconds == 3 else "Successful")
        c.close()
        c.end = c.start + timedelta(seconds=seconds)
        with engine.begin() as conn:
            ids[seconds] = write_comm(conn, c)
    engine.dispose()
    return conf, ids


class TestLogListDashValues:
    def test_reverse_sort_both_forms(self, three_durations, capsys):
        """`log list --sort -duration` lists longest first, as `--sort=-duration` does."""
        conf, ids = three_durations
        results = []
        for argv in (["--sort", "-duration"], ["--sort=-duration"]):
            assert main(["--config", str(conf), "log", "list", "--json", *argv]) == 0
            results.append([r["id"] for r in json.loads(capsys.readouterr().out)])
        assert results[0] == results[1] == [ids[3], ids[2], ids[1]]

    def test_search_for_a_dash_text(self, three_durations, capsys):
        """`log list --search -ERR` finds the communication whose entry has it."""
        conf, ids = three_durations
        assert main(["--config", str(conf), "log", "list", "--json", "--search", "-ERR"]) == 0
        assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [ids[3]]
