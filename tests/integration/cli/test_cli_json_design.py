"""The JSON of the read commands, as the product design fixes it for the tools that read
it: the field names of `tickets list|show`, `log list|show|overview` and `outqueue
list`, and times that say they are UTC whatever the database, run as real `deskgate`
processes on SQLite (which hands times back without an offset)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cli.test_cli_contract import cli

MAIL = (b"From: Alice <alice@customer.test>\nTo: support@example.org\n"
        b"Cc: bob@customer.test\nSubject: printer\nMessage-ID: <json1@customer.test>\n"
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"
        b"--b\nContent-Type: text/plain\n\nThe printer is broken.\n"
        b"--b\nContent-Type: text/plain; name=\"log.txt\"\n"
        b"Content-Disposition: attachment; filename=\"log.txt\"\n\npaper jam\n--b--\n")
REPLY = (b"From: support@example.org\nTo: alice@customer.test\nSubject: Re: printer\n\n"
         b"We are on it.\n")
ACCOUNT = """
    [[account]]
    name = "legacy"
    type = "imaps"
    host = "127.0.0.1"
    port = {port}
    login = "helpdesk"
    password = "secret"
    """

ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")


def run_json(conf: Path, *args: str, stdin: bytes = b"", rc: int = 0) -> Any:
    r = cli(conf, *args, "--json", stdin=stdin)
    assert r.returncode == rc, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


@pytest.fixture
def state(make_confdir) -> tuple[Path, str]:
    """A conf.d with one (unreachable) account, a delivered ticket with an attachment,
    a reply queued for it, the ticket moved, and one failed poll run."""
    from tests.peers.ports import free_port

    conf = make_confdir({"60-account.toml": ACCOUNT.format(port=free_port())})
    (conf / "60-account.toml").chmod(0o600)
    assert cli(conf, "db", "upgrade").returncode == 0
    number = run_json(conf, "deliver", stdin=MAIL)["ticket"]
    run_json(conf, "send", "--queue", "Support", stdin=REPLY)
    run_json(conf, "tickets", "move", number, "Sales")
    run_json(conf, "fetch", "legacy", rc=75)
    return conf, number


def _times(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(where, text) of every string in value that reads as an ISO 8601 time."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [t for i, v in enumerate(value) for t in _times(v, f"{path}[{i}]")]
    if isinstance(value, str) and ISO_TIME.match(value):
        return [(path, value)]
    return []


class TestDesignFieldNames:
    def test_tickets(self, state):
        """tickets list and show have at least the fields the design names."""
        conf, number = state
        listed = run_json(conf, "tickets", "list")
        assert listed and all({"number", "title", "queue", "state", "priority", "created"}
                              <= set(t) for t in listed), listed
        shown = run_json(conf, "tickets", "show", number)
        assert {"number", "title", "queue", "state", "priority", "type", "customer_no",
                "customer_user", "owner", "dynamic_fields", "articles",
                "helpdesk"} <= set(shown), sorted(shown)
        assert isinstance(shown["dynamic_fields"], dict)
        first = shown["articles"][0]
        assert {"message_id", "direction", "sender_type", "from", "to", "cc", "subject",
                "body", "attachments", "crypto"} <= set(first), sorted(first)
        assert first["cc"] == "bob@customer.test"
        assert first["attachments"] == [
            {"filename": "log.txt", "content_type": "text/plain", "size": len(b"paper jam")}]
        assert {"encrypted", "decrypted", "signed", "signature_valid",
                "signer"} <= set(first["crypto"])

    def test_log_and_outqueue(self, state):
        """log list/show/overview and outqueue list have the design's fields."""
        conf, _ = state
        comms = run_json(conf, "log", "list")
        keys = {"id", "direction", "status", "account_type", "account", "start", "end"}
        assert comms and all(keys <= set(c) for c in comms), comms
        one = run_json(conf, "log", "show", str(comms[0]["id"]))
        assert keys | {"objects"} <= set(one)
        assert one["objects"] and all(
            {"type", "status", "start", "end", "entries"} <= set(o) for o in one["objects"])
        assert all({"priority", "key", "value", "time"} <= set(e)
                   for o in one["objects"] for e in o["entries"])
        overview = run_json(conf, "log", "overview")
        assert {"accounts", "failed", "processing", "average_processing_seconds"} <= set(
            overview)
        assert overview["accounts"] and all(
            {"account_type", "account", "status"} <= set(a) for a in overview["accounts"])
        queued = run_json(conf, "outqueue", "list")
        assert queued and all({"id", "queue", "sender", "recipients", "attempts",
                               "next_attempt", "last_error"} <= set(m) for m in queued)


class TestTimesAreUtc:
    def test_every_time_carries_its_offset(self, state):
        """Every time in the JSON of tickets list/show, fetch --status, log and
        outqueue has an offset (+00:00), on SQLite as on PostgreSQL; tickets and
        fetch --status gave SQLite's times without one (`2026-12-06T08:49:05`), so the
        same field read as local time or UTC depending on the database."""
        conf, number = state
        outputs = {
            "tickets list": run_json(conf, "tickets", "list"),
            "tickets show": run_json(conf, "tickets", "show", number),
            "fetch --status": run_json(conf, "fetch", "--status"),
            "log list": run_json(conf, "log", "list"),
            "outqueue list": run_json(conf, "outqueue", "list"),
        }
        for command, out in outputs.items():
            times = _times(out)
            assert times, (command, out)
            for where, text in times:
                offset = datetime.fromisoformat(text).utcoffset()
                assert offset == timedelta(0), f"{command}: {where} = {text!r}"
        shown = outputs["tickets show"]
        assert shown["moves"] and shown["moves"][0]["created"].endswith("+00:00")
        assert outputs["fetch --status"][0]["last_start"].endswith("+00:00")
