"""Prometheus metrics of the whole gateway, in one registry served at /metrics.

Doors import the objects and count; the dashboard renders the registry. Label
values are small fixed sets (door, result, account name) — never addresses or
message ids.

With pre-forked LMTP workers (`[lmtp] workers > 1`) `deskgate serve` sets
PROMETHEUS_MULTIPROC_DIR before this module is first imported (gateway.cli.core);
every process then writes its samples to files there and /metrics adds them up,
so the counters cover all processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
REGISTRY = CollectorRegistry()
if not MULTIPROCESS:
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)

MESSAGES = Counter(
    "deskgate_messages", "Messages handled, by door (lmtp, poller, submission, relay, "
    "autoresponse), direction (in, out) and result (new, followup, duplicate, ignore, "
    "quarantine, tempfail; queued, rejected; sent, deferred, failed, lost, superseded, "
    "deleted; refused)", ["door", "direction", "result"], registry=REGISTRY)
PIPELINE_SECONDS = Histogram(
    "deskgate_pipeline_seconds", "Time from a message's arrival to its reply (after commit)",
    ["door"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
OUTBOUND_QUEUE_DEPTH = Gauge(
    "deskgate_outbound_queue_depth", "Messages waiting in the outbound queue",
    registry=REGISTRY, multiprocess_mode="mostrecent")
OUTBOUND_QUEUE_OLDEST_SECONDS = Gauge(
    "deskgate_outbound_queue_oldest_seconds", "Age of the oldest message in the outbound queue",
    registry=REGISTRY, multiprocess_mode="mostrecent")
GAUGE_REFRESH_ERRORS = Counter(
    "deskgate_gauge_refresh_errors", "Scrapes whose database read for gauges failed (the "
    "database down or locked), by the gauges it refreshes (outbound_queue, handoff); those "
    "gauges are NaN in that scrape, never their last value", ["gauges"], registry=REGISTRY)
# Every series exists at 0 from the start, so that increase() sees the first failure.
for _gauges in ("outbound_queue", "handoff"):
    GAUGE_REFRESH_ERRORS.labels(_gauges)
LMTP_RCPT_REFUSED = Counter(
    "deskgate_lmtp_recipients_refused", "Recipients the LMTP listener refused at RCPT, by "
    "reply code and reason: unknown (no such system address), invalid (address disabled), "
    "temporarily_invalid, too_many (over lmtp.max_recipients), syntax, parameter (an "
    "unsupported RCPT parameter), sequence (RCPT before MAIL), other",
    ["code", "reason"], registry=REGISTRY)
# The reasons with the code each is answered with, as series at 0 from the start.
LMTP_RCPT_REFUSALS = (("550", "unknown"), ("550", "invalid"), ("450", "temporarily_invalid"),
                      ("452", "too_many"), ("501", "syntax"), ("553", "syntax"),
                      ("555", "parameter"), ("503", "sequence"))
for _code, _reason in LMTP_RCPT_REFUSALS:
    LMTP_RCPT_REFUSED.labels(_code, _reason)
POLLER_ERRORS = Counter(
    "deskgate_poller_errors", "Failed poll runs (connect, login, fetch) per account",
    ["account"], registry=REGISTRY)
POLLER_ACCOUNT_FAILING = Gauge(
    "deskgate_poller_account_failing", "1 while the last poll run of the account failed "
    "(it is retried with a growing delay), else 0", ["account"], registry=REGISTRY,
    multiprocess_mode="mostrecent")
POLLER_MESSAGE_FAILURES = Counter(
    "deskgate_poller_message_failures", "Messages a poll run left on the server because "
    "the server would not hand them over or they failed temporarily for a reason of "
    "their own (retried next run) per account",
    ["account"], registry=REGISTRY)
FILTER_TIMEOUTS = Counter(
    "deskgate_filter_timeouts", "Postmaster filter patterns that ran out of their time budget",
    ["filter"], registry=REGISTRY)
COMMLOG_PURGED = Counter(
    "deskgate_commlog_purged", "Communications removed by the purge", registry=REGISTRY)
SESSIONS_REFUSED = Counter(
    "deskgate_sessions_refused", "Connections refused by a listener (lmtp, submission): "
    "answered 421 4.7.0 (closed at once on submission tls_listen) for max_sessions, "
    "max_sessions_per_ip or file descriptors, and tls_listen connections whose TLS "
    "handshake failed", ["listener"],
    registry=REGISTRY)
SERVICE_UP = Gauge(
    "deskgate_service_up", "1 when a service of serve runs, 0 when it could not start "
    "(e.g. the dashboard could not bind; reload retries it)", ["service"],
    registry=REGISTRY, multiprocess_mode="mostrecent")
CLASSIFIER_PREDICTIONS = Counter(
    "deskgate_classifier_predictions", "Messages bound for the default queue that the "
    "classifier saw, by result (predicted, unavailable, failed)", ["result"], registry=REGISTRY)
CLASSIFIER_SECONDS = Histogram(
    "deskgate_classifier_seconds", "Time of one prediction (text normalisation, features, "
    "both heads)", registry=REGISTRY,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1))
HANDOFFS = Counter(
    "deskgate_handoffs", "Hand-off attempts to the helpdesk by result (delivered, deferred, "
    "failed; deleted: the hand-off was deleted while it was tried; interrupted: its process "
    "ended or hung, not counted as a try; superseded: another claim took it over)", ["result"],
    registry=REGISTRY)
HANDOFF_SECONDS = Histogram(
    "deskgate_handoff_seconds", "Time from the commit of a message to its delivery into the "
    "helpdesk", registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400))
HANDOFF_HELPDESK_UP = Gauge(
    "deskgate_handoff_helpdesk_up", "0 while the helpdesk looks down (hand-offs paused, one "
    "probe per back-off), else 1", registry=REGISTRY, multiprocess_mode="mostrecent")
HANDOFF_PENDING = Gauge(
    "deskgate_handoff_pending", "Hand-offs waiting for the helpdesk", registry=REGISTRY,
    multiprocess_mode="mostrecent")
HANDOFF_FAILED = Gauge(
    "deskgate_handoff_failed", "Hand-offs that failed for good (retry them by hand)",
    registry=REGISTRY, multiprocess_mode="mostrecent")
HANDOFF_OLDEST_SECONDS = Gauge(
    "deskgate_handoff_oldest_pending_seconds", "Age of the oldest pending hand-off",
    registry=REGISTRY, multiprocess_mode="mostrecent")
COMMIT_RESTARTS = Counter(
    "deskgate_commit_process_restarts", "Attempts to start a commit process again after "
    "the previous one died (one that then refuses or fails counts too)", registry=REGISTRY)
RELOADS = Counter(
    "deskgate_reloads", "Configuration reloads by result (ok, refused)", ["result"],
    registry=REGISTRY)

# A function run (off the event loop) right before a scrape, to refresh gauges
# that are read from the database, e.g. the outbound queue's depth and age.
ScrapeHook = Callable[[Engine], None]


def render(engine: Engine | None = None,
           hooks: Sequence[ScrapeHook] = ()) -> tuple[bytes, str]:
    """Run `hooks` on the engine and return (body, content type). Blocking: call off
    the loop."""
    if engine is not None:
        for hook in hooks:
            hook(engine)
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
