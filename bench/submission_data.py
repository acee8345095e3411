#!/usr/bin/env python3
"""The submission listener's DATA phase alone: bulk reader versus aiosmtpd's line loop.

Each variant runs SubmissionSession in its own server process (uvloop, as `serve`
does) with an accept-all handler in place of SubmissionHandler, so no policy,
pipeline or queue is measured: only the session's command handling and DATA. "old"
is the same session class with aiosmtpd's own smtp_DATA (line by line) and MAIL/RCPT
address parser, "data" has deskgate's bulk DATA reader (gateway/smtpdata.py) with
aiosmtpd's address parser, "new" is the session as it is. A client process sends N
messages of each size
over a few connections, MAIL/RCPT/DATA in one write and the message after the 354,
and the server reports the CPU time it spent. Variants alternate within each round;
the figures are medians over rounds and the ratios are old / new (CPU per message)
and new / old (messages per second).

    python bench/submission_data.py [--rounds 3] [--messages 2000] [--big 40] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def message(size: int) -> bytes:
    """A text message of about size bytes: prose lines, some ending in a period, some
    starting with one (stuffed on the wire), then base64-like lines; CRLF line ends."""
    head = (b"From: app@internal.test\r\nTo: cust@customer.test\r\nSubject: bench\r\n"
            b"Message-ID: <bench@internal.test>\r\n\r\n")
    prose = [b"Thank you for your message about the invoice of last month",
             b"we have looked into it and found the cause of the difference.",
             b".and a line that starts with a dot, as quoted text sometimes does",
             b"Regards, the support team."]
    lines: list[bytes] = []
    total = len(head)
    i = 0
    while total < size:
        line = prose[i % 4] if i < 40 else b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xt"
        lines.append(line)
        total += len(line) + 2
        i += 1
    return head + b"".join(x + b"\r\n" for x in lines)


def stuff(body: bytes) -> bytes:
    return (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


VARIANTS = ("old", "data", "new")

# ------------------------------------------------------------------ server process

def serve(variant: str, limit: int) -> None:
    from aiosmtpd.smtp import SMTP

    from gateway.outbound import submission

    class AcceptAll:
        """Takes every sender and recipient (aiosmtpd's defaults) and every message."""

        def __init__(self, sub: Any) -> None:
            self.sub = sub

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            assert isinstance(envelope.original_content, bytes)
            return "250 OK"

    submission.SubmissionHandler = AcceptAll  # type: ignore[assignment,misc]
    cls: type[submission.SubmissionSession] = submission.SubmissionSession
    if variant == "old":
        class Old(submission.SubmissionSession):
            smtp_DATA = SMTP.smtp_DATA
            data_received = SMTP.data_received
            _getaddr = SMTP._getaddr
        cls = Old
    elif variant == "data":
        class Data(submission.SubmissionSession):
            _getaddr = SMTP._getaddr
        cls = Data

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def factory() -> Any:
            return cls(None, None, data_size_limit=limit, enable_SMTPUTF8=True,  # type: ignore[arg-type]
                       hostname="bench.test", ident="deskgate submission", timeout=300,
                       auth_require_tls=True, loop=loop)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            if line.strip() == b"cpu":
                print(time.process_time(), flush=True)
        server.close()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Server:
    def __init__(self, variant: str, limit: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", variant, "--limit", str(limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ,
                                                                  "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def cpu(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"cpu\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# ------------------------------------------------------------------ client

async def load(port: int, wire: bytes, messages: int, sessions: int) -> None:
    async def reply(reader: asyncio.StreamReader) -> int:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("server closed")
            if line[3:4] == b" ":
                return int(line[:3])

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reply(reader)
        writer.write(b"EHLO load.test\r\n")
        await reply(reader)
        for _ in range(n):
            writer.write(b"MAIL FROM:<app@internal.test>\r\nRCPT TO:<cust@customer.test>\r\n"
                         b"DATA\r\n")
            codes = [await reply(reader) for _ in range(3)]
            assert codes == [250, 250, 354], codes
            writer.write(wire)
            code = await reply(reader)
            assert code == 250, code
        writer.write(b"QUIT\r\n")
        await reply(reader)
        writer.close()

    per = [messages // sessions + (i < messages % sessions) for i in range(sessions)]
    await asyncio.gather(*(one(n) for n in per if n))


def run(variant: str, wire: bytes, messages: int, sessions: int, limit: int
        ) -> tuple[float, float]:
    """(messages/s, server CPU µs per message)."""
    server = Server(variant, limit)
    try:
        asyncio.run(load(server.port, wire, min(messages, 20), sessions))   # warm up
        c0 = server.cpu()
        t0 = time.perf_counter()
        asyncio.run(load(server.port, wire, messages, sessions))
        wall = time.perf_counter() - t0
        cpu = server.cpu() - c0
    finally:
        server.stop()
    return messages / wall, cpu / messages * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000, help="of 5 KB per variant and round")
    ap.add_argument("--big", type=int, default=40, help="messages of 1 MB per variant and round")
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="2 rounds, 500 + 20 messages")
    ap.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=50 << 20, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.limit)
        return 0
    if args.quick:
        args.rounds, args.messages, args.big = 2, 500, 20
    cases = [("5 KB", message(5000), args.messages), ("1 MB", message(1 << 20), args.big)]
    print(f"# submission DATA phase, accept-all handler, {args.sessions} connections, "
          f"{args.rounds} rounds; old = aiosmtpd's DATA and address parser, data = bulk "
          f"DATA reader only, new = both")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for name, body, n in cases:
            for variant in order:
                results.setdefault((name, variant), []).append(
                    run(variant, stuff(body), n, args.sessions, args.limit))
    print("\n| message | variant | msg/s | ratio to old | µs CPU/msg | old / this |")
    print("|---|---|---|---|---|---|")
    for name, _, _ in cases:
        old = results[(name, "old")]
        for variant in VARIANTS:
            this = results[(name, variant)]
            rate = statistics.median(b[0] / a[0] for a, b in zip(old, this, strict=True))
            cpu = statistics.median(a[1] / b[1] for a, b in zip(old, this, strict=True))
            print(f"| {name} | {variant} | {statistics.median(x[0] for x in this):,.0f} "
                  f"| {rate:.2f} | {statistics.median(x[1] for x in this):,.0f} "
                  f"| {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
