"""`deskgate filter test`: explains filters and routing, stores nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from gateway.cli import main
from gateway.store.tables import CommEntry
from tests.integration.policy.conftest import deliver, ticket, ticket_count
from tests.unit.policy.mails import dsn, mail

POLICY = r"""
[[filter]]
name = "010-noc"
match = [{ header = "From", email = "monitor@noc\\.customer\\.test" },
         { header = "Body", value = "host:\\s*(?P<host>\\S+)" }]
set = { "X-Deskgate-Queue" = "Sales", "X-Deskgate-DynamicField-Host" = "[**\\host**]" }

[[filter]]
name = "020-never"
match = [{ header = "Subject", value = "^zzz$" }, { header = "X-Spam-Flag", value = "yes" }]
set = { "X-Deskgate-Queue" = "Junk" }
"""


def run_cli(confdir, *args, capsys):
    rc = main(["--config", str(confdir), "filter", "test", *args])
    out = capsys.readouterr().out
    return rc, out


class TestFilterTestCli:
    def test_text_report_without_database(self, make_confdir, tmp_path, capsys):
        """Without a database the report explains every condition and says so."""
        conf = make_confdir(policies={"10.toml": POLICY})
        msg = tmp_path / "m.eml"
        msg.write_bytes(mail("disk alert", frm="monitor@noc.customer.test",
                             body="host: db1.customer.test\nload 12\n"))
        rc, out = run_cli(conf, str(msg), capsys=capsys)
        assert rc == 0
        assert "010-noc: MATCHED" in out
        assert "set X-Deskgate-DynamicField-Host = 'db1.customer.test'" in out
        assert "020-never: no match" in out
        assert "- match[0] Subject value '^zzz$': no match in Subject 'disk alert'" in out
        assert "X-Spam-Flag is missing or empty" in out
        assert "database: no database" in out
        assert "decision: new ticket in queue Sales" in out
        assert not (conf.parent / "var" / "deskgate.db").exists()

    def test_json_followup_with_database_stores_nothing(self, gateway_for, tmp_path, capsys):
        """With a database the follow-up target is shown; nothing is written."""
        gw = gateway_for({"10.toml": POLICY})
        n = deliver(gw, mail("printer")).ticket_number
        before = ticket_count(gw)
        msg = tmp_path / "reply.eml"
        msg.write_bytes(mail(f"Re: [Ticket#{n}] printer"))
        rc, out = run_cli(gw.config.conf_dir, str(msg), "--json", capsys=capsys)
        assert rc == 0
        report = json.loads(out)
        assert report["database"] == "ok"
        assert report["decision"]["action"] == "followup"
        assert report["decision"]["ticket"] == n
        assert report["decision"]["how"] == "subject"
        assert [f["name"] for f in report["filters"]] == ["010-noc", "020-never"]
        assert report["filters"][0]["conditions"][0]["held"] is False
        assert [(h["kind"], h["name"], h["hit"]) for h in report["hits"]] == [
            ("filter", "010-noc", False), ("filter", "020-never", False),
            ("loop", "", False), ("bounce", "", False)]
        assert ticket_count(gw) == before

    def test_trusted_flag_and_ignore(self, make_confdir, tmp_path, capsys):
        """--trusted keeps X-headers (Ignore shows as the decision); untrusted strips them."""
        conf = make_confdir()
        msg = tmp_path / "m.eml"
        msg.write_bytes(mail("x", headers=[("X-OTOBO-Ignore", "yes")]))
        _rc, out = run_cli(conf, str(msg), "--json", "--trusted", capsys=capsys)
        assert json.loads(out)["decision"]["action"] == "ignore"
        _rc, out = run_cli(conf, str(msg), "--json", capsys=capsys)
        report = json.loads(out)
        assert report["decision"]["action"] == "new"
        assert report["stripped_x_headers"] == 1

    def test_check_reports_bad_regex(self, make_confdir, capsys):
        """`deskgate check` names file, filter and condition of a broken pattern."""
        conf = make_confdir(policies={"20-bad.toml": POLICY.replace("(?P<host>", "(?P<host")})
        rc = main(["--config", str(conf), "check"])
        err = capsys.readouterr().err
        assert rc == 1
        assert "20-bad.toml: filter[010-noc].match[1].value: invalid regular expression" in err

    def test_account_trust_and_dispatch(self, make_confdir, tmp_path, capsys):
        """--account applies the account's trusted flag and dispatch queue."""
        conf = make_confdir({"60-acc.toml": """
            [[account]]
            name = "legacy"
            type = "imaps"
            host = "imap.example.org"
            login = "helpdesk"
            password = "x"
            trusted = true
            dispatch = "queue"
            queue = "Sales"
            """})
        msg = tmp_path / "m.eml"
        msg.write_bytes(mail("x", headers=[("X-Deskgate-Priority", "4 high")]))
        _rc, out = run_cli(conf, str(msg), "--json", "--account", "legacy", capsys=capsys)
        report = json.loads(out)
        assert report["trusted"] is True and report["params"] == {"Priority": "4 high"}
        assert report["decision"]["queue"] == "Sales"
        rc, _out = run_cli(conf, str(msg), "--account", "nope", capsys=capsys)
        assert rc == 65


class TestFilterTestDatabaseBusy:
    def test_held_lock_gives_an_answer_not_a_hang(self, make_confdir, pg_url, tmp_path,
                                                   capsys):
        """A table locked by another session (an admin's ALTER, a stuck node): `filter
        test` still reports, within the lock timeout, and says the database is busy."""
        import threading

        from sqlalchemy import create_engine, text

        from gateway.store.db import make_engine, migrate
        from tests.integration.core.stored import db_conf

        eng = make_engine(pg_url)
        migrate(eng)
        eng.dispose()
        conf = make_confdir(db_conf(pg_url), policies={"10.toml": POLICY})
        msg = tmp_path / "m.eml"
        msg.write_bytes(mail("Re: [Ticket#2026010110000001] printer"))
        admin = create_engine(pg_url)
        holder = admin.connect()
        holder.execute(text("LOCK TABLE ticket IN ACCESS EXCLUSIVE MODE"))
        got: list[tuple[int, str]] = []
        t = threading.Thread(target=lambda: got.append(
            run_cli(conf, str(msg), "--json", capsys=capsys)), daemon=True)
        try:
            t.start()
            t.join(30)          # deskgate's default lock timeout on PostgreSQL: 10 s
        finally:
            holder.rollback()
            holder.close()
            admin.dispose()
        t.join(15)
        assert got, "filter test did not answer while the table was locked"
        rc, out = got[0]
        report = json.loads(out)
        assert rc == 0 and report["database"].startswith("database busy")
        assert report["decision"]["action"] == "new"
        assert any("follow-up" in n for n in report["decision"]["notes"])


class TestFilterTestAgreesWithDelivery:
    SLOW = "\n".join(f"""
[[filter]]
name = "{i:03d}-slow"
match = [{{ header = "Subject", value = "^zzz$" }}, {{ header = "Subject", value = "(a|aa)+$" }}]
set = {{ "X-Deskgate-Queue" = "Junk" }}
""" for i in range(8)) + """
[[filter]]
name = "900-printer"
match = [{ header = "Body", value = "printer.*jammed" }]
set = { "X-Deskgate-Queue" = "Sales" }
"""

    def test_conditions_the_delivery_skips_cost_filter_test_no_budget(self, gateway_for,
                                                                      tmp_path, capsys):
        """`filter test` evaluates conditions a delivery skips (after one that failed) to
        explain them; their time does not count against the message's filter budget, so
        a later filter matches in the report exactly when it matches in the delivery."""
        conf = {"60-pm.toml": "[postmaster]\nfilter_timeout = \"20ms\"\n"}
        gw = gateway_for({"10.toml": self.SLOW}, conf=conf)
        raw = mail("a" * 40 + "!", body="the printer is jammed again\n")
        msg = tmp_path / "m.eml"
        msg.write_bytes(raw)
        _rc, out = run_cli(gw.config.conf_dir, str(msg), "--json", capsys=capsys)
        report = json.loads(out)
        delivered = ticket(gw, deliver(gw, raw).ticket_number)
        assert delivered["queue"] == "Sales"
        assert report["params"].get("Queue") == "Sales"
        assert [f["name"] for f in report["filters"] if f["matched"]] == ["900-printer"]
        skipped = [c for f in report["filters"][:8] for c in f["conditions"][1:]]
        assert all(c["timed_out"] and c["used"] is False for c in skipped)
        assert "not reached on delivery" in skipped[0]["reason"]
        assert not [e for e in report["log"] if e["priority"] == "Warn"]

    AGREE = r"""
[[filter]]
name = "010-encoded"
match = [{ header = "subject", value = "störung" }]
set = { "X-Deskgate-Queue" = "Sales", "X-Marker" = "st" }

[[filter]]
name = "020-tag"
match = [{ header = "X-Tag", value = "^beta$" }, { header = "x-marker", value = "st" }]
set = { "X-OTOBO-Priority" = "4 high" }

[[filter]]
name = "030-boss"
match = [{ header = "From", email = "boss@example\\.org" }]
set = { "X-Deskgate-Queue" = "Junk" }

[[filter]]
name = "040-queue-seen"
match = [{ header = "X-OTRS-Queue", value = "^sales$" }]
any = [{ header = "Body", value = "zzz" }, { header = "Body", value = "(?P<w>jammed)" }]
set = { "X-Deskgate-DynamicField-Word" = "[**\\w**]" }
"""

    @pytest.mark.parametrize("raw", [
        mail("=?utf-8?b?U3TDtnJ1bmc=?= im Netz", headers=[("X-Tag", "alpha"), ("X-Tag", "beta")]),
        mail("=?utf-8?q?St=C3=B6rung?=", frm="=?utf-8?q?boss=40example.org?= <m@evil.test>",
             headers=[("Precedence", "bulk")]),
        mail("Störung", headers=[("X-OTOBO-Queue", "Junk"), ("List-Id", "<l.customer.test>")]),
        dsn("<never@example.org>"),
    ], ids=["encoded-repeated", "encoded-from-loop", "untrusted-x-header", "dsn"])
    def test_same_hits_params_and_queue_as_delivery(self, gateway_for, tmp_path, capsys, raw):
        """filter test reports the filter, loop and bounce hits, the X-header values and the
        queue that the delivery of the same message has."""
        gw = gateway_for({"10.toml": self.AGREE})
        msg = tmp_path / "m.eml"
        msg.write_bytes(raw)
        _rc, out = run_cli(gw.config.conf_dir, str(msg), "--json", "-r",
                           "support@example.org", capsys=capsys)
        report = json.loads(out)
        outcome = deliver(gw, raw)
        t = ticket(gw, outcome.ticket_number)
        keys = ("Filter", "Loop", "Bounce", "UntrustedHeaders")
        with gw.engine.connect() as conn:
            logged = [(e.priority, e.key, e.value) for e in conn.execute(
                select(CommEntry).where(CommEntry.key.in_(keys)).order_by(CommEntry.id))]
        assert logged == [(e["priority"], e["key"], e["value"]) for e in report["log"]
                          if e["key"] in keys]
        assert logged                   # every one of these messages hits something
        assert report["decision"]["queue"] == t["queue"]
        assert report["params"].get("Priority", "3 normal") == t["priority"]
        assert {k.removeprefix("DynamicField-"): v for k, v in report["params"].items()
                if k.startswith("DynamicField-")} == t["dynamic_fields"]
        assert report["loop"] is t["articles"][0]["loop"]
