"""`deskgate accounts check` against a real Dovecot: one clear verdict per failure."""

from __future__ import annotations

import json

import pytest

from gateway.cli import main
from tests.conftest import free_port
from tests.integration.inventory.conftest import account_toml
from tests.peers.ca import TestCA

pytestmark = pytest.mark.dovecot


def message(n: int) -> bytes:
    return (f"From: c{n}@customer.test\r\nTo: support@example.org\r\nSubject: check {n}\r\n"
            f"Message-ID: <chk{n}@customer.test>\r\n\r\nbody {n}\r\n").encode()


def check(make_confdir, capsys, *accounts: str, name: str = "box",
          json_out: bool = True) -> tuple[int, object]:
    conf = make_confdir({"50-accounts.toml": "\n".join(accounts)})
    capsys.readouterr()
    rc = main(["--config", str(conf), "accounts", "check", name,
               *(["--json"] if json_out else [])])
    out = capsys.readouterr().out
    return rc, json.loads(out) if json_out else out


def verdicts(result) -> dict[str, bool | None]:
    return {s["step"]: s["ok"] for s in result["steps"]}


def unseen(server, user: str = "helpdesk") -> int:
    c = server.imap(user)
    try:
        c.select("INBOX", readonly=True)
        _, data = c.search(None, "UNSEEN")
        return len(data[0].split())
    finally:
        c.logout()


class TestAccountCheckSuccess:
    @pytest.mark.parametrize("type_", ["imaps", "imaptls", "pop3s", "pop3tls"])
    def test_counts_messages_and_touches_nothing(self, mailbox, make_confdir, capsys, type_):
        """Every step passes, the messages are counted, and they stay on the server unread."""
        mailbox.append("helpdesk", [message(n) for n in range(3)])
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, type_, after_fetch="delete"))
        assert rc == 0
        assert result["ok"] is True and result["messages"] == 3
        assert verdicts(result) == {"dns": True, "tcp": True, "tls": True, "auth": True,
                                    "folder": True}
        assert "verified" in next(s for s in result["steps"] if s["step"] == "tls")["detail"]
        assert mailbox.count("helpdesk") == 3
        assert unseen(mailbox) == 3

    def test_imap_check_opens_the_folder_read_only(self, mailbox, make_confdir, capsys):
        """The check EXAMINEs the folder, so new mail keeps \\Recent for the real poll."""
        mailbox.append("helpdesk", [message(n) for n in range(2)])
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, "imaps", after_fetch="delete"))
        assert rc == 0 and result["messages"] == 2
        c = mailbox.imap("helpdesk")
        try:
            c.select("INBOX", readonly=True)
            _, data = c.search(None, "RECENT")
        finally:
            c.logout()
        assert len(data[0].split()) == 2

    def test_plaintext_account_has_no_tls_verdict(self, mailbox, make_confdir, capsys):
        """A plain imap account allowed without TLS passes with TLS marked not applicable."""
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, "imap", allow_plaintext=True))
        assert rc == 0 and result["ok"] is True
        assert verdicts(result) == {"dns": True, "tcp": True, "tls": None, "auth": True,
                                    "folder": True}

    def test_text_output(self, mailbox, make_confdir, capsys):
        """The text view names every step and ends with the message count."""
        mailbox.append("helpdesk", [message(1)])
        rc, out = check(make_confdir, capsys, account_toml(mailbox, "imaps"), json_out=False)
        assert rc == 0
        lines = out.splitlines()
        assert lines[0].startswith("Account box: imaps 127.0.0.1:")
        assert [ln.split()[0] for ln in lines[1:6]] == ["DNS", "TCP", "TLS", "authentication",
                                                         "folder"]
        assert all(" ok " in ln for ln in lines[1:6])
        assert lines[-1] == "OK: 1 message waiting; nothing was fetched or deleted."
        assert "secret" not in out


class TestAccountCheckFailures:
    def test_wrong_password(self, mailbox, make_confdir, capsys):
        """A refused login fails at authentication, after DNS, TCP and TLS passed."""
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, "imaps", password="wrong-password"))
        assert rc == 1 and result["ok"] is False
        assert verdicts(result) == {"dns": True, "tcp": True, "tls": True, "auth": False,
                                    "folder": None}
        auth = next(s for s in result["steps"] if s["step"] == "auth")
        assert "login as helpdesk refused" in auth["detail"]
        assert "wrong-password" not in json.dumps(result)

    def test_wrong_password_pop3(self, mailbox, make_confdir, capsys):
        """POP3 reports a refused login at authentication too."""
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, "pop3s", password="wrong-password"))
        assert rc == 1
        assert verdicts(result)["auth"] is False and verdicts(result)["tls"] is True

    def test_unknown_ca(self, mailbox, make_confdir, capsys, tmp_path):
        """A server certificate from a CA we do not trust fails at TLS certificate."""
        other = TestCA(tmp_path / "other-ca", name="some other CA")
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, "imaps", tls_ca_file=str(other.ca_path)))
        assert rc == 1
        assert verdicts(result) == {"dns": True, "tcp": True, "tls": False, "auth": None,
                                    "folder": None}
        tls = next(s for s in result["steps"] if s["step"] == "tls")
        assert tls["name"] == "TLS certificate"
        assert "not trusted" in tls["detail"]

    def test_system_store_does_not_trust_test_ca(self, mailbox, make_confdir, capsys):
        """Without tls_ca_file the system store decides, and STARTTLS is verified as well."""
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, "imaptls", tls_ca_file=None))
        assert rc == 1
        assert verdicts(result)["tls"] is False and verdicts(result)["auth"] is None

    def test_missing_folder(self, mailbox, make_confdir, capsys):
        """A folder that does not exist fails at folder, after a successful login."""
        rc, result = check(make_confdir, capsys,
                           account_toml(mailbox, "imaps", folder="Nowhere/Missing"))
        assert rc == 1
        assert verdicts(result) == {"dns": True, "tcp": True, "tls": True, "auth": True,
                                    "folder": False}
        folder = next(s for s in result["steps"] if s["step"] == "folder")
        assert "cannot open folder 'Nowhere/Missing'" in folder["detail"]

    def test_closed_port(self, make_confdir, capsys):
        """Nothing listening fails at TCP with 'refused the connection'."""
        port = free_port()
        rc, result = check(make_confdir, capsys,
                           '[[account]]\nname = "box"\ntype = "imaps"\nhost = "127.0.0.1"\n'
                           f'port = {port}\nlogin = "x"\npassword = "y"\n')
        assert rc == 1
        assert verdicts(result) == {"dns": True, "tcp": False, "tls": None, "auth": None,
                                    "folder": None}
        tcp = next(s for s in result["steps"] if s["step"] == "tcp")
        assert tcp["detail"] == f"127.0.0.1:{port} refused the connection"

    def test_unresolvable_host(self, make_confdir, capsys):
        """A name that does not resolve fails at DNS, before any connection."""
        rc, result = check(make_confdir, capsys,
                           '[[account]]\nname = "box"\ntype = "pop3s"\n'
                           'host = "no-such-host.invalid"\nlogin = "x"\npassword = "y"\n')
        assert rc == 1
        assert verdicts(result) == {"dns": False, "tcp": None, "tls": None, "auth": None,
                                    "folder": None}
        assert "cannot resolve no-such-host.invalid" in result["steps"][0]["detail"]

    def test_failures_are_told_apart(self, mailbox, make_confdir, capsys, tmp_path):
        """Wrong password, unknown CA, missing folder and closed port give different text."""
        other = TestCA(tmp_path / "other-ca", name="some other CA")
        cases = {
            "password": account_toml(mailbox, "imaps", password="nope"),
            "ca": account_toml(mailbox, "imaps", tls_ca_file=str(other.ca_path)),
            "folder": account_toml(mailbox, "imaps", folder="Missing"),
            "port": account_toml(mailbox, "imaps", port=free_port()),
        }
        last_lines = {}
        for key, toml in cases.items():
            rc, out = check(make_confdir, capsys, toml, json_out=False)
            assert rc == 1
            last_lines[key] = out.splitlines()[-1]
        assert last_lines["password"].startswith("FAILED at authentication: ")
        assert last_lines["ca"].startswith("FAILED at TLS certificate: ")
        assert last_lines["folder"].startswith("FAILED at folder: ")
        assert last_lines["port"].startswith("FAILED at TCP: ")

    def test_unknown_account(self, make_confdir, capsys):
        """An account name that is not configured exits 1 (as docs/cli.md says for a failed
        check) and lists the known ones."""
        conf = make_confdir({"50-accounts.toml": '[[account]]\nname = "box"\ntype = "imaps"\n'
                                                 'host = "127.0.0.1"\nlogin = "x"\n'
                                                 'password = "y"\n'})
        assert main(["--config", str(conf), "accounts", "check", "nope"]) == 1
        assert "accounts: box" in capsys.readouterr().err



class TestAccountCheckInDashboard:
    def test_check_button_reports_verdicts(self, mailbox, inventory_dashboard):
        """POST /accounts/check shows every step and the count, or where it broke."""
        mailbox.append("helpdesk", [message(n) for n in range(2)])
        d = inventory_dashboard({"50-accounts.toml": account_toml(mailbox, "imaps") +
                                 account_toml(mailbox, "pop3s", name="badpw",
                                              password="wrong-password")})
        token = d.csrf()
        status, html = d.request("/accounts/check", data={"account": "box", "csrf": token})
        assert status == 200
        assert 'id="verdict" class="ok"' in html
        assert "works: 2 messages waiting" in html
        assert html.count('<td class="ok">ok</td>') == 5
        status, html = d.request("/accounts/check", data={"account": "badpw", "csrf": token},
                                 headers={"Origin": d.base})
        assert status == 200
        assert 'id="verdict" class="Failed"' in html
        assert '<td>authentication</td>\n  <td class="Failed">FAILED</td>' in html
        assert "login as helpdesk refused" in html
        assert "wrong-password" not in html
        assert mailbox.count("helpdesk") == 2
