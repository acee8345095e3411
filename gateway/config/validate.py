"""Checks of a built Config that one key's type cannot express: names defined once,
references between sections, the keys each helpdesk type needs."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
import unicodedata
from collections.abc import Callable
from urllib.parse import urlsplit

from gateway.config.sections import Config
from gateway.config.template import template_error
from gateway.config.values import email_problem
from gateway.passwords import is_hash


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a queue, account, filter or user (or be a display name),
    None when it can: a control character or line break (newline, tab, NUL, NEL, U+2028)
    would split log lines, CLI tables and header values such as X-Deskgate-Queue."""
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return f"{name!r} contains a control character; a name is one line of printable text"
    return None


# The tables of conf.d whose keys are names the administrator chooses.
FREE_TABLES = ("postmaster.states", "helpdesk.queues")


@functools.cache
def _section_keys(section: str) -> frozenset[str]:
    """The key names of a table section of conf.d (`postmaster` -> default_queue, ...)."""
    cls = typing.get_type_hints(Config)[section]
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        base = f.metadata.get("secret", f.name.rstrip("_"))
        names.update(base + s for s in (("", "_file", "_env") if "secret" in f.metadata
                                        else ("",)))
    return frozenset(names)


def below_free_table(table: str, name: str) -> str:
    """For an entry `name` of a table of free names ([postmaster.states],
    [helpdesk.queues]) that is named like a key of the section above it: where that key
    belongs. TOML puts every key below the [postmaster.states] header into that table,
    so `no_auto_response` written after it is taken for a state. "" otherwise."""
    if table not in FREE_TABLES:
        return ""
    section, _, leaf = table.partition(".")
    if name == leaf or name not in _section_keys(section):
        return ""
    return (f"; {name} is a key of [{section}]: a key below the [{table}] header belongs "
            "to that table; write it above the header")


def _has_login(url: str) -> bool:
    """Whether an http(s) URL has user@ or user:password@ before its host."""
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:      # a malformed URL: the scheme check names it
        return False


def _validate_names(cfg: Config, at: Callable[[str], str],
                    add: Callable[[str, str, str], None]) -> None:
    """Every name the configuration gives, and the queue names it refers to by name
    where no [[queue]] has to match them, is one line of printable text."""
    names: list[tuple[str, str, str]] = [
        (f"queue[{i}]", f"queue[{i}].name", q.name) for i, q in enumerate(cfg.queue)]
    names += [(f"address[{i}]", f"address[{i}].display_name", a.display_name)
              for i, a in enumerate(cfg.address)]
    names += [(f"account[{i}]", f"account[{i}].name", a.name)
              for i, a in enumerate(cfg.account)]
    names += [(f"submission.user[{i}]", f"submission.user[{i}].name", u.name)
              for i, u in enumerate(cfg.submission.user)]
    names += [(f"dashboard.user[{i}]", f"dashboard.user[{i}].name", u.name)
              for i, u in enumerate(cfg.dashboard.user)]
    names.append(("postmaster.default_queue", "postmaster.default_queue",
                  cfg.postmaster.default_queue))
    for ours, theirs in cfg.helpdesk.queues.items():
        if name_problem(ours) is None:
            names.append((f"helpdesk.queues.{ours}", f"helpdesk.queues.{ours}", theirs))
        else:               # the key itself cannot be shown in a key: name the table
            names.append(("helpdesk.queues", "helpdesk.queues", ours))
    for where, key, name in names:
        problem = name_problem(name)
        if problem is not None:
            add(at(where), key, problem)


def validate_core(cfg: Config, at: Callable[[str], str],
                  add: Callable[[str, str, str], None]) -> None:
    """The checks across sections that need no other module; `at(key)` is the file
    that set a key, `add(file, key, reason)` records an error."""
    _validate_names(cfg, at, add)
    pm = cfg.postmaster
    queue_names = {q.name.lower(): q for q in cfg.queue}
    seen: set[str] = set()
    for i, q in enumerate(cfg.queue):
        if not q.name.strip():
            add(at(f"queue[{i}]"), f"queue[{i}].name", "must not be empty")
            continue
        if q.name.lower() in seen:
            add(at(f"queue[{i}]"), f"queue[{i}].name", f"duplicate queue {q.name!r}")
        seen.add(q.name.lower())
    if (pm.default_queue.lower() not in queue_names and cfg.queue
            and name_problem(pm.default_queue) is None):
        add(at("postmaster.default_queue"), "postmaster.default_queue",
            f"queue {pm.default_queue!r} is not defined by any [[queue]]")
    for key, value in (("default_state", pm.default_state), ("followup_state", pm.followup_state)):
        if value not in pm.states:
            add(at(f"postmaster.{key}"), f"postmaster.{key}", f"state {value!r} is not in "
                "[postmaster.states]")
    if pm.default_priority not in pm.priorities:
        add(at("postmaster.default_priority"), "postmaster.default_priority",
            f"priority {pm.default_priority!r} is not in postmaster.priorities")
    for name, kind in pm.states.items():
        if kind not in ("new", "open", "pending", "closed", "merged", "removed"):
            add(at(f"postmaster.states.{name}"), f"postmaster.states.{name}",
                f"state type {kind!r} is not one of new, open, pending, closed, merged, removed"
                + below_free_table("postmaster.states", name))
    if pm.filter_timeout <= 0:
        add(at("postmaster.filter_timeout"), "postmaster.filter_timeout",
            "must be more than 0 (a duration such as 50ms)")
    try:
        re.compile(pm.no_auto_response)
    except re.error as exc:
        add(at("postmaster.no_auto_response"), "postmaster.no_auto_response",
            f"invalid regular expression: {exc}")

    emails: set[str] = set()
    for i, a in enumerate(cfg.address):
        key = f"address[{i}]"
        if a.email in emails:
            add(at(key), f"{key}.email", f"duplicate system address {a.email!r}")
        emails.add(a.email)
        if a.queue and a.queue.lower() not in queue_names:
            add(at(key), f"{key}.queue", f"queue {a.queue!r} is not defined by any [[queue]]")
    for i, q in enumerate(cfg.queue):
        key = f"queue[{i}]"
        for kind in ("new", "followup", "reject"):
            why = template_error(getattr(q, f"auto_response_{kind}"))
            if why:
                add(at(key), f"{key}.auto_response_{kind}", f"cannot be filled in: {why}")
        if not q.address:
            continue
        addr = cfg.address_by_email(q.address)
        if addr is None:
            add(at(key), f"{key}.address", f"{q.address!r} is not a system address ([[address]])")
        elif addr.valid != "valid":
            add(at(key), f"{key}.address", f"system address {q.address!r} is {addr.valid} but "
                f"queue {q.name!r} uses it; an address may only be invalidated when no queue "
                "uses it")

    names: set[str] = set()
    for i, acc in enumerate(cfg.account):
        key = f"account[{i}]"
        if acc.name in names:
            add(at(key), f"{key}.name", f"duplicate account {acc.name!r}")
        names.add(acc.name)
        if not 0 <= acc.port < 65536:
            add(at(key), f"{key}.port",
                "must be between 1 and 65535 (0: the default port of the type)")
        if acc.dispatch == "queue" and not acc.queue:
            add(at(key), f"{key}.queue", "required when dispatch = \"queue\"")
        if acc.queue and acc.queue.lower() not in queue_names:
            add(at(key), f"{key}.queue", f"queue {acc.queue!r} is not defined by any [[queue]]")
        if acc.type in ("imap", "pop3") and not acc.allow_plaintext and acc.oauth2 is None:
            add(at(key), f"{key}.type", f"{acc.type} sends the password without TLS; use "
                f"{acc.type}s or {acc.type}tls, or set allow_plaintext = true")
        if acc.password is None and acc.oauth2 is None:
            add(at(key), f"{key}.password", "give password, password_file, password_env or an "
                "[account.oauth2] table")
        elif acc.password is not None and acc.oauth2 is not None:    # the password is unused
            add(at(key), f"{key}.password", "give a password (password, password_file or "
                "password_env) or an [account.oauth2] table, not both")
        # POP3 serves one mailbox (the INBOX): another folder would be ignored.
        if acc.type.startswith("pop3") and acc.folder.upper() != "INBOX":
            add(at(key), f"{key}.folder", f"{acc.folder!r}: POP3 has no folders; folder "
                "applies to IMAP accounts (remove it, or use an IMAP type)")
        af = acc.after_fetch
        allowed = af in ("delete", "keep") or (af.startswith("move:") and len(af) > 5
                                               and acc.type.startswith("imap"))
        if not allowed:
            add(at(key), f"{key}.after_fetch", f"{af!r} is not delete, keep" +
                (" or move:<folder>" if acc.type.startswith("imap") else " (POP3 has no folders)"))
    for i, u in enumerate(cfg.submission.user):
        if not is_hash(u.password_hash):      # a placeholder or the password itself
            add(at(f"submission.user[{i}]"), f"submission.user[{i}].password_hash",
                "not a hash made by `deskgate passwd`")
        if u.default_queue and u.default_queue.lower() not in queue_names:
            add(at(f"submission.user[{i}]"), f"submission.user[{i}].default_queue",
                f"queue {u.default_queue!r} is not defined by any [[queue]]")
    _validate_submission_auth(cfg, at, add)
    for ckey, count in (("gateway.batch_max", cfg.gateway.batch_max),
                        ("lmtp.max_recipients", cfg.lmtp.max_recipients),
                        ("submission.max_recipients", cfg.submission.max_recipients),
                        ("relay.concurrency", cfg.relay.concurrency)):
        if count < 1:
            add(at(ckey), ckey, "must be at least 1")
    if not 0 < cfg.relay.port < 65536:
        add(at("relay.port"), "relay.port", "must be between 1 and 65535")
    prefixes = cfg.gateway.header_prefixes
    if not prefixes:
        add(at("gateway.header_prefixes"), "gateway.header_prefixes",
            "needs at least one prefix (the first is canonical), e.g. [\"X-Deskgate-\"]")
    for prefix in prefixes:
        if not re.fullmatch(r"X-[A-Za-z0-9]+(-[A-Za-z0-9]+)*-", prefix, re.IGNORECASE):
            add(at("gateway.header_prefixes"), "gateway.header_prefixes",
                f"{prefix!r} is not an X-header prefix such as 'X-OTOBO-' (X-, letters, "
                "digits and -, ending in -)")
    if not 1 <= cfg.lmtp.workers <= 64:
        add(at("lmtp.workers"), "lmtp.workers", "must be between 1 and 64")
    for skey, sessions, low in (("lmtp.max_sessions", cfg.lmtp.max_sessions, 1),
                                ("submission.max_sessions", cfg.submission.max_sessions, 1),
                                ("submission.max_sessions_per_ip",
                                 cfg.submission.max_sessions_per_ip, 0)):
        if not low <= sessions <= 100_000:
            add(at(skey), skey, f"must be between {low} and 100000")
    bounce = cfg.relay.bounce_sender
    if bounce and (problem := email_problem(bounce)) is not None:   # "": the null sender
        add(at("relay.bounce_sender"), "relay.bounce_sender", problem)
    sub = cfg.submission
    if cfg.relay.mode == "smtp" and not cfg.relay.host and (sub.listen or sub.tls_listen):
        add(at("relay.host"), "relay.host",
            "required when mode = \"smtp\" and submission is enabled")
    if bool(sub.tls_cert) != bool(sub.tls_key):
        add(at("submission.tls_cert" if sub.tls_cert else "submission.tls_key"),
            "submission.tls_key", "tls_cert and tls_key go together")
    for spec in sub.listen:
        if spec.startswith("unix:"):
            add(at("submission.listen"), "submission.listen",
                f"{spec!r} is not HOST:PORT: submission listens on TCP only (a local "
                "application submits with `deskgate send` or to a listen address on "
                "127.0.0.1, inside allow_networks)")
    _validate_tls_listen(cfg, at, add)
    _validate_helpdesk(cfg, at, add)
    _validate_classifier(cfg, at, add)
    fnames: set[str] = set()
    for f in cfg.filters:
        if f.name in fnames:
            add(f.source, f"filter[{f.name}].name", f"duplicate filter name {f.name!r}")
        fnames.add(f.name)


def _validate_submission_auth(cfg: Config, at: Callable[[str], str],
                              add: Callable[[str, str, str], None]) -> None:
    """Submission users need a certificate: AUTH is offered only after STARTTLS (as
    Postfix's smtpd_tls_auth_only), so on a listener without one none could log in."""
    sub = cfg.submission
    if not (sub.user and sub.listen) or sub.tls_cert or sub.tls_key:
        return     # (only one of the pair set: "tls_cert and tls_key go together")
    names = ", ".join(repr(u.name) for u in sub.user)
    add(at("submission.listen"), "submission.tls_cert",
        f"required when [[submission.user]] is set ({names}): AUTH is offered only after "
        "STARTTLS, so without tls_cert and tls_key none of them can ever log in (clients "
        "in allow_networks submit without AUTH)")


def _validate_tls_listen(cfg: Config, at: Callable[[str], str],
                        add: Callable[[str, str, str], None]) -> None:
    """[submission] tls_listen: TCP addresses, none also in listen, and a certificate."""
    sub = cfg.submission
    if not sub.tls_listen:
        return
    key = "submission.tls_listen"
    if not (sub.tls_cert and sub.tls_key):
        add(at(key), key, "implicit TLS needs tls_cert and tls_key (the certificate the TLS "
            "handshake presents)")
    for spec in sub.tls_listen:
        if spec.startswith("unix:"):
            add(at(key), key, f"{spec!r} is not HOST:PORT (implicit TLS listens on TCP)")
        elif spec in sub.listen:
            add(at(key), key, f"{spec!r} is also in submission.listen; a socket speaks either "
                "STARTTLS (listen) or implicit TLS (tls_listen)")


def _validate_classifier(cfg: Config, at: Callable[[str], str],
                         add: Callable[[str, str, str], None]) -> None:
    """Ranges of the classifier keys; whether a model is readable is `check`'s business."""
    cl = cfg.classifier
    for key in ("min_confidence", "min_priority_confidence", "accuracy_floor"):
        if not 0.0 <= getattr(cl, key) <= 1.0:
            add(at(f"classifier.{key}"), f"classifier.{key}", "must be between 0 and 1")
    if cl.min_per_class < 2:
        add(at("classifier.min_per_class"), "classifier.min_per_class", "must be at least 2")
    if cl.retrain_after_moves < 0:
        add(at("classifier.retrain_after_moves"), "classifier.retrain_after_moves",
            "cannot be negative")
    if cl.confidence_field and not re.fullmatch(r"[A-Za-z0-9_-]+", cl.confidence_field):
        add(at("classifier.confidence_field"), "classifier.confidence_field",
            "a dynamic field name: letters, digits, _ and - only")


def _validate_helpdesk(cfg: Config, at: Callable[[str], str],
                       add: Callable[[str, str, str], None]) -> None:
    """Each helpdesk type needs its own keys; paths must be readable."""
    hd = cfg.helpdesk
    if not hd.enabled:
        return

    def need(key: str, ok: object, why: str) -> None:
        if not ok:
            add(at(f"helpdesk.{key}"), f"helpdesk.{key}", f"required for type = {hd.type!r}: {why}")

    if hd.type == "otobo-postmaster":
        need("command", hd.command, "the PostMaster command, e.g. "
             '["/opt/otobo/bin/otobo.Console.pl", "Maint::PostMaster::Read"]')
    else:
        need("url", hd.url, "the base URL of the helpdesk's API (or the webhook endpoint)")
        if _has_login(hd.url):     # the URL is not repeated: it may hold a password
            add(at("helpdesk.url"), "helpdesk.url", "a login in the URL (user@ or "
                "user:password@ before the host) is not supported and would be shown with "
                "the URL; remove it (REST: the login goes in helpdesk.user, the password in "
                "password_file or password_env)")
        elif hd.url and not hd.url.startswith(("http://", "https://")):
            add(at("helpdesk.url"), "helpdesk.url", f"{hd.url!r} is not an http:// or https:// URL")
    if hd.type in ("otobo-rest", "znuny-rest"):
        need("user", hd.user, "the agent login of the web service")
        need("password", hd.password is not None, "give password, password_file or password_env")
    if hd.type == "rt-rest2" and hd.token is None and not (hd.user and hd.password is not None):
        add(at("helpdesk"), "helpdesk.token", "required for type = 'rt-rest2': give token_file "
            "(or user and password_file)")
    if hd.type == "webhook":
        need("secret", hd.secret is not None, "the HMAC-SHA256 key: give secret_file or secret_env")
    if hd.tls_ca_file and not cfg.path(hd.tls_ca_file).is_file():
        add(at("helpdesk.tls_ca_file"), "helpdesk.tls_ca_file",
            f"{cfg.path(hd.tls_ca_file)} does not exist")
    if hd.concurrency < 1:
        add(at("helpdesk.concurrency"), "helpdesk.concurrency", "must be at least 1")
    for name in hd.queues:
        if cfg.queue_named(name) is not None or name_problem(name) is not None:
            continue
        if cfg.queue:
            add(at("helpdesk.queues"), f"helpdesk.queues.{name}",
                f"queue {name!r} is not defined by any [[queue]]"
                + below_free_table("helpdesk.queues", name))
        else:
            add(at("helpdesk.queues"), f"helpdesk.queues.{name}",
                f"queue {name!r} cannot exist: no [[queue]] is configured, so every ticket "
                f"goes to postmaster.default_queue {cfg.postmaster.default_queue!r}"
                + below_free_table("helpdesk.queues", name))
    if hd.ticket_url and "{id}" not in hd.ticket_url and "{number}" not in hd.ticket_url:
        add(at("helpdesk.ticket_url"), "helpdesk.ticket_url",
            "the template needs {id} or {number}")
