"""Names the configuration gives (queues, display names, accounts, filters, users) are one
line of printable text: a control character in one is refused with its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigErrors

ACCOUNT = ('[[account]]\nname = {name}\ntype = "imaps"\nhost = "imap.test"\nlogin = "l"\n'
           'password = "p"\n')
QUEUE = '[[queue]]\nname = {name}\n'

# (file, TOML with {name} for the name as a TOML string, key of the error, policy file?)
PLACES = {
    "queue": ("50-q.toml", QUEUE, "queue[4].name", False),
    "display_name": ("50-a.toml", '[[address]]\nemail = "x@example.org"\n'
                                  'display_name = {name}\n', "address[5].display_name", False),
    "account": ("50-acc.toml", ACCOUNT, "account[0].name", False),
    "filter": ("100-f.toml", '[[filter]]\nname = {name}\n', "filter[0].name", True),
    "dashboard user": ("50-u.toml", '[[dashboard.user]]\nname = {name}\n'
                                    'password_hash = "$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA"\n',
                       "dashboard.user[0].name", False),
    "submission user": ("50-s.toml", '[[submission.user]]\nname = {name}\n'
                                     'password_hash = "$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA"\n',
                        "submission.user[0].name", False),
    "default queue": ("50-pm.toml", '[postmaster]\ndefault_queue = {name}\n',
                      "postmaster.default_queue", False),
    "helpdesk queue": ("50-hd.toml", '[helpdesk.queues]\nRaw = {name}\n',
                       "helpdesk.queues.Raw", False),
}


def errors_of(conf: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_config(conf)
    return [str(e) for e in exc.value.errors]


class TestControlCharactersInNames:
    @pytest.mark.parametrize("place", sorted(PLACES))
    @pytest.mark.parametrize(("toml_name", "shown"), [
        ('"A\\nB"', "'A\\nB'"), ('"A\\tB"', "'A\\tB'"), ('"A\\u0000B"', "'A\\x00B'"),
        ('"A\\u0085B"', "'A\\x85B'"), ('"A\\u2028B"', "'A\\u2028B'")])
    def test_refused_at_its_file_and_key(self, make_confdir, place, toml_name, shown):
        """A newline, tab, NUL, NEL or line separator in a name is one error at the file and
        key that give it; the reason shows the name escaped, on one line."""
        fname, toml, key, policy = PLACES[place]
        body = toml.format(name=toml_name)
        conf = (make_confdir(policies={fname: body}) if policy
                else make_confdir({fname: body}))
        where = conf.parent / "policies" / fname if policy else conf / fname
        errs = errors_of(conf)
        hits = [e for e in errs if f": {key}: " in e]
        assert hits == [f"{where}: {key}: {shown} contains a control character; a name "
                        "is one line of printable text"], errs
        assert all("\n" not in e and "\t" not in e for e in errs), errs

    def test_printable_names_pass(self, make_confdir):
        """Names with spaces, punctuation and non-ASCII letters are accepted."""
        conf = make_confdir({"50-q.toml": QUEUE.format(name='"Support - 2nd level / Zürich"'),
                             "50-acc.toml": ACCOUNT.format(name='"Büro (alt)"')})
        cfg = load_config(conf)
        assert cfg.queue_by_name("Support - 2nd level / Zürich") is not None
        assert cfg.account_by_name("Büro (alt)") is not None
