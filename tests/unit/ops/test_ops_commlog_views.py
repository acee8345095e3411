"""The read side of the communication log: list filters, search, sort, paging,
detail, overview and the OTOBO status cases, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway import commlog_views as views
from gateway.commlog import Comm
from gateway.store.tables import Communication
from tests.unit.ops.ops_logdata import NOW, ago, obj


def ids(engine, **kw):
    with engine.connect() as conn:
        return [r["id"] for r in views.list_communications(conn, views.LogFilter(**kw))]


class TestPriorityFilter:
    def test_priorities_at_least(self):
        """'Warn' means Warn and Error; 'Debug' means every priority (OTOBO semantics)."""
        assert views.priorities_at_least("Error") == ("Error",)
        assert views.priorities_at_least("warn") == ("Error", "Warn")
        assert views.priorities_at_least("Debug") == views.PRIORITIES
        with pytest.raises(ValueError, match="not one of"):
            views.priorities_at_least("Fatal")

    def test_error_shows_only_errors_warn_adds_warnings(self, log_engine, add_comm):
        """Error → only communications with an Error entry; Warn → Warn or Error; Info → ≥ Info."""
        e = add_comm(None, obj("Message", "Failed", ("Error", "Store", "boom")))
        w = add_comm(None, obj("Message", "Successful", ("Warn", "MIME", "odd")))
        i = add_comm(None, obj("Message", "Successful", ("Info", "Envelope", "from <a@b>")))
        d = add_comm(None, obj("Message", "Successful", ("Debug", "Trace", "x")))
        assert ids(log_engine, priority="Error") == [e]
        assert sorted(ids(log_engine, priority="Warn")) == [e, w]
        assert sorted(ids(log_engine, priority="Info")) == [e, w, i]
        assert sorted(ids(log_engine, priority="Debug")) == [e, w, i, d]
        assert sorted(ids(log_engine)) == [e, w, i, d]

    def test_detail_priority_limits_entries(self, log_engine, add_comm):
        """`log show --priority Warn` keeps the Warn and Error entries of each object."""
        cid = add_comm(None, obj("Message", "Failed", ("Info", "A", "1"), ("Warn", "B", "2"),
                                 ("Error", "C", "3"), ("Debug", "D", "4")))
        with log_engine.connect() as conn:
            full = views.get_communication(conn, cid)
            warn = views.get_communication(conn, cid, priority="Warn")
        assert [e["key"] for e in full["objects"][0]["entries"]] == ["A", "B", "C", "D"]
        assert [e["key"] for e in warn["objects"][0]["entries"]] == ["B", "C"]


class TestSearch:
    @pytest.mark.both_dbs
    def test_search_matches_entry_values_case_insensitively(self, log_engine, add_comm):
        """Free text finds a communication by any entry's value, ignoring case."""
        a = add_comm(None, obj("Message", "Successful", ("Info", "Envelope",
                                                          "from <Alice@Customer.test>")))
        add_comm(None, obj("Message", "Successful", ("Info", "Envelope", "from <bob@x.test>")))
        assert ids(log_engine, search="alice@customer") == [a]
        assert ids(log_engine, search="ALICE") == [a]
        assert ids(log_engine, search="nobody") == []

    def test_search_matches_keys_and_account(self, log_engine, add_comm):
        """Free text also matches an entry's key and the account name."""
        a = add_comm(None, obj("Connection", "Failed", ("Error", "TLSHandshake", "x")),
                     account_type="IMAPS", account="legacy")
        b = add_comm(None, obj("Message", "Successful"), account_type="POP3S",
                     account="sales-box")
        assert ids(log_engine, search="tlshandshake") == [a]
        assert ids(log_engine, search="sales-b") == [b]

    @pytest.mark.both_dbs
    def test_like_wildcards_are_literal(self, log_engine, add_comm):
        """'%' and '_' in the search text match only themselves."""
        a = add_comm(None, obj("Message", "Successful", ("Info", "Size", "100% full")))
        add_comm(None, obj("Message", "Successful", ("Info", "Size", "100 bytes")))
        assert ids(log_engine, search="100%") == [a]
        assert ids(log_engine, search="_") == []


class TestListFilters:
    def test_direction_status_account_and_time(self, log_engine, add_comm):
        """Each filter narrows the list; account matches a name or an account type."""
        a = add_comm("Successful", account_type="LMTP", account="unix", start=ago(hours=1))
        b = add_comm("Failed", account_type="IMAPS", account="legacy", start=ago(hours=30))
        c = add_comm("Successful", account_type="SMTP", account="relay", direction="Outgoing",
                     start=ago(days=3))
        assert ids(log_engine, direction="Outgoing") == [c]
        assert ids(log_engine, status="Failed") == [b]
        assert ids(log_engine, account="legacy") == [b]
        assert ids(log_engine, account="imaps") == [b]
        assert ids(log_engine, since=ago(hours=24)) == [a]
        assert ids(log_engine, since=ago(days=4), until=ago(hours=24)) == [b, c]

    @pytest.mark.both_dbs
    def test_sort_by_any_column_and_page(self, log_engine, add_comm):
        """Sorting works on every column (ascending or '-' descending) and pages follow it."""
        x = add_comm("Successful", account="b", start=ago(minutes=3), seconds=5)
        y = add_comm("Failed", account="c", start=ago(minutes=2), seconds=1)
        z = add_comm("Warning", account="a", start=ago(minutes=1), seconds=9)
        assert ids(log_engine) == [z, y, x]                       # default -start
        assert ids(log_engine, sort="start") == [x, y, z]
        assert ids(log_engine, sort="account") == [z, x, y]
        assert ids(log_engine, sort="-account") == [y, x, z]
        assert ids(log_engine, sort="status") == [y, x, z]
        assert ids(log_engine, sort="duration") == [y, x, z]
        assert ids(log_engine, sort="-duration") == [z, x, y]
        for col in views.SORT_COLUMNS:
            assert sorted(ids(log_engine, sort=col)) == [x, y, z]
        assert ids(log_engine, sort="start", limit=2) == [x, y]
        assert ids(log_engine, sort="start", limit=2, offset=2) == [z]
        with log_engine.connect() as conn:
            assert views.count_communications(conn, views.LogFilter(limit=1)) == 3

    def test_invalid_filters_are_refused(self):
        """Unknown sort columns, statuses and priorities raise ValueError."""
        for kw in ({"sort": "bogus"}, {"status": "Done"}, {"priority": "Fatal"},
                   {"direction": "Sideways"}, {"limit": -1}):
            with pytest.raises(ValueError):
                views.LogFilter(**kw).validate()

    def test_list_json_shape(self, log_engine, add_comm):
        """Each list item has exactly the keys of the JSON contract, with UTC times."""
        add_comm("Successful", account="unix")
        with log_engine.connect() as conn:
            (row,) = views.list_communications(conn, views.LogFilter())
        assert set(row) == {"id", "direction", "status", "account_type", "account", "start",
                            "end"}
        assert row["start"] == NOW and row["end"] == NOW + timedelta(seconds=1)
        # the same instants, in UTC (an aware local time would compare equal too)
        assert row["start"].utcoffset() == timedelta(0) == row["end"].utcoffset()


class TestDetail:
    def test_objects_entries_and_links(self, log_engine, add_comm):
        """show returns objects in order with their entries; a missing id gives None."""
        cid = add_comm(None, obj("Connection", "Successful", ("Info", "Connect", "ok")),
                       obj("Message", "Failed", ("Error", "Parse", "bad")),
                       account_type="IMAPS", account="legacy")
        with log_engine.connect() as conn:
            d = views.get_communication(conn, cid)
            assert views.get_communication(conn, cid + 100) is None
        assert d["status"] == "Failed" and d["account"] == "legacy"
        assert [(o["type"], o["status"]) for o in d["objects"]] == [
            ("Connection", "Successful"), ("Message", "Failed")]
        entry = d["objects"][1]["entries"][0]
        assert set(entry) == {"priority", "key", "value", "time"}
        assert (entry["priority"], entry["key"], entry["value"]) == ("Error", "Parse", "bad")
        assert {"type", "status", "start", "end", "entries"} <= set(d["objects"][0])


class TestOtoboCases:
    def test_connection_failure_fails_communication_and_connection(self, log_engine, add_comm):
        """A poll run whose connection fails: connection Failed, communication Failed."""
        comm = Comm("Incoming", "IMAPS", "legacy")
        conn_obj = comm.obj("Connection")
        conn_obj.log("Error", "Connect", "connection refused")
        conn_obj.close("Failed")
        comm.close()
        from gateway.commlog import write_comm
        with log_engine.begin() as conn:
            cid = write_comm(conn, comm)
        with log_engine.connect() as conn:
            d = views.get_communication(conn, cid)
            ov = views.overview(conn, period=3600)
        assert d["status"] == "Failed"
        assert [(o["type"], o["status"]) for o in d["objects"]] == [("Connection", "Failed")]
        assert ov["failed"] == 1
        assert ov["accounts"] == [{"account_type": "IMAPS", "account": "legacy",
                                   "status": views.ACCOUNT_PERMANENT}]

    def test_one_message_fails_others_succeed(self, log_engine):
        """One failing message is Failed on its own object; the others stay Successful."""
        from gateway.commlog import write_comm
        comm = Comm("Incoming", "POP3S", "box")
        comm.obj("Connection").close("Successful")
        for i in range(3):
            m = comm.obj("Message")
            if i == 1:
                m.log("Error", "Store", "database said no")
                m.close("Failed")
            else:
                m.log("Info", "Store", f"article {i}")
                m.close("Successful")
        comm.close()
        with log_engine.begin() as conn:
            cid = write_comm(conn, comm)
        with log_engine.connect() as conn:
            d = views.get_communication(conn, cid)
            errs = views.list_communications(conn, views.LogFilter(priority="Error"))
        msgs = [o["status"] for o in d["objects"] if o["type"] == "Message"]
        assert msgs == ["Successful", "Failed", "Successful"]
        assert d["objects"][0]["status"] == "Successful"
        assert d["status"] == "Failed"
        assert [r["id"] for r in errs] == [cid]


class TestOverview:
    def test_account_status_rules(self):
        """All ok → ok; only failed → permanent; mixed → intermittent."""
        assert views.account_status(["Successful", "Successful"]) == views.ACCOUNT_OK
        assert views.account_status(["Successful", "Warning"]) == views.ACCOUNT_OK
        assert views.account_status(["Failed", "Failed"]) == views.ACCOUNT_PERMANENT
        assert views.account_status(["Failed", "Successful"]) == views.ACCOUNT_INTERMITTENT

    @pytest.mark.both_dbs
    def test_overview_counts_period_processing_and_average(self, log_engine, add_comm):
        """Failures and the average count within the period; processing counts now."""
        now = views.utc(NOW)
        add_comm(None, obj("Connection", "Successful", start=ago(hours=1)),
                 account_type="IMAPS", account="a", start=ago(hours=1), seconds=2)
        add_comm(None, obj("Connection", "Failed", start=ago(hours=2)),
                 account_type="IMAPS", account="b", start=ago(hours=2), seconds=4)
        add_comm(None, obj("Connection", "Successful", start=ago(hours=3)),
                 account_type="IMAPS", account="c", start=ago(hours=3), seconds=6)
        add_comm(None, obj("Connection", "Failed", start=ago(hours=4)),
                 account_type="IMAPS", account="c", start=ago(hours=4), seconds=6)
        add_comm(None, obj("Connection", "Failed", start=ago(hours=40)),
                 account_type="IMAPS", account="a", start=ago(hours=40), seconds=100)
        add_comm("Processing", obj("Message", "Processing"), start=ago(minutes=1))
        with log_engine.connect() as conn:
            ov = views.overview(conn, period=86400, now=now)
            week = views.overview(conn, period=7 * 86400, now=now)
        assert set(ov) == {"accounts", "failed", "processing", "average_processing_seconds"}
        assert {a["account"]: a["status"] for a in ov["accounts"]} == {
            "a": views.ACCOUNT_OK, "b": views.ACCOUNT_PERMANENT,
            "c": views.ACCOUNT_INTERMITTENT}
        assert ov["failed"] == 2
        assert ov["processing"] == 1
        assert ov["average_processing_seconds"] == pytest.approx(4.5, abs=0.01)
        assert week["failed"] == 3
        assert {a["account"]: a["status"] for a in week["accounts"]}["a"] == \
            views.ACCOUNT_INTERMITTENT

    def test_lmtp_connections_are_no_accounts(self, log_engine, add_comm):
        """LMTP Connection objects (one per client connection) count as failures but add no
        account to the overview."""
        now = views.utc(NOW)
        add_comm(None, obj("Connection", "Failed", start=ago(hours=1)),
                 account_type="LMTP", account="127.0.0.1:40000", start=ago(hours=1))
        add_comm(None, obj("Connection", "Successful", start=ago(hours=1)),
                 account_type="IMAPS", account="a", start=ago(hours=1))
        with log_engine.connect() as conn:
            ov = views.overview(conn, period=86400, now=now)
        assert ov["accounts"] == [{"account_type": "IMAPS", "account": "a",
                                   "status": views.ACCOUNT_OK}]
        assert ov["failed"] == 1

    def test_empty_log(self, log_engine):
        """An empty log has no accounts, no failures and no average."""
        with log_engine.connect() as conn:
            assert views.overview(conn) == {"accounts": [], "failed": 0, "processing": 0,
                                            "average_processing_seconds": None}


class TestPurge:
    @pytest.mark.both_dbs
    def test_purge_rules(self, log_engine, add_comm):
        """Successful > 7d go; other statuses stay until 31d; Processing only after 31d."""
        keep_new = add_comm("Successful", obj("Message", "Successful", ("Info", "k", "v")),
                            start=ago(days=6))
        old_ok = add_comm("Successful", obj("Message", "Successful", ("Info", "k", "v")),
                          start=ago(days=8))
        old_fail = add_comm("Failed", obj("Message", "Failed", ("Error", "k", "v")),
                            start=ago(days=8))
        old_warn = add_comm("Warning", start=ago(days=20))
        stuck = add_comm("Processing", obj("Message", "Processing"), start=ago(days=10))
        ancient_fail = add_comm("Failed", obj("Message", "Failed", ("Error", "k", "v")),
                                start=ago(days=32))
        ancient_stuck = add_comm("Processing", start=ago(days=40))
        with log_engine.begin() as conn:
            n = views.purge(conn, successful_after=7 * 86400, all_after=31 * 86400,
                            now=NOW, batch=2)
        assert n == 3
        with log_engine.connect() as conn:
            left = set(conn.execute(select(Communication.id)).scalars())
            assert views.get_communication(conn, old_ok) is None
            from gateway.store.tables import CommEntry, CommObject
            assert not conn.execute(select(CommObject.id).where(
                CommObject.communication_id.in_([old_ok, ancient_fail]))).all()
            assert not conn.execute(select(CommEntry.id).where(
                CommEntry.communication_id.in_([old_ok, ancient_fail]))).all()
        assert left == {keep_new, old_fail, old_warn, stuck}
        assert ancient_stuck not in left
