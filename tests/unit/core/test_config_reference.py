"""The configuration keys the code knows, the reference in docs/configuration.md and the
example conf.d agree, and `check` names file, key and reason for an invalid value."""

from __future__ import annotations

import dataclasses
import re
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.config import FilterConfig, load_config
from gateway.config.load import _TopLevel
from gateway.errors import ConfigErrors
from gateway.inbound.filter_compile import _COND_KEYS

REPO = Path(__file__).resolve().parents[3]
REFERENCE = REPO / "docs" / "configuration.md"
# Keys documented on a page of their own instead of configuration.md: key -> page.
OTHER_PAGES: dict[str, str] = {}


def _dataclass_of(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return inner[0] if inner else None


def known_keys() -> list[str]:
    """Every dotted key the loader accepts (`relay.password_file`, `account.oauth2.scope`,
    `filter.match.header`, ...), collected from the section dataclasses."""
    out: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "source":      # filled in by the loader, not a key
                continue
            inner = _dataclass_of(hints[f.name])
            if inner is not None:
                walk(inner, f"{prefix}{f.name}.")
                continue
            name = f.metadata.get("secret", f.name.rstrip("_"))
            out.append(prefix + name)
            if "secret" in f.metadata:
                out.extend([f"{prefix}{name}_file", f"{prefix}{name}_env"])

    walk(_TopLevel, "")
    walk(FilterConfig, "filter.")
    out += [f"filter.match.{k}" for k in sorted(_COND_KEYS)]
    return out


def _documented(key: str, text: str) -> bool:
    """A key is documented when its row names it, or, for `relay.password_file` and
    `filter.match.header`, when the row of its base key or the condition table does."""
    if f"`{key}`" in text:
        return True
    base, _, leaf = key.rpartition(".")
    if leaf.endswith(("_file", "_env")):
        row = re.search(rf"^\| `{re.escape(base)}\.{leaf.rsplit('_', 1)[0]}` \|.*$", text, re.M)
        return row is not None and f"`{leaf}`" in row.group(0)
    if base == "filter.match":
        return re.search(rf"^\| `{re.escape(leaf)}` \|", text, re.M) is not None
    return False


# Tables whose keys are names the administrator chooses, not configuration keys.
_FREE_TABLES = ("postmaster.states", "helpdesk.queues")


def example_keys(text: str) -> list[str]:
    """The dotted keys of an example conf.d file, its commented-out ones included (the
    examples show alternatives, such as a second `mode`, as comments: no TOML parser
    would take them all at once)."""
    keys: list[str] = []
    table = ""
    for line in text.splitlines():
        line = re.sub(r"^# ?(?=\[|[a-z_0-9]+ *=)", "", line.strip())
        header = re.match(r"^\[\[?([a-z_0-9.]+)\]\]?", line)
        if header:
            table = header.group(1)
            if table in _FREE_TABLES:
                keys.append(table)
            continue
        key = re.match(r"^([a-z_0-9]+) *=", line)
        if key and table not in _FREE_TABLES:
            keys.append(f"{table}.{key.group(1)}" if table else key.group(1))
    return keys


EXAMPLES = sorted((REPO / "conf.d").glob("*.toml"))


class TestReferenceCoversTheCode:
    def test_every_known_key_is_in_the_reference(self):
        """Each key the configuration code accepts is named in docs/configuration.md (or
        the page OTHER_PAGES gives for it)."""
        missing = []
        for key in known_keys():
            page = REPO / "docs" / OTHER_PAGES.get(key, "configuration.md")
            if not _documented(key, page.read_text()):
                missing.append(f"{key}: not documented in docs/{page.name}")
        assert missing == [], "\n".join(missing)

    def test_the_collection_sees_every_kind_of_key(self):
        """The keys collected include sections, arrays, nested tables, secret forms and
        filter conditions (so the test above cannot pass by collecting nothing)."""
        keys = set(known_keys())
        assert {"gateway.hostname", "queue.follow_up", "submission.user.password_hash",
                "account.oauth2.refresh_token_file", "relay.password_env",
                "filter.stop_after_match", "filter.match.not"} <= keys
        assert not any(k.endswith("source") for k in keys)

    def test_a_missing_key_is_named(self):
        """The check names the key a reference lacks."""
        assert not _documented("relay.password_file", "| `relay.password` | — | x |")
        assert _documented("relay.password_file",
                           "| `relay.password` | — | also `password_file` |")
        assert not _documented("lmtp.workers", "| `lmtp.listen` | [] | x |")


class TestExampleConfiguration:
    @pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
    def test_every_example_key_is_known_and_documented(self, path):
        """Every key of an example file, its commented-out ones included, is a key the
        loader accepts and is in the reference."""
        keys = example_keys(path.read_text())
        assert keys
        known = set(known_keys())
        assert [k for k in keys if k not in known] == []
        text = REFERENCE.read_text()
        assert [k for k in keys if not _documented(k, text)] == []

    def test_the_examples_load_from_a_copy(self, tmp_path):
        """The shipped conf.d and policies load as they are."""
        shutil.copytree(REPO / "conf.d", tmp_path / "conf.d")
        shutil.copytree(REPO / "policies", tmp_path / "policies")
        cfg = load_config(tmp_path / "conf.d", environ={})
        assert [q.name for q in cfg.queue] == ["Raw", "Support", "Sales", "Junk"]


def errors_of(conf: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf, environ={})
    return [str(e) for e in exc.value.errors]


class TestInvalidValuesNamed:
    """`file: key: reason` for each kind of mistake an administrator makes."""

    def test_wrong_type(self, make_confdir):
        """A string where a number belongs names the type wanted and the value given."""
        conf = make_confdir({"50-x.toml": "[lmtp]\nmax_recipients = \"many\"\n"})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: lmtp.max_recipients: expected an integer, got 'many'"]

    def test_near_miss_spelling(self, make_confdir):
        """A misspelt key gets the key meant."""
        conf = make_confdir({"50-x.toml": "[submission]\nmax_recipient = 10\n"})
        assert errors_of(conf) == [f"{conf / '50-x.toml'}: submission.max_recipient: "
                                   "unknown key (did you mean 'max_recipients'?)"]

    def test_out_of_range(self, make_confdir):
        """A port beyond 65535 says the range."""
        conf = make_confdir({"50-x.toml": "[relay]\nport = 70000\n"})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: relay.port: must be between 1 and 65535"]

    def test_bad_enum(self, make_confdir):
        """A value outside a fixed set lists the set."""
        conf = make_confdir({"50-x.toml": "[relay]\nsecurity = \"ssl\"\n"})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: relay.security: 'ssl' is not one of: none, starttls, tls"]

    def test_key_in_the_wrong_section(self, make_confdir):
        """A key of another section says which section has it."""
        conf = make_confdir({"50-x.toml": "[lmtp]\nallow_networks = [\"10.0.0.0/8\"]\n"})
        assert errors_of(conf) == [f"{conf / '50-x.toml'}: lmtp.allow_networks: unknown key "
                                   "in [lmtp]; allow_networks is a key of [submission]"]

    def test_key_of_several_sections_and_arrays(self, make_confdir):
        """Every section with that key is named, arrays of tables as [[name]]."""
        conf = make_confdir({"50-x.toml": "[gateway]\nmax_message_size = \"10MiB\"\n"})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: gateway.max_message_size: unknown key in [gateway]; "
            "max_message_size is a key of [lmtp], [submission], [[account]]"]

    def test_key_outside_any_section(self, make_confdir):
        """A key above the first [section] is not called an unknown section."""
        conf = make_confdir({"50-x.toml": "hostname = \"mx.example.org\"\n[lmtp]\n"})
        assert errors_of(conf) == [f"{conf / '50-x.toml'}: hostname: a key outside any "
                                   "[section]; hostname is a key of [gateway]"]

    def test_single_brackets_for_an_array_of_tables(self, make_confdir):
        """[account] where [[account]] is meant says so."""
        conf = make_confdir({"50-x.toml": "[account]\nname = \"legacy\"\n"})
        assert errors_of(conf) == [f"{conf / '50-x.toml'}: account: write [[account]] (one "
                                   "per entry), not [account]"]

    def test_double_brackets_for_a_table(self, make_confdir):
        """[[relay]] where [relay] is meant says so."""
        conf = make_confdir({"50-x.toml": "[[relay]]\nhost = \"smtp.example.org\"\n"})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: relay: write [relay], not [[relay]]"]

    def test_unknown_section_keeps_its_suggestion(self, make_confdir):
        """A misspelt section name still gets the section meant."""
        conf = make_confdir({"50-x.toml": "[realy]\nhost = \"x\"\n"})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: realy: unknown section (did you mean 'relay'?)"]


class TestCredentialChecks:
    def test_submission_user_needs_a_hash(self, make_confdir):
        """A submission user whose password_hash is no `deskgate passwd` hash (a
        placeholder, the password itself) is refused: nobody could log in with it."""
        conf = make_confdir({"50-x.toml": "[[submission.user]]\nname = \"app\"\n"
                                          "password_hash = \"...\"\n"})
        assert errors_of(conf) == [f"{conf / '50-x.toml'}: submission.user[0].password_hash: "
                                   "not a hash made by `deskgate passwd`"]

    def test_submission_user_with_a_hash_passes(self, make_confdir):
        """A real hash is accepted."""
        from gateway.passwords import hash_password

        conf = make_confdir({"50-x.toml": "[[submission.user]]\nname = \"app\"\n"
                                          f"password_hash = \"{hash_password('pw', ln=4)}\"\n"})
        assert load_config(conf, environ={}).submission.user[0].name == "app"

    def test_account_with_password_and_oauth2(self, make_confdir):
        """An account with a password and an [account.oauth2] table is refused: the
        password would be ignored without a word."""
        conf = make_confdir({"50-x.toml": """
            [[account]]
            name = "legacy"
            type = "imaps"
            host = "imap.example.org"
            login = "helpdesk"
            password = "secret"
            [account.oauth2]
            token_url = "https://login.example.org/token"
            client_id = "id"
            refresh_token = "rt"
        """})
        assert errors_of(conf) == [
            f"{conf / '50-x.toml'}: account[0].password: give a password (password, "
            "password_file or password_env) or an [account.oauth2] table, not both"]
