"""A helpdesk of four queues whose history (several hundred generated mails) is stored
through the real pipeline, some corrected with `deskgate tickets move`, and a model
trained on it once per session; plus the held-out mails the model never saw."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.cli import main as cli_main
from gateway.config import Config, load_config
from gateway.model import Envelope
from tests.integration.classify.corpus import Mail, generate, to_bytes

CONF = """
[gateway]
hostname = "helpdesk.test"
state_dir = "var"
system_id = "10"
{gateway}

[lmtp]
listen = ["unix:var/run/lmtp.sock"]
unknown_recipient = "default-queue"

[postmaster]
default_queue = "Raw"

[dashboard]
listen = ""

[classifier]
model = "{model}"
min_per_class = 10
{classifier}

[[queue]]
name = "Raw"
address = "helpdesk@example.org"

[[queue]]
name = "Billing"
address = "billing@example.org"

[[queue]]
name = "Technical"
address = "support@example.org"

[[queue]]
name = "Sales"
address = "sales@example.org"

[[queue]]
name = "HR"
address = "hr@example.org"

[[address]]
email = "helpdesk@example.org"
queue = "Raw"

[[address]]
email = "billing@example.org"
queue = "Billing"

[[address]]
email = "support@example.org"
queue = "Technical"

[[address]]
email = "sales@example.org"
queue = "Sales"

[[address]]
email = "hr@example.org"
queue = "HR"
"""

ADDRESS = {"Billing": "billing@example.org", "Technical": "support@example.org",
           "Sales": "sales@example.org", "HR": "hr@example.org"}
TRAIN, HELD_OUT = 600, 150
VIA_CATCH_ALL = 40       # of the training mails: sent to helpdesk@, then moved by an agent


def write_conf(root: Path, model: Path, classifier: str = "", extra: str = "",
               database: str = "") -> Path:
    conf = root / "conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "10-base.toml").write_text(
        CONF.format(model=model, classifier=textwrap.dedent(classifier),
                    gateway=f'database = "{database}"' if database else "")
        + textwrap.dedent(extra))
    (root / "policies").mkdir(exist_ok=True)
    return conf


def deliver_all(gw: Gateway, items: list[tuple[bytes, str, str]]) -> list[str]:
    """(raw, recipient, priority header) through the pipeline, 50 at a time (group commit)."""
    async def run() -> list[str]:
        out: list[str] = []
        for i in range(0, len(items), 50):
            envs = [Envelope(mail_from="", recipients=(rcpt,), raw=raw, source="STDIN",
                             account="corpus", trusted=True)
                    for raw, rcpt, _ in items[i:i + 50]]
            outcomes = await asyncio.gather(*(gw.pipeline.deliver(e) for e in envs))
            out += [o.ticket_number for o in outcomes]
        return out
    return asyncio.run(run())


def with_priority(raw: bytes, priority: str) -> bytes:
    """The agent-chosen priority as the trusted X-header a helpdesk rule would set."""
    return f"X-Deskgate-Priority: {priority}\r\n".encode() + raw


@dataclass
class Trained:
    root: Path
    conf: Path
    config: Config
    model: Path
    held_out: list[Mail]
    moved: int


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The stored history and the model `deskgate classify train` made of it."""
    root = tmp_path_factory.mktemp("classify")
    model = root / "var" / "classifier"
    conf = write_conf(root, model)
    cfg = load_config(conf)
    mails = generate(TRAIN + HELD_OUT)
    history, held_out = mails[:TRAIN], mails[TRAIN:]
    items = []
    for i, m in enumerate(history):
        rcpt = "helpdesk@example.org" if i < VIA_CATCH_ALL else ADDRESS[m.queue]
        items.append((with_priority(to_bytes(m, rcpt), m.priority), rcpt, m.priority))
    gw = Gateway(cfg)
    try:
        gw.prepare_store()
        numbers = deliver_all(gw, items)
    finally:
        gw.close()
    assert all(numbers), "every corpus mail became a ticket"
    for number, m in zip(numbers[:VIA_CATCH_ALL], history, strict=False):
        assert cli_main(["-c", str(conf), "tickets", "move", number, m.queue]) == 0
    assert cli_main(["-c", str(conf), "classify", "train", "--json"]) == 0
    return Trained(root, conf, cfg, model, held_out, VIA_CATCH_ALL)


@pytest.fixture
def classify_conf(tmp_path: Path, trained: Trained) -> Callable[..., Path]:
    """conf.d of a fresh gateway (own database) using the session's model."""
    def make(classifier: str = "enabled = true", extra: str = "", model: Path | None = None
             ) -> Path:
        return write_conf(tmp_path / "gw", model or trained.model, classifier, extra)
    return make
