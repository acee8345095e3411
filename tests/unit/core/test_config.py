"""Configuration loading: merging, validation errors with file/key/reason, value types."""

from __future__ import annotations

import pytest

from gateway.config import load_config, parse_duration, parse_schedule, parse_size
from gateway.errors import ConfigErrors


def errors_of(conf) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf)
    return [str(e) for e in exc.value.errors]


class TestValues:
    def test_sizes(self):
        """Sizes accept binary and decimal units and plain integers."""
        assert parse_size("50MiB") == 50 * 1024 * 1024
        assert parse_size("10 MB") == 10_000_000
        assert parse_size(1024) == 1024
        with pytest.raises(ValueError):
            parse_size("lots")

    def test_durations(self):
        """Durations combine units; garbage is refused."""
        assert parse_duration("10m") == 600
        assert parse_duration("1h30m") == 5400
        assert parse_duration(90) == 90
        with pytest.raises(ValueError):
            parse_duration("10 minutes please")

    def test_retry_schedule(self):
        """'1m, 5m, 1h*2' expands repeats."""
        assert parse_schedule("1m, 5m, 1h*2") == (60, 300, 3600, 3600)
        with pytest.raises(ValueError):
            parse_schedule("1m*0")


class TestMerge:
    def test_files_merge_in_lexical_order(self, make_confdir):
        """Tables merge, [[arrays]] append and a later scalar wins."""
        conf = make_confdir({
            "20-more.toml": """
                [gateway]
                system_id = "42"
                [[queue]]
                name = "Billing"
            """,
            "30-last.toml": """
                [gateway]
                system_id = "77"
            """})
        cfg = load_config(conf)
        assert cfg.gateway.system_id == "77"
        assert cfg.gateway.hostname == "helpdesk.test"
        assert [q.name for q in cfg.queue][-1] == "Billing"
        assert len(cfg.queue) == 5

    def test_relative_paths_resolve_against_parent_of_confd(self, make_confdir):
        """The database path is relative to the directory above conf.d."""
        cfg = load_config(make_confdir())
        assert cfg.database_url == f"sqlite:///{cfg.root}/var/deskgate.db"

    def test_source_file_is_recorded(self, make_confdir):
        """Each address remembers the file it came from."""
        cfg = load_config(make_confdir())
        assert cfg.address[0].source.endswith("10-base.toml")

    def test_secret_from_file_and_env(self, make_confdir, tmp_path):
        """password_file and password_env load secrets that never show in repr()."""
        (tmp_path / "root").mkdir(exist_ok=True)
        (tmp_path / "root" / "pw").write_text("s3cret\n")
        (tmp_path / "root" / "pw").chmod(0o600)
        conf = make_confdir({"50-relay.toml": """
            [relay]
            host = "smtp.test"
            password_file = "pw"
        """})
        cfg = load_config(conf)
        assert cfg.relay.password == "s3cret"
        assert "s3cret" not in repr(cfg.relay)
        conf2 = make_confdir({"50-relay.toml": """
            [relay]
            host = "smtp.test"
            password_env = "DG_TEST_PW"
        """})
        assert load_config(conf2, environ={"DG_TEST_PW": "x1"}).relay.password == "x1"


class TestErrors:
    def test_unknown_key_names_file_key_and_suggestion(self, make_confdir):
        """A typo is an error with file, dotted key and a suggestion."""
        errs = errors_of(make_confdir({"50-typo.toml": "[lmtp]\nmax_mesage_size = '1MB'\n"}))
        assert any("50-typo.toml: lmtp.max_mesage_size: unknown key" in e
                   and "max_message_size" in e for e in errs)

    def test_all_errors_are_reported_at_once(self, make_confdir):
        """Several problems in several files are all listed."""
        errs = errors_of(make_confdir({
            "50-a.toml": "[lmtp]\nunknown_recipient = 'bounce'\n",
            "60-b.toml": "[[address]]\nemail = 'not-an-address'\n",
        }))
        assert any("50-a.toml: lmtp.unknown_recipient:" in e and "reject" in e for e in errs)
        assert any("60-b.toml: address[5].email:" in e for e in errs)

    def test_invalid_toml(self, make_confdir):
        """Broken TOML names the file."""
        errs = errors_of(make_confdir({"50-broken.toml": "[lmtp\n"}))
        assert any("50-broken.toml" in e and "not valid TOML" in e for e in errs)

    def test_queue_using_invalid_address_is_refused(self, make_confdir):
        """An address may only be invalidated when no queue uses it."""
        errs = errors_of(make_confdir({"50-x.toml": """
            [[queue]]
            name = "Legacy"
            address = "old@example.org"
        """}))
        assert any("queue[4].address" in e and "invalidated" in e for e in errs)

    def test_unknown_queue_reference(self, make_confdir):
        """An address pointing to a missing queue is an error."""
        errs = errors_of(make_confdir({"50-x.toml": """
            [[address]]
            email = "x@example.org"
            queue = "Nope"
        """}))
        assert any("address[5].queue" in e and "'Nope'" in e for e in errs)

    def test_plain_imap_needs_allow_plaintext(self, make_confdir):
        """Plain IMAP without TLS must be allowed explicitly."""
        errs = errors_of(make_confdir({"50-acc.toml": """
            [[account]]
            name = "legacy"
            type = "imap"
            host = "imap.test"
            login = "u"
            password = "p"
        """}))
        assert any("account[0].type" in e and "allow_plaintext" in e for e in errs)

    def test_missing_required_key(self, make_confdir):
        """A [[queue]] without a name says which key is missing."""
        errs = errors_of(make_confdir({"50-q.toml": "[[queue]]\ncomment = 'x'\n"}))
        assert any("queue[4].name: required key is missing" in e for e in errs)

    def test_duplicate_filter_names(self, make_confdir):
        """Filter names are unique across policy files."""
        errs = errors_of(make_confdir(policies={
            "a.toml": "[[filter]]\nname = 'x'\nmatch = []\n",
            "b.toml": "[[filter]]\nname = 'x'\nmatch = []\n"}))
        assert any("duplicate filter name" in e for e in errs)


class TestSessionLimitKeys:
    def test_session_limits_are_range_checked(self, make_confdir):
        """max_sessions below 1 (or per-IP below 0) is a config error naming the key."""
        conf = make_confdir({"50-x.toml": "[lmtp]\nmax_sessions = 0\n"
                                          "[submission]\nmax_sessions_per_ip = -1\n"})
        with pytest.raises(ConfigErrors) as exc:
            load_config(conf)
        keys = {e.key for e in exc.value.errors}
        assert {"lmtp.max_sessions", "submission.max_sessions_per_ip"} <= keys


class TestStoreKeys:
    def test_fast_path_defaults_on_and_takes_a_boolean(self, make_confdir):
        """[store] fast_path is true unless set; a value that is not a boolean is refused."""
        assert load_config(make_confdir()).store.fast_path is True
        off = make_confdir({"50-s.toml": "[store]\nfast_path = false\n"})
        assert load_config(off).store.fast_path is False
        errs = errors_of(make_confdir({"50-s.toml": "[store]\nfast_path = 'no'\n"}))
        assert any("50-s.toml: store.fast_path" in e for e in errs)

    def test_unreadable_environment_switch_is_refused(self, make_confdir, monkeypatch):
        """`check` names DESKGATE_STORE_FAST_PATH when it holds something else than on/off."""
        import gateway.store.db  # noqa: F401  (registers the store's validators)

        monkeypatch.setenv("DESKGATE_STORE_FAST_PATH", "sometimes")
        errs = errors_of(make_confdir())
        assert any("store.fast_path" in e and "DESKGATE_STORE_FAST_PATH" in e for e in errs)
        monkeypatch.setenv("DESKGATE_STORE_FAST_PATH", "off")
        assert load_config(make_confdir()).store.fast_path is True   # the file's value


def refused(conf) -> dict[str, str]:
    """key → 'file: key: reason' of every error; fails on anything but ConfigErrors."""
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf)
    return {e.key: str(e) for e in exc.value.errors}


ACCOUNT = """
[[account]]
name = "box"
type = "imaps"
host = "imap.test"
login = "u"
password = "p"
"""


class TestWrongValueTypes:
    def test_listen_given_as_a_string_or_with_numbers(self, make_confdir):
        """A listen address given as a string (not a list) or a list holding a number is
        an error naming the key, not a traceback and not one error per character."""
        errs = refused(make_confdir({"50-x.toml": "[lmtp]\nlisten = 'unix:var/x.sock'\n"
                                                  "[submission]\nlisten = [8587]\n"
                                                  "allow_networks = [1]\n"}))
        assert errs["lmtp.listen"].endswith("lmtp.listen: expected a list of strings, got str")
        assert errs["submission.listen"].endswith("expected a list of strings, got int 8587")
        assert "submission.allow_networks" in errs

    def test_converted_key_of_the_wrong_type(self, make_confdir):
        """A number where a mode or an address is expected says what is expected, and a
        given key is never also reported as missing."""
        errs = refused(make_confdir({"50-x.toml": "[lmtp]\nsocket_mode = 432\n"
                                                  "[[address]]\nemail = 1\n"}))
        assert errs["lmtp.socket_mode"].endswith("expected a string such as '0660', got int")
        assert errs["address[5].email"].endswith("expected a string, got int")
        assert not any("required key is missing" in e for e in errs.values())

    def test_ports_out_of_range(self, make_confdir):
        """relay.port and account.port outside 1..65535 are refused (account 0: default)."""
        errs = refused(make_confdir({"50-x.toml": "[relay]\nport = 70000\n"
                                                  + ACCOUNT + "port = -1\n"}))
        assert errs["relay.port"].endswith("must be between 1 and 65535")
        assert errs["account[0].port"].endswith("must be between 1 and 65535 (0: the default "
                                                "port of the type)")
        ok = make_confdir({"50-x.toml": ACCOUNT + "port = 0\n"})
        assert load_config(ok).account[0].effective_port == 993

    @pytest.mark.parametrize("key", ["gateway.batch_max", "lmtp.max_recipients",
                                     "submission.max_recipients", "relay.concurrency"])
    def test_counts_below_one(self, make_confdir, key):
        """A batch size, recipient limit or concurrency below 1 is refused, not left to
        fail (or be quietly raised to 1) at run time."""
        section, name = key.split(".")
        errs = refused(make_confdir({"50-x.toml": f"[{section}]\n{name} = 0\n"}))
        assert errs[key].endswith(f"{key}: must be at least 1")

    @pytest.mark.parametrize("value", ["[]", "['Foo-']", "['X-Deskgate']"])
    def test_header_prefixes(self, make_confdir, value):
        """header_prefixes needs at least one prefix, each of the form X-...-."""
        errs = refused(make_confdir({"50-x.toml": f"[gateway]\nheader_prefixes = {value}\n"}))
        assert "gateway.header_prefixes" in errs


class TestPolicyDirectory:
    def test_configured_policy_directory_that_does_not_exist(self, make_confdir):
        """[gateway] policies naming a missing directory (or a file) is an error, not a
        configuration without filters."""
        errs = refused(make_confdir({"50-x.toml": "[gateway]\npolicies = 'polices'\n"}))
        assert errs["gateway.policies"].endswith("does not exist or is not a directory")
        conf = make_confdir({"50-x.toml": "[gateway]\npolicies = '10-base.toml'\n"})
        (conf.parent / "10-base.toml").write_text("")
        assert "gateway.policies" in refused(conf)

    def test_default_policy_directory_may_be_missing(self, make_confdir):
        """Without [gateway] policies, no policies/ directory means no filters."""
        conf = make_confdir()
        (conf.parent / "policies").rmdir()
        assert load_config(conf).filters == ()


class TestNamesAndFilterTimeout:
    @pytest.mark.parametrize("name", ["", "  "])
    def test_empty_queue_name(self, make_confdir, name):
        """A [[queue]] whose name is empty (or blank) is an error naming file and key."""
        errs = refused(make_confdir({"50-x.toml": f"[[queue]]\nname = '{name}'\n"}))
        assert errs["queue[4].name"].endswith("50-x.toml: queue[4].name: must not be empty")

    @pytest.mark.parametrize("name", ["", " "])
    def test_empty_filter_name(self, make_confdir, name):
        """A [[filter]] whose name is empty (or blank) is an error naming its policy file."""
        errs = refused(make_confdir(policies={
            "a.toml": "[[filter]]\nname = 'ok'\nmatch = []\n",
            "b.toml": f"[[filter]]\nname = '{name}'\nmatch = []\n"}))
        assert errs["filter[1].name"].endswith("b.toml: filter[1].name: must not be empty "
                                               "(filters run in name order)")

    @pytest.mark.parametrize("value", ["0", "'0s'", "'0ms'", "-1", "'-5ms'"])
    def test_filter_timeout_must_be_positive(self, make_confdir, value):
        """A filter time budget of zero or less is refused, not a budget every pattern
        exceeds."""
        errs = refused(make_confdir({"50-x.toml": f"[postmaster]\nfilter_timeout = {value}\n"}))
        assert errs["postmaster.filter_timeout"].startswith(
            str(make_confdir() / "50-x.toml") + ": postmaster.filter_timeout: ")

    def test_filter_timeout_zero_says_what_is_expected(self, make_confdir):
        """The reason for 0 names the lower bound and an example."""
        errs = refused(make_confdir({"50-x.toml": "[postmaster]\nfilter_timeout = '0s'\n"}))
        assert errs["postmaster.filter_timeout"].endswith(
            "must be more than 0 (a duration such as 50ms)")

    @pytest.mark.parametrize("conf_file, policy_file", [
        ("[[queue]]\nname = ''\n", ""),
        ("", "[[filter]]\nname = ''\nmatch = [{ header = 'From', value = 'y' }]\n"),
        ("[postmaster]\nfilter_timeout = 0\n", ""),
    ], ids=["queue-name", "filter-name", "filter-timeout"])
    def test_reload_refuses_them(self, make_confdir, conf_file, policy_file):
        """A reload that would bring an empty queue name, an empty filter name or a zero
        filter timeout is refused and the running configuration stays."""
        import asyncio

        from gateway.app import Gateway

        conf = make_confdir(policies={"a.toml": "[[filter]]\nname = 'ok'\n"
                                                "match = [{ header = 'Subject', value = 'x' }]\n"})
        gw = Gateway(load_config(conf))
        gw.prepare_store()
        try:
            (conf / "50-x.toml").write_text(conf_file)
            (conf.parent / "policies" / "b.toml").write_text(policy_file)
            assert asyncio.run(gw.reload()) is False
            assert gw.config.postmaster.filter_timeout == 0.05
            assert [f.name for f in gw.config.filters] == ["ok"]
            assert len(gw.config.queue) == 4
        finally:
            gw.close()


BROKEN_FILTER = """
[[filter]]
name = "bad"
stop_after_match = "yes"
comment = 5
[[filter.match]]
header = "Subject"
value = "(["
[filter.set]
"X-Deskgate-Nope" = "x"
"""


class TestBrokenFilterReportedWhole:
    def test_type_errors_and_filter_checks_in_one_run(self, make_confdir):
        """A [[filter]] with wrong value types is still checked: its invalid regular
        expression and unknown X-header are reported in the same run as the type errors,
        each with the policy file, the key and the reason."""
        conf = make_confdir(policies={"10-bad.toml": BROKEN_FILTER})
        where = conf.parent / "policies" / "10-bad.toml"
        errs = errors_of(conf)
        assert errs == [
            f"{where}: filter[bad].stop_after_match: expected true or false, got 'yes'",
            f"{where}: filter[bad].comment: expected a string, got int",
            f"{where}: filter[bad].match[0].value: invalid regular expression '([': "
            "unterminated character set at position 2",
            f"{where}: filter[bad].set.X-Deskgate-Nope: unknown X-header (docs/policies.md "
            "lists them, under X-headers and trust)"], errs

    def test_broken_conditions_are_not_reported_as_missing(self, make_confdir):
        """A filter whose match is not a list of tables gets that error only, not also
        'needs at least one condition' for the conditions it could not read."""
        conf = make_confdir(policies={"10-bad.toml": '[[filter]]\nname = "bad"\n'
                                                     'match = "Subject"\n'})
        where = conf.parent / "policies" / "10-bad.toml"
        assert errors_of(conf) == [f"{where}: filter[bad].match: expected a list, got str"]

    def test_a_filter_without_a_usable_name_is_not_checked_further(self, make_confdir):
        """A filter whose name is not a string reports that, and nothing under a name."""
        conf = make_confdir(policies={"10-bad.toml": BROKEN_FILTER.replace('"bad"', "7")})
        errs = errors_of(conf)
        assert [e.split(": ")[1] for e in errs] == [
            "filter[0].name", "filter[0].stop_after_match", "filter[0].comment"], errs

    def test_each_filter_named_in_its_own_file(self, make_confdir):
        """Filters of two policy files are named by name in every message, each under the
        file that holds it, also when the name has a dot or looks like an index."""
        conf = make_confdir(policies={
            "10-a.toml": '[[filter]]\nname = "first"\nmatch = [{ header = "X", value = "x" }]\n',
            "20-b.toml": BROKEN_FILTER.replace('"bad"', '"spam.rules"')
            + '[[filter]]\nname = "0"\ncomment = 1\nmatch = [{ header = "X", value = "[" }]\n'})
        where = conf.parent / "policies" / "20-b.toml"
        errs = errors_of(conf)
        assert [e for e in errs if "comment" in e] == [
            f"{where}: filter[spam.rules].comment: expected a string, got int",
            f"{where}: filter[0].comment: expected a string, got int"], errs
        assert f"{where}: filter[spam.rules].stop_after_match: expected true or false, got " \
               "'yes'" in errs, errs
        assert all(e.startswith(f"{where}: filter[spam.rules].") or
                   e.startswith(f"{where}: filter[0].") for e in errs), errs

    @pytest.mark.parametrize("name", ["''", "' '"])
    def test_a_filter_with_an_empty_name_is_named_by_index(self, make_confdir, name):
        """A filter whose name is empty is filter[index] in its messages, never filter[]."""
        conf = make_confdir(policies={"10-bad.toml": BROKEN_FILTER.replace('"bad"', name)})
        errs = errors_of(conf)
        assert [e.split(": ")[1] for e in errs] == [
            "filter[0].stop_after_match", "filter[0].comment", "filter[0].name"], errs
