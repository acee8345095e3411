"""Mailbox poller: IMAP/IMAPS/IMAP+STARTTLS and POP3/POP3S/POP3+STLS, password or
XOAUTH2, with IDLE for servers that have it.

Why the stdlib imaplib/poplib in worker threads and not an asyncio client:
they ship with Python (no dependency to vet for a door that handles
credentials), they do STARTTLS/STLS with an ssl.SSLContext we build (so
certificate and hostname checks are ours), and a poll run is a strictly
sequential conversation with one server — fetch, wait for the commit, remove —
where a thread per connection costs nothing measurable next to the pipeline.
Each session is confined to one single-thread executor, so the blocking I/O
never touches the event loop thread and no connection is shared between
threads. IDLE (which imaplib lacks before 3.14) is a small reader on the raw
socket in gateway/inbound/poller/idle.py.

Modules: session.py (shared types, TLS), imap.py, pop3.py, oauth2.py (tokens),
state.py (database), lease.py (one node per account), run.py (one poll run),
connection.py (one connection of a run), deliver.py (its work list), keep.py
(what after_fetch = "keep" remembers), check.py (`check_account`), idle.py,
scheduler.py (the service in `serve`).
"""

from __future__ import annotations
