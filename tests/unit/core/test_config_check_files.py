"""The checks that run after loading (DKIM, TLS files, relay, crypto, LMTP group, database,
dashboard) name the conf.d file that holds the key, as the loader's own errors do."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors
from gateway.outbound.dkim import generate_key, key_pem


def errors_of(conf: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf)
    return [str(e) for e in exc.value.errors]


def lines_at(errs: list[str], key: str) -> list[str]:
    return [e for e in errs if f": {key}: " in e]


# file name → (TOML, key, words of the reason)
IN_A_FILE = {
    "20-dkim.toml": ('[[dkim]]\ndomain = "example.org"\nselector = "s1"\n'
                     'key_file = "missing.key"\n', "dkim[0].key_file", "cannot load"),
    "50-tls.toml": ('[submission]\nlisten = ["127.0.0.1:8587"]\ntls_cert = "no.crt"\n'
                    'tls_key = "no.key"\n', "submission.tls_cert", "cannot read"),
    "50-relay.toml": ('[relay]\nmode = "smtp"\nhost = "relay.test"\nuser = "u"\n'
                      'password = "p"\nsecurity = "none"\n', "relay.security", "in clear"),
    "50-crl.toml": ('[crypto]\nsmime_crl_file = "missing-crl.pem"\n', "crypto.smime_crl_file",
                    "cannot read"),
    "50-lmtp.toml": ('[lmtp]\nsocket_group = "no-such-group-here"\n', "lmtp.socket_group",
                     "no group"),
    "50-db.toml": ('[gateway]\ndatabase = "mysql://db/x"\n', "gateway.database",
                   "is not supported"),
    "50-dash.toml": ('[dashboard]\nlisten = "nowhere"\n', "dashboard.listen", "not HOST:PORT"),
    "50-users.toml": ('[[dashboard.user]]\nname = "a"\npassword_hash = "plaintext"\n',
                      "dashboard.user[0].password_hash", "not a hash"),
}


class TestSectionChecksNameTheFile:
    @pytest.mark.parametrize("name", sorted(IN_A_FILE))
    def test_error_starts_with_the_file_that_holds_the_key(self, make_confdir, name):
        """An invalid value in a named file is reported as `<that file>: <key>: <reason>`,
        not under the conf.d directory."""
        toml, key, words = IN_A_FILE[name]
        conf = make_confdir({name: toml})
        errs = lines_at(errors_of(conf), key)
        assert errs, errs
        assert errs[0].startswith(f"{conf / name}: {key}: "), errs
        assert words in errs[0]

    def test_dkim_entry_is_named_by_the_file_that_defined_it(self, make_confdir, tmp_path):
        """[[dkim]] entries from two files: the second file's broken entry (dkim[1]) names
        the second file; the good entry in the first file is not reported."""
        good = tmp_path / "good.pem"
        good.write_bytes(key_pem(generate_key()))
        good.chmod(0o600)
        conf = make_confdir({
            "20-dkim.toml": f'[[dkim]]\ndomain = "example.org"\nselector = "s1"\n'
                            f'key_file = "{good}"\n',
            "30-dkim.toml": '[[dkim]]\ndomain = "example.net"\nselector = "s1"\n'
                            'key_file = "missing.key"\n'})
        errs = errors_of(conf)
        assert errs == [f"{conf / '30-dkim.toml'}: dkim[1].key_file: cannot load "
                        f"{conf.parent / 'missing.key'}: No such file or directory"], errs

    def test_submission_tls_key_not_private(self, make_confdir, tmp_path):
        """A readable tls_key is reported at the file that sets it."""
        key = tmp_path / "k.pem"
        key.write_text("x")
        key.chmod(0o644)
        conf = make_confdir({"60-tls.toml": f'[submission]\nlisten = ["127.0.0.1:8587"]\n'
                                            f'tls_cert = "{key}"\ntls_key = "{key}"\n'})
        errs = lines_at(errors_of(conf), "submission.tls_key")
        assert errs and errs[0].startswith(f"{conf / '60-tls.toml'}: submission.tls_key: ")

    def test_crypto_directories(self, make_confdir, tmp_path):
        """A readable private key in smime_dir and a readable passphrase file in gnupg_home
        are reported at the file that sets those keys."""
        smime = tmp_path / "smime"
        smime.mkdir()
        (smime / "a.key").write_text("x")
        (smime / "a.key").chmod(0o644)
        gnupg = tmp_path / "gnupg"
        (gnupg / "deskgate-passphrases").mkdir(parents=True)
        (gnupg / "deskgate-passphrases" / "ABCD").write_text("x")
        (gnupg / "deskgate-passphrases" / "ABCD").chmod(0o644)
        conf = make_confdir({"40-crypto.toml": f'[crypto]\nsmime_dir = "{smime}"\n'
                                               f'gnupg_home = "{gnupg}"\n'})
        errs = errors_of(conf)
        for key in ("crypto.smime_dir", "crypto.gnupg_home"):
            hits = lines_at(errs, key)
            assert hits and hits[0].startswith(f"{conf / '40-crypto.toml'}: {key}: "), errs

    def test_store_fast_path_named_by_the_file_that_sets_it(self, make_confdir, monkeypatch):
        """A bad DESKGATE_STORE_FAST_PATH is reported at the file that sets store.fast_path
        (which it overrides); the reason names the variable."""
        monkeypatch.setenv("DESKGATE_STORE_FAST_PATH", "sometimes")
        conf = make_confdir({"70-store.toml": "[store]\nfast_path = true\n"})
        errs = lines_at(errors_of(conf), "store.fast_path")
        assert errs and errs[0].startswith(f"{conf / '70-store.toml'}: store.fast_path: ")
        assert "DESKGATE_STORE_FAST_PATH" in errs[0]

    def test_key_no_file_sets_is_named_by_the_directory(self, make_confdir, monkeypatch):
        """A key at its default (no file sets it or its section) is reported under the
        conf.d directory: no file holds it."""
        monkeypatch.setenv("DESKGATE_STORE_FAST_PATH", "sometimes")
        conf = make_confdir()
        errs = lines_at(errors_of(conf), "store.fast_path")
        assert errs and errs[0].startswith(f"{conf}: store.fast_path: "), errs

    def test_policy_and_account_errors_keep_their_files(self, make_confdir):
        """Checks that already name a file (accounts, policy files) are not re-pointed."""
        conf = make_confdir(
            {"50-acc.toml": '[[account]]\nname = "a"\ntype = "imaps"\nhost = "imap.test"\n'
                            'login = "l"\npassword = "p"\ninterval = 0\n'},
            policies={"100-bad.toml": '[[filter]]\nname = "bad"\n[[filter.match]]\n'
                                      'header = "Subject"\nvalue = "(["\n'})
        errs = errors_of(conf)
        assert any(e.startswith(f"{conf / '50-acc.toml'}: account[0].interval: ")
                   for e in errs), errs
        assert any(e.startswith(f"{conf.parent / 'policies' / '100-bad.toml'}: ")
                   for e in errs), errs


class TestConfigNamesTheFileOfAKey:
    def test_file_of_a_key_set_in_a_file(self, make_confdir):
        """Config.file_of gives the conf.d file that sets a key, for a nested key and for an
        entry of an array of tables."""
        conf = make_confdir({"50-db.toml": '[gateway]\ndatabase = "sqlite:///var/x.db"\n',
                             "60-q.toml": '[[queue]]\nname = "Extra"\n'})
        cfg = load_config(conf)
        assert cfg.file_of("gateway.database") == str(conf / "50-db.toml")
        assert cfg.file_of(f"queue[{len(cfg.queue) - 1}].name") == str(conf / "60-q.toml")

    def test_database_origin_of_a_database_no_file_sets(self, make_confdir):
        """With gateway.database set by no file (state_dir at its default), its origin is
        the conf.d directory with a note saying so, not the first [gateway] file."""
        conf = make_confdir()
        cfg = load_config(conf)
        assert cfg.file_of("gateway.database") == str(conf / "10-base.toml")
        assert cfg.database_origin() == (str(conf), (
            f"no file under {conf} sets gateway.database: the default "
            f"sqlite:///{conf.parent}/var/deskgate.db, from gateway.state_dir in "
            f"{conf / '10-base.toml'}"))
        (conf / "10-base.toml").write_text(
            (conf / "10-base.toml").read_text().replace('state_dir = "var"\n', ""))
        assert cfg.database_origin() != load_config(conf).database_origin()
        assert load_config(conf).database_origin()[1].endswith(
            "from gateway.state_dir at its default 'var'")

    def test_database_origin_of_a_set_or_emptied_database(self, make_confdir):
        """A database set in a file is reported there without a note; one set to "" is
        reported at that file, saying it is empty."""
        conf = make_confdir({"50-db.toml": '[gateway]\ndatabase = "sqlite:///x.db"\n'})
        assert load_config(conf).database_origin() == (str(conf / "50-db.toml"), "")
        (conf / "50-db.toml").write_text('[gateway]\ndatabase = ""\n')
        file, why = load_config(conf).database_origin()
        assert file == str(conf / "50-db.toml")
        assert why.startswith("gateway.database is empty: the default sqlite:///"), why
        (conf / "50-db.toml").unlink()      # emptied in the first file with [gateway]
        base = conf / "10-base.toml"
        base.write_text(base.read_text().replace("[gateway]\n", '[gateway]\ndatabase = ""\n'))
        assert load_config(conf).database_origin()[0] == str(base)

    def test_key_no_file_sets_is_the_directory(self, make_confdir):
        """A key whose section no file has is answered with the conf.d directory."""
        conf = make_confdir()
        cfg = load_config(conf)
        assert cfg.file_of("store.fast_path") == str(conf)
