"""Encrypted mail at hand-off time: the PostMaster pipe gets the decrypted MIME, built by
decrypting the stored message again; a gpg that does not answer then makes the attempt
fail and retry instead of handing over the encrypted form for good. The connectors that
send the stored article (webhook, REST) need no second decryption."""

from __future__ import annotations

import email
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from gateway.config import load_config
from gateway.crypto import pgpkeyring
from gateway.crypto.keystore import stores_for
from gateway.store.tables import CommEntry
from tests.integration.helpdesk.conftest import SECRET, webhook_conf
from tests.integration.helpdesk.test_handoff_webhook import deliver, handoffs, wait_for
from tests.peers.gpg import GpgPeer, kill_agent, short_home
from tests.peers.webhook import WebhookReceiver

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

PLAIN = "The VPN drops every 5 minutes."


@dataclass
class Env:
    conf: Path
    home: Path
    counter: Path        # how many times gpg was asked to decrypt
    hang: Path           # the decrypt calls (by number, space separated) that hang
    nokey: Path          # ... that answer as gpg does without the secret key
    raw: bytes           # a PGP/MIME message encrypted to support@example.org


@pytest.fixture
def env(make_confdir: Callable[..., Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """conf.d with [crypto] whose gpg_binary is a wrapper around the real gpg that
    counts the decrypt calls and hangs on the ones named in a file; the helpdesk's
    secret key imported; a PGP/MIME message to it."""
    monkeypatch.setattr(pgpkeyring, "GPG_TIMEOUT", 2)
    home = short_home("dgh")
    counter, hang, nokey = tmp_path / "decrypts", tmp_path / "hang", tmp_path / "nokey"
    hang.write_text("")
    nokey.write_text("")
    wrapper = tmp_path / "gpg-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do\n'
        '  if [ "$a" = "--decrypt" ]; then\n'
        f'    n=$(( $(cat "{counter}" 2>/dev/null || echo 0) + 1 )); echo $n > "{counter}"\n'
        f'    case " $(cat "{hang}") " in *" $n "*) exec sleep 20;; esac\n'
        f'    case " $(cat "{nokey}") " in *" $n "*)\n'
        "      echo '[GNUPG:] NO_SECKEY 0123456789ABCDEF' >&2\n"
        "      echo 'gpg: decryption failed: No secret key' >&2; exit 2;; esac\n"
        "  fi\n"
        "done\n"
        'exec gpg "$@"\n')
    wrapper.chmod(0o755)
    cust, admin = GpgPeer(), GpgPeer()
    try:
        cust.gen_key("Customer <cust@customer.test>")
        admin.gen_key("Example Support <support@example.org>", passphrase="hd-pass")
        cust.import_(admin.export("support@example.org"))
        conf = make_confdir({"51-crypto.toml": f"""
            [crypto]
            gnupg_home = "{home}"
            gpg_binary = "{wrapper}"
            """})
        stores = stores_for(load_config(conf))
        stores.pgp.import_(admin.export_secret("support@example.org", "hd-pass"), "hd-pass")
        stores.pgp.import_(cust.export("cust@customer.test"))
        inner = (b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + PLAIN.encode() + b"\r\n")
        armored = cust.encrypt(inner, "support@example.org")
        raw = (b"From: Customer <cust@customer.test>\r\nTo: support@example.org\r\n"
               b"Subject: vpn broken\r\nMessage-ID: <pgp1@customer.test>\r\n"
               b"MIME-Version: 1.0\r\nContent-Type: multipart/encrypted; "
               b'protocol="application/pgp-encrypted"; boundary="enc"\r\n\r\n'
               b"--enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
               b"\r\n--enc\r\nContent-Type: application/octet-stream\r\n\r\n"
               + armored.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
               + b"\r\n--enc--\r\n")
        yield Env(conf, home, counter, hang, nokey, raw)
    finally:
        cust.close()
        admin.close()
        kill_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def decrypts(env: Env) -> int:
    return int(env.counter.read_text()) if env.counter.exists() else 0


def entries(rg: RunningGateway) -> list[tuple[str, str, str]]:
    with rg.gateway.engine.connect() as conn:
        return [(r.priority, r.key, r.value) for r in conn.execute(
            select(CommEntry.priority, CommEntry.key, CommEntry.value)
            .order_by(CommEntry.id)).all()]


def pipe_gateway(env: Env, run_gateway: Callable[..., RunningGateway], tmp_path: Path,
                 retry: str) -> tuple[RunningGateway, Path]:
    """A gateway whose PostMaster pipe is a command that keeps each message it reads."""
    out = tmp_path / "piped"
    out.mkdir()
    command = ["sh", "-c", 'cat > "$0/$(date +%s%N).eml"', str(out)]
    (env.conf / "50-helpdesk.toml").write_text(f"""
[helpdesk]
type = "otobo-postmaster"
command = {json.dumps(command)}
retry = "{retry}"
poll_interval = "0.2s"
""")
    return run_gateway(load_config(env.conf)), out


def text_of(mime: bytes) -> bytes:
    payload = email.message_from_bytes(mime).get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def piped(out: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(out.iterdir())]


class TestPipeDecryptsAgain:
    """The PostMaster pipe gets the message decrypted again at hand-off time."""

    def test_gpg_hanging_at_hand_off_is_a_failed_attempt_then_decrypted(
            self, env: Env, run_gateway: Callable[..., RunningGateway],
            tmp_path: Path) -> None:
        """gpg does not answer on the first hand-off attempt: that attempt fails with
        the cause in the communication log and is retried, and the helpdesk gets the
        decrypted message (not the encrypted form) from the second."""
        env.hang.write_text("2")          # 1: the inbound decrypt stage, 2: hand-off
        rg, out = pipe_gateway(env, run_gateway, tmp_path, "1s, 1s, 1s")
        assert deliver(rg, env.raw) == 250
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered", 30), handoffs(rg)
        [h] = handoffs(rg)
        assert h["attempts"] == 2
        [mime] = piped(out)
        assert PLAIN.encode() in mime and b"BEGIN PGP MESSAGE" not in mime
        assert b"X-OTOBO-BodyDecrypted: yes" in mime
        assert decrypts(env) == 3
        assert any(p == "Warn" and k == "Deferred" and "gpg did not answer within 2 s" in v
                   for p, k, v in entries(rg)), entries(rg)

    def test_schedule_run_out_hands_over_the_stored_text_with_the_cause(
            self, env: Env, run_gateway: Callable[..., RunningGateway],
            tmp_path: Path) -> None:
        """gpg never answers at hand-off time: the last attempt of the schedule hands
        over what the store holds (the article's decrypted text as text/plain) rather
        than no ticket at all, and a Notice in the communication log says why."""
        env.hang.write_text("2 3")
        rg, out = pipe_gateway(env, run_gateway, tmp_path, "1s")
        assert deliver(rg, env.raw) == 250
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered", 30), handoffs(rg)
        [h] = handoffs(rg)
        assert h["attempts"] == 2
        [mime] = piped(out)
        assert b"BEGIN PGP MESSAGE" not in mime and b"text/plain" in mime
        assert PLAIN.encode() in text_of(mime)
        log = entries(rg)
        assert any(p == "Warn" and k == "Deferred" and "gpg did not answer" in v
                   for p, k, v in log), log
        assert any(p == "Notice" and k == "Crypto" and "stored text" in v
                   and "retries exhausted" in v and "gpg did not answer within 2 s" in v
                   for p, k, v in log), log

    def test_permanent_failure_hands_over_the_stored_text_at_once(
            self, env: Env, run_gateway: Callable[..., RunningGateway],
            tmp_path: Path) -> None:
        """gpg answers that the helpdesk's secret key is not there (removed since the
        message came in): retrying cannot help, so the first attempt hands over what the
        store holds and says why."""
        env.nokey.write_text("2")
        rg, out = pipe_gateway(env, run_gateway, tmp_path, "1s, 1s, 1s")
        assert deliver(rg, env.raw) == 250
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered", 30), handoffs(rg)
        assert handoffs(rg)[0]["attempts"] == 1
        [mime] = piped(out)
        assert b"BEGIN PGP MESSAGE" not in mime and b"text/plain" in mime
        assert PLAIN.encode() in text_of(mime)
        assert any(p == "Notice" and k == "Crypto" and "permanent error" in v
                   and "no secret key" in v for p, k, v in entries(rg)), entries(rg)


class TestArticleConnectorsNeedNoSecondDecryption:
    """The webhook sends the stored article, which already holds the decrypted body."""

    def test_webhook_gets_the_decrypted_body_at_once_while_gpg_hangs(
            self, env: Env, receiver: WebhookReceiver, run_gateway: Callable[..., RunningGateway]
    ) -> None:
        """A gpg that would hang at hand-off time is not asked: the first attempt
        delivers the decrypted body, marked decrypted, without waiting for gpg."""
        env.hang.write_text("2 3 4 5")
        (env.conf / "50-helpdesk.toml").write_text(webhook_conf(receiver.url))
        secrets = env.conf.parent / "secrets"
        secrets.mkdir(exist_ok=True)
        (secrets / "webhook").write_text(SECRET + "\n")
        (secrets / "webhook").chmod(0o600)
        rg = run_gateway(load_config(env.conf))
        t0 = time.monotonic()
        assert deliver(rg, env.raw) == 250
        [doc] = receiver.wait_delivered(1)
        assert time.monotonic() - t0 < 2
        assert PLAIN in doc["article"]["body"]
        assert doc["crypto"]["decrypted"] is True
        assert wait_for(lambda: handoffs(rg)[0]["status"] == "delivered")
        assert handoffs(rg)[0]["attempts"] == 1
        assert decrypts(env) == 1
