"""`deskgate check` and `serve` as a new admin meets them, as real processes: secret files
readable by group/others are refused the same way everywhere, what `serve` would die on
is found by `check`, and what only `serve` can find is one line, not a traceback. Files
deskgate creates with mail in them are private whatever the umask."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.outbound.dkim import generate_key, key_pem
from tests.peers.serve import stop_serve

REPO = Path(__file__).resolve().parents[3]


def cli(conf: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """`deskgate -c conf ARGS` as its own process, umask 022 (a login shell's)."""
    return subprocess.run([sys.executable, "-m", "gateway", "-c", str(conf), *args],
                          input=stdin.decode(), capture_output=True, cwd=conf.parent,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
                          text=True, check=False, preexec_fn=lambda: os.umask(0o022))


def openssl_pair(d: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its unencrypted key, made by openssl (key 0600)."""
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=120)
    key.chmod(0o600)
    return cert, key


def secret(root: Path, name: str, value: str = "s3cret") -> Path:
    p = root / "secrets" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(value + "\n")
    p.chmod(0o600)
    return p


ACCOUNT = """
[[account]]
name = "box"
type = "imaps"
host = "127.0.0.1"
login = "helpdesk"
{key} = "{path}"
"""

TLS_HEAD = '[relay]\nmode = "maildir"\n\n[submission]\nlisten = ["127.0.0.1:2587"]\n'

SECRET_CASES = {
    "relay.password_file": ('[relay]\nhost = "127.0.0.1"\nuser = "gw"\npassword_file = "{path}"\n'),
    "account[0].password_file": ACCOUNT.replace("{key}", "password_file"),
    "account[0].oauth2.client_secret_file": (
        ACCOUNT.replace('{key} = "{path}"\n', "") + '[account.oauth2]\nclient_id = "c"\n'
        'token_url = "https://login.test/token"\nclient_secret_file = "{path}"\n'
        'refresh_token = "r"\n'),
    "helpdesk.token_file": ('[helpdesk]\ntype = "rt-rest2"\nurl = "https://rt.test"\n'
                            'token_file = "{path}"\n'),
    "helpdesk.secret_file": ('[helpdesk]\ntype = "webhook"\nurl = "https://hook.test/in"\n'
                             'secret_file = "{path}"\n'),
    "helpdesk.password_file": ('[helpdesk]\ntype = "otobo-rest"\nurl = "https://otobo.test"\n'
                               'user = "gw"\npassword_file = "{path}"\n'),
}


class TestSecretFilesMustBePrivate:
    @pytest.mark.parametrize("key", sorted(SECRET_CASES))
    def test_group_readable_secret_file_is_refused(self, make_confdir, tmp_path, key):
        """A `*_file` secret at mode 0644 fails `check` naming the key, the file and the fix;
        at 0600 the same configuration passes."""
        path = secret(tmp_path / "root", "s")
        conf = make_confdir({"50-secret.toml": SECRET_CASES[key].format(path=path)})
        assert cli(conf, "check").returncode == 0, cli(conf, "check").stderr
        path.chmod(0o644)
        r = cli(conf, "check")
        assert r.returncode == 1
        assert f"{key}: {path}: holds a secret but is readable by group/others (mode 0644); " \
               "run chmod 600 on it" in r.stderr, r.stderr

    def test_submission_tls_key(self, make_confdir, tmp_path):
        """submission.tls_key at 0640 is refused like the S/MIME keys are."""
        cert, key = openssl_pair(tmp_path / "root" / "tls")
        conf = make_confdir({"50-tls.toml": TLS_HEAD
                                            + f'tls_cert = "{cert}"\ntls_key = "{key}"\n'})
        assert cli(conf, "check").returncode == 0
        key.chmod(0o640)
        r = cli(conf, "check")
        assert r.returncode == 1
        assert f"submission.tls_key: {key}: holds a secret but is readable" in r.stderr

    def test_dkim_key_file(self, make_confdir, tmp_path):
        """A DKIM key_file readable by others is refused; `dkim keygen` writes one that
        passes."""
        conf = make_confdir()
        made = cli(conf, "dkim", "keygen", "example.org", "s1")
        assert made.returncode == 0, made.stderr
        key = conf.parent / "keys" / "dkim" / "example.org.s1.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        other = tmp_path / "other.pem"
        other.write_bytes(key_pem(generate_key()))
        other.chmod(0o644)
        (conf / "45-dkim.toml").write_text(
            f'[[dkim]]\ndomain = "example.org"\nselector = "s1"\nkey_file = "{key}"\n'
            f'[[dkim]]\ndomain = "example.org"\nselector = "s2"\nkey_file = "{other}"\n')
        r = cli(conf, "check")
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert lines == [f"{conf}/45-dkim.toml: dkim[1].key_file: {other}: holds a secret but "
                         "is readable by group/others (mode 0644); run chmod 600 on it"], lines


class TestErrorsNameTheFile:
    def test_dkim_key_file_missing(self, make_confdir):
        """A [[dkim]] in 20-dkim.toml with a missing key_file: `check` names that file, the
        key and the reason, in text and in --json; not the conf.d directory."""
        conf = make_confdir({"20-dkim.toml": '[[dkim]]\ndomain = "example.org"\n'
                                             'selector = "s1"\nkey_file = "keys/gone.pem"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            f"{conf}/20-dkim.toml: dkim[0].key_file: cannot load "
            f"{conf.parent}/keys/gone.pem: No such file or directory"], r.stderr
        r = cli(conf, "check", "--json")
        assert r.returncode == 1
        assert json.loads(r.stdout)["errors"] == [{
            "file": f"{conf}/20-dkim.toml", "key": "dkim[0].key_file",
            "reason": f"cannot load {conf.parent}/keys/gone.pem: No such file or directory"}]

    def test_queue_name_with_a_newline(self, make_confdir):
        """A queue name with a newline fails `check` with one line naming the file, the
        key and the name escaped."""
        conf = make_confdir({"60-q.toml": '[[queue]]\nname = "A\\nB"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            f"{conf}/60-q.toml: queue[4].name: 'A\\nB' contains a control character; "
            "a name is one line of printable text"], r.stderr


class TestCheckFindsWhatServeWouldDieOn:
    def test_missing_and_unreadable_tls_files(self, make_confdir, tmp_path):
        """A missing tls_cert or a tls_key that is a directory is named with its path."""
        cert, key = openssl_pair(tmp_path / "root" / "tls")
        conf = make_confdir({"50-tls.toml": TLS_HEAD
                                            + f'tls_cert = "{cert}.gone"\ntls_key = "{key}"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        assert f"submission.tls_cert: cannot read {cert}.gone: No such file or directory" \
            in r.stderr
        (conf / "50-tls.toml").write_text(TLS_HEAD
                                          + f'tls_cert = "{cert}"\ntls_key = "{tmp_path}"\n')
        r = cli(conf, "check")
        assert r.returncode == 1
        assert f"submission.tls_key: cannot read {tmp_path}: Is a directory" in r.stderr

    def test_certificate_and_key_that_do_not_match(self, make_confdir, tmp_path):
        """A certificate with another pair's key fails `check`, not `serve`."""
        cert, _ = openssl_pair(tmp_path / "root" / "a")
        _, key = openssl_pair(tmp_path / "root" / "b")
        conf = make_confdir({"50-tls.toml": TLS_HEAD
                                            + f'tls_cert = "{cert}"\ntls_key = "{key}"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1 and "do not load as a certificate and its key" in r.stderr

    @pytest.mark.parametrize(("url", "reason"), [
        ("mysql://u@db.test/desk", "'mysql' is not supported; use sqlite:///PATH or "
                                   "postgresql+psycopg://USER@HOST/DB"),
        ("postgresql+psycopg2://u@db.test/desk",
         "driver 'psycopg2' is not supported for PostgreSQL; use postgresql+psycopg://"),
        ("not a url", "not a database URL"),
    ])
    def test_unsupported_database_url(self, make_confdir, url, reason):
        """A database URL deskgate cannot use is one `gateway.database` line, no traceback."""
        conf = make_confdir({"50-db.toml": f'[gateway]\ndatabase = "{url}"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        assert f"{conf}/50-db.toml: gateway.database: {reason}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr

    def test_unwritable_sqlite_directory(self, make_confdir, tmp_path):
        """An SQLite file whose directory cannot be created or written fails `check`
        (a state_dir below a regular file; a directory in /proc, which even root cannot
        write)."""
        (tmp_path / "root").mkdir()
        (tmp_path / "root" / "plain").write_text("a file\n")
        conf = make_confdir({"50-db.toml": '[gateway]\nstate_dir = "plain/var"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        assert f"gateway.database: cannot create {conf.parent}/plain/var: " \
               f"{conf.parent}/plain is not a directory" in r.stderr, r.stderr
        (conf / "50-db.toml").write_text(
            '[gateway]\ndatabase = "sqlite:////proc/deskgate-test/deskgate.db"\n')
        r = cli(conf, "check")
        assert r.returncode == 1
        assert "gateway.database: cannot create files in /proc: " in r.stderr, r.stderr

    def test_sqlite_location_names_the_file_that_sets_the_database(self, make_confdir):
        """An SQLite location `check` refuses is reported at the conf.d file that sets
        gateway.database, in text and in --json, not at the conf.d directory."""
        conf = make_confdir({"50-db.toml": '[gateway]\n'
                             'database = "sqlite:////proc/deskgate-test/deskgate.db"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"{conf}/50-db.toml: gateway.database: cannot create files "
                               "in /proc: "), r.stderr
        r = cli(conf, "check", "--json")
        assert r.returncode == 1
        (err,) = json.loads(r.stdout)["errors"]
        assert err["file"] == f"{conf}/50-db.toml" and err["key"] == "gateway.database", err
        assert err["reason"].startswith("cannot create files in /proc: "), err

    def test_default_database_location_says_no_file_sets_it(self, make_confdir):
        """With gateway.database set by no file, a refused SQLite location is reported at
        the conf.d directory, saying that no file under it sets the key and where the
        default comes from (the file that sets state_dir), not at the first file with a
        [gateway] section (10-base.toml, which sets neither)."""
        conf = make_confdir({"50-state.toml": '[gateway]\nstate_dir = "/proc/deskgate-t"\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"{conf}: gateway.database: cannot create files in /proc: "), \
            r.stderr
        assert line.endswith(f" (no file under {conf} sets gateway.database: the default "
                             "sqlite:////proc/deskgate-t/deskgate.db, from gateway.state_dir "
                             f"in {conf}/50-state.toml)"), r.stderr
        r = cli(conf, "check", "--json")
        (err,) = json.loads(r.stdout)["errors"]
        assert err["file"] == str(conf) and err["key"] == "gateway.database", err
        assert f"no file under {conf} sets gateway.database" in err["reason"], err

    def test_empty_database_names_the_file_that_empties_it(self, make_confdir):
        """gateway.database = "" in a file: a refused location of the default it stands for
        is reported at that file, saying it is empty and where the default comes from."""
        conf = make_confdir({"50-state.toml": '[gateway]\nstate_dir = "/proc/deskgate-t"\n',
                             "60-db.toml": '[gateway]\ndatabase = ""\n'})
        r = cli(conf, "check")
        assert r.returncode == 1
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"{conf}/60-db.toml: gateway.database: cannot create files "
                               "in /proc: "), r.stderr
        assert line.endswith(" (gateway.database is empty: the default "
                             "sqlite:////proc/deskgate-t/deskgate.db, from gateway.state_dir "
                             f"in {conf}/50-state.toml)"), r.stderr

    def test_policy_file_not_utf8(self, make_confdir):
        """A policy file in Latin-1 is one `file: reason` line, exit 1, no traceback."""
        conf = make_confdir()
        bad = conf.parent / "policies" / "020-latin1.toml"
        bad.write_bytes('[[filter]]\nname = "Gr\u00fc\u00dfe"\n'.encode("latin-1"))
        r = cli(conf, "check")
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [
            f"{bad}: not UTF-8 text (TOML files must be): invalid start byte at byte 21"]


class TestServeFailsInOneLine:
    def test_postgres_unreachable(self, make_confdir):
        """`serve` against a PostgreSQL that does not answer exits 75 with one line naming
        gateway.database (password hidden) and the reason; no traceback."""
        with socket.socket() as s:          # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"postgresql+psycopg://postgres:pw@127.0.0.1:{port}/deskgate"
        conf = make_confdir({"50-db.toml": f'[gateway]\ndatabase = "{url}"\n'})
        assert cli(conf, "check").returncode == 0
        r = cli(conf, "serve")
        assert r.returncode == 75, r.stderr
        assert "Traceback" not in r.stderr
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("serve:")]
        assert line.startswith(f"serve: gateway.database (postgresql+psycopg://postgres:***@"
                               f"127.0.0.1:{port}/deskgate): ")
        assert "refused" in line.lower() or "failed" in line.lower(), line


class TestCreatedFilesArePrivate:
    def test_sqlite_files_and_outbox_under_umask_022(self, make_confdir):
        """Under umask 022 (outside systemd) `serve` creates deskgate.db, -wal and -shm
        0600 and writes outbox Maildir files 0640; `deliver` and `send` reach them."""
        conf = make_confdir({"40-relay.toml": '[relay]\nmode = "maildir"\n'
                                              'maildir = "var/outbox"\npoll_interval = "100ms"\n'})
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(conf), "serve"],
                                cwd=conf.parent, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)},
                                preexec_fn=lambda: os.umask(0o022))
        try:
            var = conf.parent / "var"
            deadline = time.monotonic() + 60
            while not (var / "run" / "lmtp.sock").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            r = cli(conf, "send", "--queue", "Support",
                    stdin=b"From: agent@internal.test\nTo: c@customer.test\nSubject: x\n\nhi\n")
            assert r.returncode == 0, r.stderr
            new = var / "outbox" / "new"
            while not (new.is_dir() and any(new.iterdir())) and time.monotonic() < deadline:
                time.sleep(0.1)
            files = list(new.iterdir())
            assert files, "nothing written to the outbox"
            assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o640}
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in var.glob("deskgate.db*")}
            assert {"deskgate.db", "deskgate.db-wal", "deskgate.db-shm"} <= set(modes), modes
            assert set(modes.values()) == {0o600}, modes
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


INLINE = '[relay]\nhost = "127.0.0.1"\nuser = "gw"\npassword = "s3cret"\n'


class TestInlineSecretsInReadableFiles:
    def test_check_warns_and_passes(self, make_confdir):
        """`check` warns about an inline password in a 0644 file (text and --json), names
        the file, its mode and the fix, never the secret, and still exits 0; at 0600 the
        warning is gone."""
        conf = make_confdir({"50-relay.toml": INLINE})
        (conf / "50-relay.toml").chmod(0o644)
        r = cli(conf, "check")
        assert r.returncode == 0, r.stderr
        assert r.stderr.startswith(f"warning: relay.password: {conf / '50-relay.toml'} "
                                   "(mode 0644) holds the secret inline and others may read "
                                   "it: chmod 600 it"), r.stderr
        assert "password_file" in r.stderr
        j = cli(conf, "check", "--json")
        assert j.returncode == 0
        report = json.loads(j.stdout)
        assert report["ok"] is True
        assert [w["key"] for w in report["warnings"]] == ["relay.password"]
        assert "s3cret" not in r.stderr + r.stdout + j.stdout
        (conf / "50-relay.toml").chmod(0o600)
        assert json.loads(cli(conf, "check", "--json").stdout)["warnings"] == []

    def test_serve_logs_the_warning_at_start(self, make_confdir, tmp_path):
        """`serve` starts and logs the same warning (key, reason) before it serves."""
        conf = make_confdir({"50-relay.toml": '[gateway]\nlog_format = "json"\n' + INLINE})
        (conf / "50-relay.toml").chmod(0o604)
        out = tmp_path / "serve.log"
        with out.open("wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "-c", str(conf), "serve"],
                                    cwd=conf.parent, stdout=fh, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            records: list[dict[str, object]] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
                records = [json.loads(x) for x in out.read_text().splitlines()
                           if x.startswith("{")]
                if any(r.get("event") == "deskgate serving" for r in records):
                    break
            events = [r.get("event") for r in records]
            assert "deskgate serving" in events, out.read_text()[-2000:]
            warned = [r for r in records if r.get("key") == "relay.password"]
            assert len(warned) == 1, records
            assert warned[0]["level"] == "warning"
            assert "(mode 0604) holds the secret inline and others may read it" in str(
                warned[0]["reason"])
            assert events.index(warned[0]["event"]) < events.index("deskgate serving")
            assert "s3cret" not in out.read_text()
        finally:
            stop_serve(proc)
