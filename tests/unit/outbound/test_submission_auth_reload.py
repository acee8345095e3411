"""The submission AUTH lock-out follows a reload: max_auth_failures and auth_backoff
of the reloaded configuration decide the next AUTH of a client, which keeps the
failures it already had."""

from __future__ import annotations

import asyncio
from base64 import b64encode

from gateway.config import SubmissionConfig, SubmissionUser
from gateway.outbound.submission import Submission, SubmissionSession
from gateway.passwords import hash_password
from gateway.runtime import Runtime
from gateway.testing import config, runtime
from tests.unit.outbound.test_submission_session import Client, Pipeline

RIGHT = b"AUTH PLAIN " + b64encode(b"\0app\0pw")
WRONG = b"AUTH PLAIN " + b64encode(b"\0app\0nope")


def submission_runtime(max_auth_failures: int, auth_backoff: float) -> Runtime:
    user = SubmissionUser(name="app", password_hash=hash_password("pw", ln=4))
    return runtime(config(submission=SubmissionConfig(
        user=(user,), allow_networks=("10.0.0.0/8",), max_auth_failures=max_auth_failures,
        auth_backoff=auth_backoff)))


async def auth_after_reload(before: Runtime, after: Runtime, wrong: int,
                            then: tuple[bytes, ...] = (RIGHT,)) -> list[str]:
    """`wrong` failed AUTHs under `before`, then the configuration becomes `after` and
    the client sends `then`: the replies of all of them."""
    current = [before]
    pipeline = Pipeline()
    sub = Submission(lambda: current[0], pipeline, pipeline.comms.append)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SubmissionSession(sub, None, data_size_limit=1 << 20, enable_SMTPUTF8=True,
                                  hostname="gw.test", timeout=30, auth_require_tls=False,
                                  loop=loop), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        c = Client(reader, writer)
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"220 ")
        assert (await c.cmd(b"EHLO app.test")).startswith("250 ")
        replies = [await c.cmd(WRONG) for _ in range(wrong)]
        current[0] = after
        replies += [await c.cmd(line) for line in then]
        return replies
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_a_lower_max_auth_failures_locks_out_at_the_next_failure() -> None:
    """Two failures with max_auth_failures = 5; reloaded with 2, the client is past
    the limit: its next failure locks it out, and then even the right password gets
    454 4.7.0."""
    replies = await auth_after_reload(submission_runtime(5, 60.0),
                                      submission_runtime(2, 60.0), wrong=2,
                                      then=(WRONG, RIGHT))
    assert [r[:3] for r in replies[:3]] == ["535", "535", "535"]
    assert replies[3].startswith("454 4.7.0"), replies


async def test_a_higher_max_auth_failures_lets_the_client_try_again() -> None:
    """Two failures locked the client out with max_auth_failures = 2 and a long
    backoff; reloaded with 5, its next AUTH with the right password succeeds."""
    replies = await auth_after_reload(submission_runtime(2, 600.0),
                                      submission_runtime(5, 600.0), wrong=2)
    assert [r[:3] for r in replies[:2]] == ["535", "535"]
    assert replies[2].startswith("235"), replies
