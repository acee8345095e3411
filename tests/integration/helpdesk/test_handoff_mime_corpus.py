"""Broken and unusual messages of the inbound corpus (tests/unit/core/test_mime_corpus.py)
handed off to real helpdesks: Request Tracker 5 (REST2) and OTOBO (PostMaster pipe and
REST). Each message over LMTP becomes a helpdesk ticket whose article text is what deskgate
stored, and whose attachments carry the stored bytes under their safe file name; nothing
is refused for good."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable
from pathlib import Path
from pprint import pformat
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from gateway.config import load_config
from gateway.helpdesk.filenames import safe_filename
from gateway.helpdesk.rt_rest2 import normalize_text
from gateway.inbound.parse import html_to_text
from gateway.store.tables import Article, Attachment
from tests.integration.helpdesk.test_handoff_otobo import pipe_conf, rest_conf
from tests.integration.helpdesk.test_handoff_rt import rt_gateway_with
from tests.integration.helpdesk.test_handoff_webhook import deliver, handoffs, wait_for
from tests.peers.otobo import Otobo
from tests.peers.rt import RtServer
from tests.unit.core.test_mime_corpus import CORPUS, HEAD, PLAIN, attached, mixed

if TYPE_CHECKING:
    from tests.conftest import RunningGateway

# A representative part of the corpus: file names (RFC 2231, directories, none), text
# from HTML only, Windows-1252 and unknown-8bit bodies, an empty body, an attached
# message and a thousand parts.
PICKED = ["rfc2231-continuations", "file-name-with-directories", "pdf-without-file-name",
          "html-only", "windows-1252-labelled-latin1", "windows-1252-undeclared-html",
          "unknown-8bit-latin1-bytes", "headers-only", "forwarded-message", "1000-parts"]

# Cases of the same builders on what the corpus leaves out: names with quotes and of 300
# non-ASCII characters, an attached message named after its Subject, very long subjects
# and one with line breaks and control characters (encoded words may carry them).
LONG_NAME = "Ä" * 300 + ".pdf"
EXTRA: dict[str, tuple[bytes, str]] = {
    # name → (raw message, its Subject line's value after "corpus <tag> <name>")
    "quoted-and-long-names": (mixed(
        PLAIN,
        b'Content-Type: text/plain\r\nContent-Disposition: attachment; '
        b'filename="say \\"hi\\".txt"\r\n\r\nhi\r\n',
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
        b"filename*=utf-8''" + b"%C3%84" * 300 + b".pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n"), ""),
    "attached-message-named-by-subject": (mixed(
        PLAIN, b"Content-Type: message/rfc822\r\n\r\n"
        b"Subject: =?utf-8?q?Re:_Drucker_/_Gr=C3=BC=C3=9Fe?=\r\n\r\ninner body\r\n"), ""),
    "very-long-subject": (attached(b"Content-Type: text/csv; name=a.csv\r\n"),
                          " " + "lorem ipsum " * 100),
    "subject-with-controls": (attached(b"Content-Type: text/csv; name=a.csv\r\n"),
                              " =?utf-8?q?line_one=0Aline_two=0D=09tab=07bell=00?="),
}


def corpus(tag: str) -> dict[str, bytes]:
    """The picked messages, each with its own Subject and Message-ID (so each is a ticket
    of its own, found by its subject)."""
    out: dict[str, bytes] = {}
    for name in PICKED:
        out[name] = CORPUS[name].raw
    for name, (raw, _) in EXTRA.items():
        out[name] = raw
    for name, raw in out.items():
        assert raw.startswith(HEAD)
        extra = EXTRA[name][1] if name in EXTRA else ""
        head = HEAD.replace(b"Subject: corpus\r\n",
                            f"Subject: corpus {tag} {name}{extra}\r\n".encode())
        head = head.replace(b"<corpus@", f"<{name}-{tag}@".encode())
        out[name] = head + raw[len(HEAD):]
    return out


def stored(rg: RunningGateway, tag: str) -> dict[str, dict[str, Any]]:
    """What deskgate stored for each message: subject, body, body_html, attachments."""
    out: dict[str, dict[str, Any]] = {}
    with rg.gateway.engine.connect() as conn:
        for a in conn.execute(select(Article.id, Article.subject, Article.body,
                                     Article.body_html)).all():
            m = re.match(rf"corpus {tag} (\S+)", a.subject)
            if not m:
                continue
            files = conn.execute(select(Attachment.filename, Attachment.content)
                                 .where(Attachment.article_id == a.id)
                                 .order_by(Attachment.id)).all()
            out[m.group(1)] = {
                "subject": a.subject, "body": a.body, "html": a.body_html or "",
                "files": [(safe_filename(f.filename, n), bytes(f.content))
                          for n, f in enumerate(files, 1)]}
    return out


def sane(name: str) -> bool:
    """A file name an agent can save: no directory, no control character, not empty,
    at most 255 bytes."""
    return (bool(name.strip()) and "/" not in name and "\\" not in name
            and all(c.isprintable() for c in name) and len(name.encode()) <= 255)


def otobo_filename(name: str) -> str:
    """The name OTOBO stores for a file: its FilenameCleanUp (Local) makes each character
    but a letter, digit, '-', '+', '.', '#' and '_' a '_'."""
    return re.sub(r"[^\w\-+.#]", "_", name)


def send_all(rg: RunningGateway, tag: str) -> dict[str, dict[str, Any]]:
    msgs = corpus(tag)
    for name, raw in msgs.items():
        assert deliver(rg, raw) == 250, name

    def settled() -> bool:
        rows = handoffs(rg)
        return len(rows) >= len(msgs) and all(r["status"] in ("delivered", "failed")
                                              for r in rows)
    assert wait_for(settled, 240), handoffs(rg)
    assert [(h["status"], h.get("last_error")) for h in handoffs(rg)
            if h["status"] != "delivered"] == []
    got = stored(rg, tag)
    assert sorted(got) == sorted(msgs)
    return got


def one_line(text: str) -> str:
    """A subject as a helpdesk shows it: control characters as spaces, blanks collapsed."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c
                            for c in text).split())


def same_subject(helpdesk: str, ours: str, keeps: int) -> bool:
    """The helpdesk's subject is our subject on one line, cut at no less than `keeps`
    characters (what the helpdesk stores at most)."""
    want = one_line(ours)
    return (not any(unicodedata.category(c) == "Cc" for c in helpdesk)
            and want.startswith(helpdesk.rstrip()) and len(helpdesk) >= min(len(want), keeps))


def same_text(helpdesk: str, ours: dict[str, Any]) -> bool:
    want = normalize_text(ours["body"])
    have = normalize_text(helpdesk)
    if have == want or (not want and have == "(no text)"):   # a helpdesk needs some text
        return True
    # a helpdesk that keeps the HTML shows its text
    return bool(ours["html"]) and normalize_text(html_to_text(helpdesk)) == want


# ------------------------------------------------------------------------ RT

@pytest.mark.rt
@pytest.mark.postgres
@pytest.mark.slow
def test_corpus_reaches_rt(rt5: RtServer, make_confdir: Callable[..., Path],
                           run_gateway: Callable[..., RunningGateway]) -> None:
    tag = uuid.uuid4().hex[:8]
    rg = rt_gateway_with(rt5, make_confdir, run_gateway, "")
    ours = send_all(rg, tag)
    problems: dict[str, Any] = {}
    for name, mine in ours.items():
        tickets = rt5.database.tickets(f"corpus {tag} {name}%")
        if len(tickets) != 1:
            problems[name] = ("tickets", tickets)
            continue
        if not same_subject(tickets[0].subject, mine["subject"], 200):  # RT keeps 200
            problems[name] = ("subject", tickets[0].subject)
        [create] = rt5.database.transactions(tickets[0].id)
        if not same_text(create.content, mine):
            problems[name] = ("body", create.content[:300], mine["body"][:300])
        files = [(a.filename, a.content) for a in create.attachments if a.filename]
        if files != mine["files"] or not all(sane(f) for f, _ in files):
            problems[name] = ("files", [f for f, _ in files][:5],
                              [f for f, _ in mine["files"]][:5])
    assert problems == {}, pformat(problems, width=100)


# ------------------------------------------------------------------------ OTOBO

@pytest.mark.otobo
@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pipe", "rest"])
def test_corpus_reaches_otobo(kind: str, otobo: Otobo, make_confdir: Callable[..., Path],
                              run_gateway: Callable[..., RunningGateway]) -> None:
    tag = uuid.uuid4().hex[:8]
    conf = pipe_conf(otobo) if kind == "pipe" else rest_conf(otobo.start_rest())
    rg = run_gateway(load_config(make_confdir({"50-helpdesk.toml": conf})))
    ours = send_all(rg, tag)
    tickets = {t["title"]: t for t in otobo.tickets()}
    problems: dict[str, Any] = {}
    for name, mine in ours.items():
        found = [t for title, t in tickets.items() if title.startswith(f"corpus {tag} {name}")]
        if len(found) != 1:
            problems[name] = ("tickets", found)
            continue
        [article] = otobo.articles(found[0]["id"])
        if not (same_subject(found[0]["title"], mine["subject"], 150)
                and same_subject(article["subject"], mine["subject"], 3800)):
            problems[name] = ("subject", found[0]["title"], article["subject"])
        if not same_text(article["body"], mine):
            problems[name] = ("body", article["body"][:300], mine["body"][:300])
        # OTOBO keeps the body it read from the MIME as file-1 (and an HTML one as file-2)
        files = [(a["filename"], a["content"]) for a in otobo.attachments(article["id"])
                 if not (kind == "pipe" and re.fullmatch(r"file-[12]", a["filename"])
                         and a["content_type"].startswith(("text/plain", "text/html")))]
        want = [(otobo_filename(f) if kind == "pipe" else f, c) for f, c in mine["files"]]
        if kind == "pipe":
            for i, ((f, c), (w, wc)) in enumerate(zip(files, want, strict=False)):
                # OTOBO reads the MIME itself: a part sent without a name is its own
                # file-N, and an attached message keeps the message's CRLF line ends
                if re.fullmatch(r"file-\d+", f) and re.fullmatch(r"file-\d+\.\w+", w):
                    f = w
                if w.endswith(".eml") and c.replace(b"\r\n", b"\n") == wc:
                    c = wc
                files[i] = (f, c)
        if files != want or not all(sane(f) for f, _ in files):
            problems[name] = ("files", files[:3], want[:3])
    assert problems == {}, pformat(problems, width=100)


@pytest.mark.rt
@pytest.mark.postgres
def test_rt_retry_finds_a_ticket_with_non_ascii_file_name_and_control_subject(
        rt5: RtServer, make_confdir: Callable[..., Path]) -> None:
    """A retry finds the ticket its first attempt created from a subject with a line break
    and a bell and a non-ASCII file name (RT stores both as deskgate sent them), instead
    of creating a second."""
    from gateway.helpdesk.rt_rest2 import RtRest2
    from gateway.model import AttachmentData
    from tests.integration.helpdesk.test_helpdesk_rt import item, rt_config

    conn = RtRest2(rt_config(make_confdir, rt5))
    subject = f"Drucker {uuid.uuid4().hex[:8]}\nkaputt\x07"
    files = [AttachmentData("Rechnung März.pdf", "application/pdf", b"%PDF")]
    first = conn.deliver(item(subject=subject, attachments=files,
                              created="2026-01-01T00:00:00+00:00"))
    again = conn.deliver(item(subject=subject, attempts=1, attachments=files,
                              created="2026-01-01T00:00:00+00:00"))
    assert (again.ticket_id, again.detail) == (first.ticket_id, "found")
    [t] = rt5.database.tickets(subject.split("\n")[0] + "%")
    assert t.subject == one_line(subject)
    [create] = rt5.database.transactions(t.id)
    assert create.files["Rechnung März.pdf"].content == b"%PDF"
