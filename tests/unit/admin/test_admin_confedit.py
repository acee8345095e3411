"""gateway.confedit: edits that keep the files readable, validation before writing,
atomic writes put back whole."""

from __future__ import annotations

import tomllib

import pytest

from gateway import confedit
from gateway.config import load_config

HAND = """\
# hand-written
[[address]]
email = "promo@example.org"  # flyer
queue = "Sales"

# the next one
[[address]]
email = "former@example.org"
"""


@pytest.fixture
def conf(make_confdir):
    c = make_confdir({"20-hand.toml": HAND})
    return c, load_config(c)


class TestUpsert:
    def test_edit_in_place_keeps_comments_and_order(self, conf):
        """A changed key is set where the entry is; comments, order and the next
        table's introduction stay as they were; the change is recorded old → new."""
        c, _cfg = conf
        e = confedit.Edit()
        pos = confedit.upsert(e, section="address", label="address promo@example.org",
                              source=c / "20-hand.toml", owned=c / "50-x.toml",
                              match=lambda t: t.get("email") == "promo@example.org",
                              values={"valid": "invalid", "queue": "Sales"})
        assert pos == 0
        assert e.files[c / "20-hand.toml"] == HAND.replace(
            'queue = "Sales"\n', 'queue = "Sales"\nvalid = "invalid"\n')
        assert e.changes == ["address promo@example.org: valid (unset) → 'invalid'"]

    def test_new_entry_goes_to_the_owned_file(self, conf):
        """Without a source the entry is appended to the owned file (created)."""
        c, _cfg = conf
        e = confedit.Edit()
        owned = c / "50-admin-addresses.toml"
        pos = confedit.upsert(e, section="address", label="a", source=None, owned=owned,
                              match=lambda t: False, values={"email": "n@example.org",
                                                             "comment": ""},
                              defaults={"comment": ""})
        assert pos == 0
        assert tomllib.loads(e.files[owned]) == {"address": [{"email": "n@example.org"}]}
        assert not owned.exists()

    def test_default_value_removes_the_key(self, conf):
        """Setting a key back to its default removes it from the file."""
        c, _cfg = conf
        e = confedit.Edit()
        confedit.upsert(e, section="address", label="a", source=c / "20-hand.toml",
                        owned=c / "50-x.toml", match=lambda t: t.get("email") ==
                        "promo@example.org", values={"queue": ""}, defaults={"queue": ""})
        assert 'queue = "Sales"' not in e.files[c / "20-hand.toml"]
        assert e.changes == ["a: queue 'Sales' → '' (default)"]

    def test_secrets_are_redacted(self):
        """Secret keys show as *** in the change record."""
        assert confedit.shown("password", "hunter2") == "***"
        assert confedit.shown("queue", "Sales") == "'Sales'"

    def test_merged_index_counts_earlier_files(self, conf):
        """The index in error keys counts the entries of the files sorted before."""
        c, cfg = conf
        e = confedit.Edit()
        owned = c / "50-admin-addresses.toml"
        pos = confedit.upsert(e, section="address", label="a", source=None, owned=owned,
                              match=lambda t: False, values={"email": "bad"})
        index = confedit.merged_index(cfg, e, "address", owned, pos)
        assert index == len(cfg.address)
        errors = confedit.validate(cfg, e)
        assert {x.key for x in errors} == {f"address[{index}].email"}


class TestValidateAndWrite:
    def test_validate_reads_replaced_texts_only(self, conf):
        """load_config(replace=...) sees the would-be files; the disk is untouched."""
        c, cfg = conf
        before = {p: p.read_bytes() for p in c.iterdir()}
        e = confedit.Edit(files={c / "50-new.toml": '[[address]]\nemail = "z@example.org"\n'})
        assert confedit.validate(cfg, e) == []
        assert load_config(c, replace=e.files).address_by_email("z@example.org") is not None
        assert {p: p.read_bytes() for p in c.iterdir()} == before

    def test_apply_keeps_mode_and_undo_restores(self, conf):
        """apply writes by rename keeping the mode; undo restores texts, removes new files."""
        c, _cfg = conf
        hand = c / "20-hand.toml"
        hand.chmod(0o640)
        e = confedit.Edit(files={hand: HAND + "\n", c / "50-new.toml": "# new\n"})
        inode = hand.stat().st_ino
        before = confedit.apply(e)
        assert hand.read_text() == HAND + "\n" and hand.stat().st_ino != inode
        assert hand.stat().st_mode & 0o777 == 0o640
        assert not [p for p in c.iterdir() if p.name.endswith(".tmp")]
        confedit.undo(before)
        assert hand.read_text() == HAND and not (c / "50-new.toml").exists()

    def test_symlinked_file_stays_a_symlink(self, conf, tmp_path):
        """A conf.d entry that links elsewhere keeps its link; the target gets the text."""
        c, _cfg = conf
        shared = tmp_path / "etc-shared"
        shared.mkdir()
        target = shared / "hand.toml"
        (c / "20-hand.toml").replace(target)
        target.chmod(0o640)
        (c / "20-hand.toml").symlink_to(target)
        before = confedit.apply(confedit.Edit(files={c / "20-hand.toml": HAND + "# more\n"}))
        link = c / "20-hand.toml"
        assert link.is_symlink() and link.resolve() == target
        assert target.read_text() == HAND + "# more\n"
        assert target.stat().st_mode & 0o777 == 0o640
        assert not [p for p in [*c.iterdir(), *shared.iterdir()] if p.name.endswith(".tmp")]
        confedit.undo(before)
        assert link.is_symlink() and target.read_text() == HAND

    def test_apply_keeps_the_group(self, conf):
        """A file given to the gateway's group keeps that group after a write."""
        import grp
        import os

        c, _cfg = conf
        hand = c / "20-hand.toml"
        other = next((g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid()), None)
        if other is None or os.geteuid() != 0:
            from tests.peers.require import missing_peer

            missing_peer("root and a second group, to give the file away")
        os.chown(hand, -1, other)
        confedit.apply(confedit.Edit(files={hand: HAND + "\n"}))
        assert hand.stat().st_gid == other

    def test_apply_is_all_or_nothing(self, conf, tmp_path):
        """When a later file cannot be written, the earlier ones are put back."""
        c, _cfg = conf
        hand = c / "20-hand.toml"
        e = confedit.Edit(files={hand: "# changed\n", tmp_path / "gone" / "x.toml": "x = 1\n"})
        with pytest.raises(FileNotFoundError):
            confedit.apply(e)
        assert hand.read_text() == HAND


class TestStale:
    def test_edit_knows_when_its_file_changed(self, conf):
        """An edit remembers the texts it read; a change on disk makes it stale."""
        c, _cfg = conf
        e = confedit.Edit()
        confedit.upsert(e, section="address", label="a", source=c / "20-hand.toml",
                        owned=c / "50-x.toml", match=lambda t: t.get("email") ==
                        "promo@example.org", values={"comment": "x"})
        assert e.stale() == []
        (c / "20-hand.toml").write_text(HAND + "# touched\n")
        assert e.stale() == [c / "20-hand.toml"]

    def test_config_version_follows_every_file(self, conf):
        """The version changes when any conf.d or policy file changes."""
        c, cfg = conf
        v1 = confedit.config_version(cfg)
        assert confedit.config_version(cfg) == v1
        (c.parent / "policies" / "010.toml").write_text("# new\n")
        assert confedit.config_version(cfg) != v1
