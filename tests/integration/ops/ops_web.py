"""Helpers of the ops integration tests."""

from __future__ import annotations


def message(n: int, subject: str = "Printer broken", extra: str = "") -> bytes:
    return (f"From: Customer <cust{n}@customer.test>\r\nTo: support@example.org\r\n"
            f"Subject: {subject} {n}\r\nMessage-ID: <m{n}@customer.test>\r\n{extra}"
            f"\r\nHello, message {n}.\r\n").encode()
