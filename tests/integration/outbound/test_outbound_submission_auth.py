"""AUTH lockout on the real submission listener against parallel connections:
attempts whose password check is still running count against max_auth_failures."""

from __future__ import annotations

import smtplib
import ssl
import threading

from gateway.passwords import hash_password
from tests.integration.outbound.conftest import submission_port
from tests.peers.ca import TestCA
from tests.peers.smarthost import AuthSink

WRONG = "AGFwcAB3cm9uZw=="        # PLAIN app / wrong


class TestParallelAuth:
    def test_parallel_wrong_passwords_get_only_max_failures_checks(self, tmp_path,
                                                                    outbound_config,
                                                                    run_gateway):
        """40 connections send a wrong password at the same moment with
        max_auth_failures = 3: at most 3 are checked (535), the rest get 454 4.7.0."""
        ca = TestCA(tmp_path / "ca")
        leaf = ca.issue("submission", hosts=("127.0.0.1",))
        pw_hash = hash_password("s3cret", ln=14)     # a check takes a while, as in production
        with AuthSink() as sink:
            cfg = outbound_config(sink.port, extra_submission=f"""
tls_cert = "{leaf.cert}"
tls_key = "{leaf.key}"
allow_networks = ["10.0.0.0/8"]
max_auth_failures = 3
max_sessions_per_ip = 0
[[submission.user]]
name = "app"
password_hash = "{pw_hash}"
""")
            run_gateway(cfg)
            ctx = ssl.create_default_context(cafile=str(ca.ca_path))
            port = submission_port(cfg)
            conns = []
            for _ in range(40):
                s = smtplib.SMTP("127.0.0.1", port, timeout=60)
                s.starttls(context=ctx)
                s.ehlo()
                conns.append(s)
            go = threading.Barrier(len(conns))
            codes: list[int] = []
            lock = threading.Lock()

            def attempt(s: smtplib.SMTP) -> None:
                go.wait()
                code, _ = s.docmd("AUTH", f"PLAIN {WRONG}")
                with lock:
                    codes.append(code)

            threads = [threading.Thread(target=attempt, args=(s,)) for s in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for s in conns:
                s.close()
        assert len(codes) == 40
        assert 1 <= codes.count(535) <= 3     # some were checked, never more than 3
        assert codes.count(454) == 40 - codes.count(535)
