"""A system address removed from conf.d stays in the database as invalid (sync_config):
every door that decides per recipient treats it as an invalid address (550 5.2.1),
not as a stranger (550 5.1.1, or the default queue)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway import errors, testing
from gateway.config import AddressConfig, LmtpConfig, load_config
from gateway.inbound.backend import InboundBackend
from gateway.inbound.route import route
from gateway.runtime import Runtime, build_runtime
from gateway.store import repo
from gateway.store.tables import SystemAddress
from tests.peers.lmtp import LmtpClient

RETIRING = '[[address]]\nemail = "retiring@example.org"\nqueue = "Support"\n'


def backend(rt: Runtime) -> InboundBackend:
    # rcpt_status reads only the runtime: no pipeline, no writer
    return InboundBackend(lambda: rt, None, None)  # type: ignore[arg-type]


def rt_with(*, retired: frozenset[str], unknown: str = "reject") -> Runtime:
    cfg = dataclasses.replace(testing.config(),
                              lmtp=LmtpConfig(unknown_recipient=unknown))  # type: ignore[arg-type]
    return dataclasses.replace(testing.runtime(cfg), retired=retired)


class TestRcptStatus:
    @pytest.mark.parametrize("unknown", ["reject", "default-queue"])
    def test_retired_address_is_invalid(self, unknown):
        """An address the database knows and conf.d no longer has answers 550 5.2.1,
        whatever unknown_recipient says."""
        b = backend(rt_with(retired=frozenset({"gone@example.org"}), unknown=unknown))
        assert b.rcpt_status("gone@example.org") == errors.RCPT_INVALID
        assert b.rcpt_status("Gone@Example.ORG") == errors.RCPT_INVALID

    @pytest.mark.parametrize(("unknown", "reply"), [("reject", errors.RCPT_UNKNOWN),
                                                    ("default-queue", errors.RCPT_OK)])
    def test_a_stranger_stays_unknown(self, unknown, reply):
        """An address the database never knew is unknown as before."""
        b = backend(rt_with(retired=frozenset({"gone@example.org"}), unknown=unknown))
        assert b.rcpt_status("never@example.org") == reply

    def test_the_configuration_wins(self):
        """An address in conf.d answers as conf.d says, even when listed as retired."""
        b = backend(rt_with(retired=frozenset({"support@example.org"})))
        assert b.rcpt_status("support@example.org") == errors.RCPT_OK


class TestRetiredAddresses:
    def test_removed_then_put_back(self):
        """Removed from the files: retired (and invalid in the database); put back:
        valid again and no longer retired."""
        store = testing.FakeStore()
        extra = AddressConfig(email="retiring@example.org", queue="Support")
        with_it = testing.config(addresses=(
            AddressConfig(email="support@example.org", queue="Support"), extra))
        without = testing.config()
        steps = [(with_it, frozenset(), "valid"),
                 (without, frozenset({"retiring@example.org"}), "invalid"),
                 (with_it, frozenset(), "valid")]
        for cfg, retired, valid in steps:
            with store.transaction() as (conn, _later):
                repo.sync_config(conn, cfg)
                assert repo.retired_addresses(conn, cfg) == retired
            rows = {r.email: r.valid for r in store.rows(SystemAddress)}
            assert rows["retiring@example.org"] == valid
        store.close()

    def test_before_the_synchronisation(self):
        """Read before sync_config wrote the new configuration (a reload builds the
        runtime first): the address just removed counts already."""
        store = testing.FakeStore()
        with store.transaction() as (conn, _later):
            repo.sync_config(conn, testing.config(addresses=(
                AddressConfig(email="support@example.org", queue="Support"),
                AddressConfig(email="retiring@example.org", queue="Support"))))
            assert repo.retired_addresses(conn, testing.config()) == {"retiring@example.org"}
        store.close()


class TestRuntime:
    def test_built_with_the_retired_addresses(self, make_confdir):
        """build_runtime (start and every reload, in each process) reads them."""
        from gateway.app import Gateway

        conf = make_confdir({"60-retiring.toml": RETIRING})
        gw = Gateway(load_config(conf))
        gw.prepare_store()
        gw.close()
        assert build_runtime(load_config(conf)).retired == frozenset()
        (conf / "60-retiring.toml").unlink()
        assert build_runtime(load_config(conf)).retired == {"retiring@example.org"}

    def test_no_database_yet(self, make_confdir):
        """Before the first start there is no SQLite file: none retired, none created."""
        cfg = load_config(make_confdir())
        db = Path(cfg.database_url.split("///", 1)[1])
        assert not db.exists()
        assert build_runtime(cfg).retired == frozenset()
        assert not db.exists()

    def test_unreadable_database_is_logged(self, make_confdir):
        """A database that cannot be read leaves the set empty (the addresses answer as
        unknown until the next reload) and says so, instead of failing the load."""
        from structlog.testing import capture_logs

        cfg = load_config(make_confdir())
        db = Path(cfg.database_url.split("///", 1)[1])
        db.parent.mkdir(parents=True, exist_ok=True)
        db.write_bytes(b"not a database\n" * 512)
        with capture_logs() as logs:
            assert build_runtime(cfg).retired == frozenset()
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "retired system addresses not read; they answer as unknown until a reload"]


class TestReload:
    @pytest.mark.parametrize("unknown", ["reject", "default-queue"])
    def test_removed_address_is_refused_after_reload(self, make_confdir, run_gateway,
                                                     unknown):
        """Removed from conf.d and reloaded: RCPT answers 550 5.2.1 (it was 550 5.1.1,
        or accepted into the default queue); put back and reloaded: 250 again."""
        conf = make_confdir({"50-lmtp.toml": f'[lmtp]\nunknown_recipient = "{unknown}"\n',
                             "60-retiring.toml": RETIRING})
        rg = run_gateway(load_config(conf))

        def rcpt() -> tuple[int, str]:
            c = LmtpClient(rg.socket_path)
            c.lhlo()
            c.cmd("MAIL FROM:<a@c.test>")
            code, text = c.cmd("RCPT TO:<retiring@example.org>")
            c.close()
            return code, text[:5]

        assert rcpt() == (250, "2.1.5")
        (conf / "60-retiring.toml").unlink()
        assert rg.call(rg.gateway.reload()) is True
        assert rcpt() == (550, "5.2.1")
        (conf / "60-retiring.toml").write_text(RETIRING)
        assert rg.call(rg.gateway.reload()) is True
        assert rcpt() == (250, "2.1.5")


class TestPollerDispatchTo:
    MAIL = (b"From: carla@customer.test\r\nTo: {to}\r\nCc: support@example.org\r\n"
            b"Subject: s\r\nMessage-ID: <r1@customer.test>\r\n\r\nbody\r\n")

    def test_retired_address_in_to_routes_as_an_invalid_one(self):
        """Fetched mail cannot be refused: a retired address in To is passed over as an
        invalid one is, and the next system address (or the default queue) decides."""
        queues = [testing.config().queue[0], testing.config().queue[1]]
        invalid = testing.config(queues=queues, addresses=(
            AddressConfig(email="support@example.org", queue="Support"),
            AddressConfig(email="gone@example.org", queue="Raw", valid="invalid")))
        retired = dataclasses.replace(testing.runtime(), retired=frozenset({"gone@example.org"}))
        decided = []
        for rt in (testing.runtime(invalid), retired):
            ctx = testing.context(self.MAIL.replace(b"{to}", b"gone@example.org"),
                                  recipients=("account:imap",))
            route(ctx, rt)
            decided.append(ctx.queue)
        assert decided == ["Support", "Support"]
