"""The inventory lists: contents, search and filter semantics, removed addresses, health."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from gateway import inventory
from gateway.cli import main
from gateway.commlog import Comm, write_comm
from gateway.config import load_config
from gateway.store import repo
from gateway.store.tables import Ticket
from tests.unit.inventory.conftest import ACCOUNTS, POLICIES

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def cli_json(conf: Path, *argv: str, capsys: pytest.CaptureFixture[str]) -> object:
    capsys.readouterr()
    assert main(["--config", str(conf), *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


class TestSearch:
    def test_substring_case_insensitive(self):
        """A row matches when the text is a substring of any shown field, ignoring case."""
        row = {"email": "Support@Example.org", "comment": "Customer care"}
        assert inventory.matches(row, "SUPPORT@", ("email", "comment"))
        assert inventory.matches(row, "care", ("email", "comment"))
        assert not inventory.matches(row, "sales", ("email", "comment"))

    def test_only_shown_fields_are_searched(self):
        """Fields a list does not show do not make a row match."""
        row = {"email": "a@example.org", "hidden": "needle"}
        assert not inventory.matches(row, "needle", ("email",))

    def test_empty_text_matches_everything(self):
        """An empty or blank search keeps every row."""
        rows = [{"a": "x"}, {"a": "y"}]
        assert inventory.search(rows, "", ("a",)) == rows
        assert inventory.search(rows, "  ", ("a",)) == rows
        assert inventory.search(rows, None, ("a",)) == rows


class TestSort:
    def test_numbers_as_numbers_text_ignoring_case(self):
        """Numbers sort numerically, text case-insensitively, empty cells first."""
        rows = [{"n": 10, "t": "beta"}, {"n": 9, "t": "Alpha"}, {"n": None, "t": ""}]
        assert [r["n"] for r in inventory.sort_rows(rows, "n", ("n", "t"))] == [None, 9, 10]
        assert [r["t"] for r in inventory.sort_rows(rows, "t", ("n", "t"))] == [
            "", "Alpha", "beta"]

    def test_descending_and_unknown_column(self):
        """A leading '-' reverses; a column the list does not show keeps the given order."""
        rows = [{"n": 1}, {"n": 3}, {"n": 2}]
        assert [r["n"] for r in inventory.sort_rows(rows, "-n", ("n",))] == [3, 2, 1]
        assert inventory.sort_rows(rows, "secret", ("n",)) == rows
        assert inventory.sort_rows(rows, None, ("n",)) == rows

    def test_times_sort_chronologically(self):
        """Datetimes sort by time."""
        rows = [{"t": NOW}, {"t": NOW - timedelta(days=1)}]
        assert inventory.sort_rows(rows, "t", ("t",))[0]["t"] == NOW - timedelta(days=1)


class TestAddresses:
    def test_config_only_without_database(self, make_confdir):
        """Without a database the files are listed, and no database file is created."""
        cfg = load_config(make_confdir())
        assert inventory.open_store(cfg) is None
        rows = inventory.list_addresses(cfg)
        assert [r["email"] for r in rows] == ["helpdesk@example.org", "old@example.org",
                                              "paused@example.org", "sales@example.org",
                                              "support@example.org"]
        assert all(r["source"].endswith("10-base.toml") for r in rows)
        assert not (cfg.state_dir / "deskgate.db").exists()

    def test_source_names_the_defining_file(self, make_confdir):
        """Each address names the file it is defined in."""
        cfg = load_config(make_confdir({"60-extra.toml": """
            [[address]]
            email = "extra@example.org"
            queue = "Sales"
            """}))
        by_email = {r["email"]: r for r in inventory.list_addresses(cfg)}
        assert by_email["extra@example.org"]["source"].endswith("60-extra.toml")
        assert by_email["sales@example.org"]["source"].endswith("10-base.toml")

    def test_search_display_name_and_comment(self, make_confdir):
        """The search looks at display name and comment as well as the address."""
        cfg = load_config(make_confdir({"60-extra.toml": """
            [[address]]
            email = "billing@example.org"
            display_name = "Accounts Receivable"
            queue = "Sales"
            comment = "Invoices from SAP"
            """}))
        assert [r["email"] for r in inventory.list_addresses(cfg, text="receivable")] == [
            "billing@example.org"]
        assert [r["email"] for r in inventory.list_addresses(cfg, text="sap")] == [
            "billing@example.org"]
        assert [r["email"] for r in inventory.list_addresses(cfg, text="EXAMPLE SUPPORT")] == [
            "support@example.org"]

    def test_valid_and_queue_filters_combine_with_search(self, make_confdir):
        """--valid and --queue narrow exactly; --queue ignores case; all three combine."""
        cfg = load_config(make_confdir())
        assert [r["email"] for r in inventory.list_addresses(
            cfg, valid="invalid-temporarily")] == ["paused@example.org"]
        assert [r["email"] for r in inventory.list_addresses(cfg, queue="support")] == [
            "old@example.org", "paused@example.org", "support@example.org"]
        assert [r["email"] for r in inventory.list_addresses(
            cfg, queue="Support", valid="valid", text="support")] == ["support@example.org"]
        assert inventory.list_addresses(cfg, queue="Support", text="sales") == []

    def test_removed_address_shown_invalid_after_sync(self, make_confdir, store):
        """An address removed from the files is listed as invalid, 'removed from configuration'."""
        conf = make_confdir({"60-extra.toml": """
            [[address]]
            email = "promo@example.org"
            display_name = "Promotions"
            queue = "Sales"
            """})
        store(load_config(conf))
        (conf / "60-extra.toml").unlink()
        cfg = load_config(conf)
        engine = store(cfg)
        with engine.connect() as conn:
            rows = inventory.list_addresses(cfg, conn)
            removed = [r for r in rows if r["email"] == "promo@example.org"]
            assert removed == [{"email": "promo@example.org", "display_name": "Promotions",
                                "queue": "Sales", "valid": "invalid",
                                "comment": "", "source": inventory.REMOVED_SOURCE,
                                "in_config": False}]
            assert rows[-1]["email"] == "promo@example.org"
            invalid = inventory.list_addresses(cfg, conn, valid="invalid")
            assert {r["email"] for r in invalid} == {"old@example.org", "promo@example.org"}
            assert [r["email"] for r in inventory.list_addresses(cfg, conn, text="removed")] == [
                "promo@example.org"]

    def test_removed_address_shown_before_the_gateway_synced(self, make_confdir, store):
        """A database address the files no longer name is invalid even before sync_config ran."""
        conf = make_confdir({"60-extra.toml": """
            [[address]]
            email = "promo@example.org"
            queue = "Sales"
            """})
        engine = store(load_config(conf))
        (conf / "60-extra.toml").unlink()
        cfg = load_config(conf)
        with engine.connect() as conn:
            row = next(r for r in inventory.list_addresses(cfg, conn)
                       if r["email"] == "promo@example.org")
        assert (row["valid"], row["source"]) == ("invalid", inventory.REMOVED_SOURCE)

    def test_readded_address_is_valid_again(self, make_confdir, store):
        """An address put back into the files shows its configured validity and file."""
        extra = {"60-extra.toml": """
            [[address]]
            email = "promo@example.org"
            queue = "Sales"
            """}
        conf = make_confdir(extra)
        store(load_config(conf))
        (conf / "60-extra.toml").unlink()
        store(load_config(conf))
        conf = make_confdir(extra)
        cfg = load_config(conf)
        engine = store(cfg)
        with engine.connect() as conn:
            row = next(r for r in inventory.list_addresses(cfg, conn)
                       if r["email"] == "promo@example.org")
        assert (row["valid"], row["in_config"]) == ("valid", True)
        assert row["source"].endswith("60-extra.toml")

    def test_cli_reads_database_when_present(self, make_confdir, store, capsys):
        """`addresses list --json` includes the removed address once the database exists."""
        conf = make_confdir({"60-extra.toml": """
            [[address]]
            email = "promo@example.org"
            queue = "Sales"
            """})
        store(load_config(conf))
        (conf / "60-extra.toml").unlink()
        store(load_config(conf))
        rows = cli_json(conf, "addresses", "list", "--valid", "invalid", capsys=capsys)
        assert [(r["email"], r["source"]) for r in rows] == [
            ("old@example.org", rows[0]["source"]),
            ("promo@example.org", inventory.REMOVED_SOURCE)]

    def test_unreachable_database_falls_back_to_config(self, make_confdir, capsys):
        """With the database down the CLI warns on stderr and lists the files' addresses."""
        from tests.conftest import free_port

        conf = make_confdir({"90-db.toml": f"""
            [gateway]
            database = "postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
            """})
        rows = cli_json(conf, "addresses", "list", capsys=capsys)
        assert len(rows) == 5
        assert main(["--config", str(conf), "queues", "list"]) == 0
        assert "database not readable" in capsys.readouterr().err

    def test_cli_table_without_database(self, make_confdir, capsys):
        """The table view prints one line per address under a header."""
        conf = make_confdir()
        assert main(["--config", str(conf), "addresses", "list", "--search", "PAUSED"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:4] == ["EMAIL", "DISPLAY_NAME", "QUEUE", "VALID"]
        assert len(lines) == 2 and "invalid-temporarily" in lines[1]


class TestQueues:
    def _ticket(self, conn, number: str, queue: str, state_type: str) -> None:
        conn.execute(insert(Ticket).values(number=number, queue=queue, state=state_type,
                                           state_type=state_type, priority="3 normal",
                                           created=NOW, changed=NOW))

    def test_fields_and_open_ticket_counts(self, make_confdir, store):
        """Open tickets exclude the closed, merged and removed state types."""
        cfg = load_config(make_confdir({"60-q.toml": """
            [[queue]]
            name = "Secure"
            address = "secure@example.org"
            sign = "smime"
            encrypt = "required"
            comment = "S/MIME only"
            [[address]]
            email = "secure@example.org"
            queue = "Secure"
            """}))
        engine = store(cfg)
        with engine.begin() as conn:
            for i, st in enumerate(("new", "open", "pending", "closed", "merged", "removed")):
                self._ticket(conn, f"1{i}", "Support", st)
            self._ticket(conn, "20", "Secure", "open")
        with engine.connect() as conn:
            rows = {r["name"]: r for r in inventory.list_queues(cfg, conn)}
        assert rows["Support"]["open_tickets"] == 3
        assert rows["Secure"] == {"name": "Secure", "address": "secure@example.org",
                                  "follow_up": "possible", "sign": "smime",
                                  "encrypt": "required", "open_tickets": 1,
                                  "comment": "S/MIME only"}
        assert rows["Sales"]["open_tickets"] == 0

    def test_search(self, make_confdir):
        """Search matches name, address and policies, case-insensitively."""
        cfg = load_config(make_confdir())
        assert [r["name"] for r in inventory.list_queues(cfg, text="SALES")] == ["Sales"]
        assert [r["name"] for r in inventory.list_queues(cfg, text="new-ticket")] == ["Sales"]
        assert [r["name"] for r in inventory.list_queues(cfg, text="reject")] == ["Junk"]
        assert [r["name"] for r in inventory.list_queues(cfg, text="helpdesk@")] == ["Raw"]
        assert inventory.list_queues(cfg, text="nothing-like-this") == []

    def test_cli_json(self, make_confdir, capsys):
        """`queues list --json` works from the config alone with zero open tickets."""
        rows = cli_json(make_confdir(), "queues", "list", capsys=capsys)
        assert [r["name"] for r in rows] == ["Raw", "Support", "Sales", "Junk"]
        assert {r["open_tickets"] for r in rows} == {0}


def _poll(conn, account_type: str, account: str, statuses: list[str], start: datetime) -> None:
    """One communication with a Connection object per status."""
    comm = Comm("Incoming", account_type, account, start=start)
    for st in statuses:
        o = comm.obj("Connection")
        o.start = start
        o.close(st)  # type: ignore[arg-type]
    comm.close()
    write_comm(conn, comm)


class TestAccounts:
    def test_fields_without_secrets(self, make_confdir, capsys):
        """Rows carry the account settings; no password or OAuth2 secret appears anywhere."""
        conf = make_confdir({"50-accounts.toml": ACCOUNTS})
        cfg = load_config(conf)
        rows = {r["name"]: r for r in inventory.list_accounts(cfg)}
        legacy = rows["legacy"]
        assert {k: legacy[k] for k in ("type", "host", "port", "login", "folder", "trusted",
                                       "dispatch", "queue", "interval", "valid", "comment",
                                       "auth")} == {
            "type": "imaps", "host": "imap.example.org", "port": 993, "login": "helpdesk",
            "folder": "Support/In", "trusted": False, "dispatch": "queue", "queue": "Support",
            "interval": "5m", "valid": True, "comment": "old mailbox", "auth": "password"}
        assert rows["sales-pop"]["port"] == 1995 and rows["sales-pop"]["valid"] is False
        assert rows["cloud"]["auth"] == "oauth2"
        assert legacy["status"] == "unknown" and legacy["last_poll"] is None
        for argv in (["accounts", "list", "--json"], ["accounts", "list"]):
            assert main(["--config", str(conf), *argv]) == 0
            out = capsys.readouterr().out
            assert "legacy" in out
            assert "s3cret" not in out

    def test_search(self, make_confdir):
        """Search matches host, login, folder, comment and shown flags, case-insensitively."""
        cfg = load_config(make_confdir({"50-accounts.toml": ACCOUNTS}))

        def names(text: str) -> list[str]:
            return [r["name"] for r in inventory.list_accounts(cfg, text=text)]

        assert names("OFFICE365") == ["cloud"]
        assert names("support/in") == ["legacy"]
        assert names("OLD MAIL") == ["legacy"]
        assert names("pop3s") == ["sales-pop"]
        assert names("imaps") == ["legacy", "cloud"]
        assert names("oauth2") == ["cloud"]
        assert names("s3cret") == []

    def test_status_from_connections_of_last_day(self, make_confdir, store):
        """ok / intermittent / permanent come from the account's Connection objects in 24 h."""
        cfg = load_config(make_confdir({"50-accounts.toml": ACCOUNTS}))
        engine = store(cfg)
        with engine.begin() as conn:
            _poll(conn, "IMAPS", "legacy", ["Successful"], NOW - timedelta(hours=3))
            _poll(conn, "IMAPS", "legacy", ["Successful"], NOW - timedelta(hours=1))
            _poll(conn, "POP3S", "sales-pop", ["Failed"], NOW - timedelta(hours=2))
            _poll(conn, "POP3S", "sales-pop", ["Successful"], NOW - timedelta(minutes=5))
            _poll(conn, "IMAPS", "cloud", ["Successful"], NOW - timedelta(hours=30))
            _poll(conn, "IMAPS", "cloud", ["Failed"], NOW - timedelta(hours=2))
            _poll(conn, "IMAPS", "cloud", ["Failed"], NOW - timedelta(minutes=10))
        with engine.connect() as conn:
            rows = {r["name"]: r for r in inventory.list_accounts(cfg, conn, now=NOW)}
        assert rows["legacy"]["status"] == "ok"
        assert rows["sales-pop"]["status"] == "intermittent connection errors"
        assert rows["cloud"]["status"] == "permanent connection errors"
        assert (rows["cloud"]["connections_ok"], rows["cloud"]["connections_failed"]) == (0, 2)

    def test_last_poll_is_newest_communication(self, make_confdir, store):
        """last_poll/last_result come from the account's newest communication."""
        cfg = load_config(make_confdir({"50-accounts.toml": ACCOUNTS}))
        engine = store(cfg)
        with engine.begin() as conn:
            _poll(conn, "IMAPS", "legacy", ["Successful"], NOW - timedelta(hours=2))
            _poll(conn, "IMAPS", "legacy", ["Failed"], NOW - timedelta(minutes=7))
        with engine.connect() as conn:
            row = inventory.list_accounts(cfg, conn, now=NOW)[0]
        assert row["last_poll"] == NOW - timedelta(minutes=7)
        assert row["last_result"] == "Failed"
        assert row["status"] == "intermittent connection errors"

    def test_other_doors_with_same_name_are_ignored(self, make_confdir, store):
        """An LMTP peer or another account type named like an account does not count."""
        cfg = load_config(make_confdir({"50-accounts.toml": ACCOUNTS}))
        engine = store(cfg)
        with engine.begin() as conn:
            _poll(conn, "LMTP", "legacy", ["Failed"], NOW - timedelta(minutes=1))
            _poll(conn, "POP3S", "legacy", ["Failed"], NOW - timedelta(minutes=1))
            _poll(conn, "imaps", "legacy", ["Successful"], NOW - timedelta(minutes=30))
        with engine.connect() as conn:
            row = inventory.list_accounts(cfg, conn, now=NOW)[0]
        assert row["status"] == "ok"
        assert row["last_result"] == "Successful"

    def test_status_is_searchable(self, make_confdir, store):
        """The search also looks at the status column."""
        cfg = load_config(make_confdir({"50-accounts.toml": ACCOUNTS}))
        engine = store(cfg)
        with engine.begin() as conn:
            _poll(conn, "IMAPS", "cloud", ["Failed"], NOW - timedelta(minutes=10))
        with engine.connect() as conn:
            rows = inventory.list_accounts(cfg, conn, text="PERMANENT", now=NOW)
        assert [r["name"] for r in rows] == ["cloud"]

    @pytest.mark.postgres
    def test_status_on_postgresql(self, make_confdir, pg_url):
        """The health query runs on PostgreSQL too."""
        cfg = load_config(make_confdir({"50-accounts.toml": ACCOUNTS}))
        from gateway.store.db import make_engine, migrate

        engine = make_engine(pg_url)
        try:
            migrate(engine)
            with engine.begin() as conn:
                repo.sync_config(conn, cfg)
                _poll(conn, "IMAPS", "legacy", ["Failed"], NOW - timedelta(hours=2))
                _poll(conn, "IMAPS", "legacy", ["Successful"], NOW - timedelta(hours=1))
                conn.execute(insert(Ticket).values(number="1", queue="Support", state="new",
                                                   state_type="new", priority="3 normal",
                                                   created=NOW, changed=NOW))
            with engine.connect() as conn:
                row = inventory.list_accounts(cfg, conn, now=NOW)[0]
                queues = {r["name"]: r for r in inventory.list_queues(cfg, conn)}
        finally:
            engine.dispose()
        assert row["status"] == "intermittent connection errors"
        assert row["last_result"] == "Successful"
        assert row["last_poll"] == NOW - timedelta(hours=1)
        assert queues["Support"]["open_tickets"] == 1


class TestFilters:
    def test_evaluation_order_and_fields(self, make_confdir):
        """Filters come in name order with file, stop flag, conditions and settings."""
        cfg = load_config(make_confdir(policies=POLICIES))
        rows = inventory.list_filters(cfg)
        assert [(r["order"], r["name"]) for r in rows] == [(1, "010-spam"), (2, "020-vip")]
        spam, vip = rows
        assert spam["source"].endswith("010-spam.toml")
        assert spam["stop_after_match"] is True and vip["stop_after_match"] is False
        assert spam["conditions"] == [
            "X-Spam-Flag ~ ^yes$", r"To !~ support@example\.org",
            "any of: Subject ~ viagra | Body ~ casino"]
        assert vip["conditions"] == [r"From =~ boss@customer\.test"]
        assert spam["settings"] == {"X-Deskgate-Queue": "Junk"}
        assert vip["comment"] == "the big customer"

    def test_search(self, make_confdir):
        """Search matches name, file, conditions, settings and comment."""
        cfg = load_config(make_confdir(policies=POLICIES))

        def names(text: str) -> list[str]:
            return [r["name"] for r in inventory.list_filters(cfg, text=text)]

        assert names("CASINO") == ["010-spam"]
        assert names("very high") == ["020-vip"]
        assert names("x-deskgate-queue=junk") == ["010-spam"]
        assert names("020-vip.toml") == ["020-vip"]
        assert names("BIG CUSTOMER") == ["020-vip"]
        assert names("x-spam") == ["010-spam"]
        assert names("010-spam.toml") == ["010-spam"]

    def test_cli(self, make_confdir, capsys):
        """`filters list` prints both views; the JSON keeps the raw conditions."""
        conf = make_confdir(policies=POLICIES)
        rows = cli_json(conf, "filters", "list", "--search", "vip", capsys=capsys)
        assert [r["match"] for r in rows] == [[{"header": "From",
                                               "email": r"boss@customer\.test"}]]
        assert main(["--config", str(conf), "filters", "list"]) == 0
        out = capsys.readouterr().out
        assert "1. 010-spam  (stop after match)" in out
        assert "any:   Body ~ casino" in out
        assert "set:   X-Deskgate-Priority = 5 very high" in out
