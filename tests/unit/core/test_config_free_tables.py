"""[postmaster.states] and [helpdesk.queues] take names the administrator chooses. A key
of the section above them written below their header (TOML puts it into the table) is
named as such by `check`, at the key it was written as."""

from __future__ import annotations

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors

NO_AUTO = r"(MAILER-DAEMON|postmaster|abuse)@.+?\..+?"


def errors_of(conf) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf, environ={})
    return [str(e) for e in exc.value.errors]


HINT = ("{key} is a key of [{section}]: a key below the [{table}] header belongs to that "
        "table; write it above the header")


class TestKeysBelowAFreeTable:
    def test_no_auto_response_below_the_states(self, make_confdir):
        """The [postmaster] example of the design puts no_auto_response after the
        [postmaster.states] header: `check` says where the key belongs instead of
        only calling the regex a bad state type."""
        conf = make_confdir({"50-x.toml": f"""
            [postmaster.states]
            "new" = "new"
            "open" = "open"
            no_auto_response = '{NO_AUTO}'
            """})
        hint = HINT.format(key="no_auto_response", section="postmaster",
                           table="postmaster.states")
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: postmaster.states.no_auto_response: state type "
            f"{NO_AUTO!r} is not one of new, open, pending, closed, merged, removed; {hint}"]

    def test_a_value_that_is_no_string_is_named_by_its_key(self, make_confdir):
        """Every entry that is no string is an error at its own key (not one error at
        postmaster.states for the first of them), with the hint for a [postmaster] key."""
        conf = make_confdir({"50-x.toml": """
            [postmaster.states]
            "new" = "new"
            "open" = "open"
            max_emails_per_address_per_day = 40
            "waiting" = 3
            """})
        hint = HINT.format(key="max_emails_per_address_per_day", section="postmaster",
                           table="postmaster.states")
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: postmaster.states.max_emails_per_address_per_day: "
            f"expected a string, got int; {hint}",
            f"{conf / '50-x.toml'}: postmaster.states.waiting: expected a string, got int"]

    def test_a_misspelt_state_type_gets_no_hint(self, make_confdir):
        """A state of its own with a wrong type keeps the plain reason."""
        conf = make_confdir({"50-x.toml": """
            [postmaster.states]
            "new" = "new"
            "open" = "open"
            "waiting" = "pendng"
            """})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: postmaster.states.waiting: state type 'pendng' is not "
            "one of new, open, pending, closed, merged, removed"]

    def test_helpdesk_key_below_the_queue_map(self, make_confdir):
        """ticket_url written after [helpdesk.queues] is not taken for a queue name
        without a word about where it belongs."""
        conf = make_confdir({"50-x.toml": """
            [helpdesk]
            type = "webhook"
            url = "https://helpdesk.example.org/hook"
            secret = "s3cret"
            [helpdesk.queues]
            Support = "Support::L1"
            ticket_url = "https://helpdesk.example.org/ticket/{id}"
            """})
        (conf / "50-x.toml").chmod(0o600)
        hint = HINT.format(key="ticket_url", section="helpdesk", table="helpdesk.queues")
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: helpdesk.queues.ticket_url: queue 'ticket_url' is not "
            f"defined by any [[queue]]; {hint}"]


class TestHelpdeskUrlWithCredentials:
    @pytest.mark.parametrize("url", ["https://deskgate:hunter2@helpdesk.example.org/hook",
                                     "https://deskgate@helpdesk.example.org/hook"])
    def test_is_refused_without_showing_the_password(self, make_confdir, url):
        """helpdesk.url with user[:password]@ was accepted by check; the connectors took
        `user:password@host` for the host name (every hand-off failed: name not known)
        and `helpdesk check` printed the password with the URL. check refuses it, says
        where a REST login and password go, and does not repeat the password."""
        conf = make_confdir({"50-x.toml": f"""
            [helpdesk]
            type = "webhook"
            url = "{url}"
            secret = "s3cret"
            """})
        (conf / "50-x.toml").chmod(0o600)
        errs = errors_of(conf)
        assert errs == [
            f"{conf / '50-x.toml'}: helpdesk.url: a login in the URL (user@ or "
            "user:password@ before the host) is not supported and would be shown with the "
            "URL; remove it (REST: the login goes in helpdesk.user, the password in "
            "password_file or password_env)"], errs
        assert "hunter2" not in "".join(errs)


NO_QUEUES = """
[gateway]
hostname = "helpdesk.test"
state_dir = "var"

[lmtp]
listen = ["unix:var/run/lmtp.sock"]

[postmaster]
default_queue = "Inbox"

[dashboard]
listen = ""
"""
HELPDESK = """
[helpdesk]
type = "webhook"
url = "https://helpdesk.example.org/hook"
secret = "s3cret"
"""
NO_QUEUES += HELPDESK


class TestHelpdeskQueuesWithoutQueues:
    """With no [[queue]] every ticket is in postmaster.default_queue: a [helpdesk.queues]
    entry for another name maps a queue that cannot exist, as with a typo when queues
    are defined."""

    def test_another_queue_is_refused(self, make_confdir):
        conf = make_confdir({"10-base.toml": NO_QUEUES + '[helpdesk.queues]\n'
                             'Inbox = "General"\nSupport = "Support::L1"\n'}, base=False)
        (conf / "10-base.toml").chmod(0o600)
        [err] = errors_of(conf)
        assert err.startswith(f"{conf / '10-base.toml'}: helpdesk.queues.Support: ")
        assert "no [[queue]] is configured" in err and "'Inbox'" in err

    def test_the_default_queue_is_accepted_in_any_case(self, make_confdir):
        conf = make_confdir({"10-base.toml": NO_QUEUES + '[helpdesk.queues]\n'
                             'inbox = "General"\n'}, base=False)
        (conf / "10-base.toml").chmod(0o600)
        hd = load_config(conf).helpdesk
        assert hd.queues == {"inbox": "General"}
        assert hd.helpdesk_queue("Inbox") == "General"     # the mapping applies too

    def test_a_mapping_applies_in_any_case_with_queues_defined(self, make_confdir):
        """check takes [helpdesk.queues] keys in any case; the hand-off maps them so."""
        conf = make_confdir({"50-x.toml": HELPDESK + '[helpdesk.queues]\n'
                             'support = "Support::L1"\n'})
        (conf / "50-x.toml").chmod(0o600)
        hd = load_config(conf, environ={}).helpdesk
        assert hd.helpdesk_queue("Support") == "Support::L1"
        assert hd.helpdesk_queue("Sales") == "Sales"
