"""After a save on the admin pages the page says what the reload said: the settings
changed in conf.d that keep their running value until a restart, or why the gateway
refused the reload (as `deskgate reload` prints them)."""

from __future__ import annotations

import re

from gateway import app as app_module
from gateway.errors import ConfigError, ConfigErrors
from tests.integration.admin.test_admin_http import form


def restart_keys(html: str) -> list[str]:
    m = re.search(r'<ul id="restart-needed">(.*?)</ul>', html, re.S)
    return re.findall(r"<li><code>([^<]+)</code></li>", m.group(1)) if m else []


class TestRestartNeeded:
    def test_a_save_names_the_settings_that_need_a_restart(self, admin_dashboard):
        """lmtp.workers and dashboard.listen were changed by hand in conf.d: the next
        save reloads, applies the address and names both on the page; a save after
        it (nothing more changed by hand) names none."""
        d = admin_dashboard()
        # The test gateway listens where conf.d does not say; take conf.d's as running.
        assert d.rg.call(d.rg.gateway.reload()) is True
        (d.conf / "70-hand.toml").write_text("[lmtp]\nworkers = 3\n")
        status, html = d.request("/admin/address", data=form(
            d, email="first@example.org", queue="Sales"))
        assert status == 200, html
        assert "Saved, checked and reloaded." in html
        assert restart_keys(html) == ["lmtp.workers"], html
        assert "systemctl restart deskgate" in html
        assert d.rcpt("first@example.org") == 250       # the rest was applied

        status, html = d.request("/admin/address", data=form(
            d, email="second@example.org", queue="Sales"))
        assert status == 200, html
        assert 'id="restart-needed"' not in html, html


class TestRefused:
    def test_the_gateways_reason_is_shown(self, admin_dashboard, monkeypatch):
        """The gateway refuses the reload (its runtime does not build): the files are
        put back and the page says why, escaped, not only "see the log"."""
        d = admin_dashboard()
        before = d.digest()

        def refuse(cfg):
            raise ConfigErrors([ConfigError("conf.d/80-x.toml", "queue",
                                            "<b>no such queue</b> 'Nowhere'")])

        monkeypatch.setattr(app_module, "build_runtime", refuse)
        status, html = d.request("/admin/address", data=form(
            d, email="third@example.org", queue="Sales"))
        monkeypatch.undo()
        assert status == 422, html
        assert "refused to reload" in html
        assert "conf.d/80-x.toml: queue: &lt;b&gt;no such queue&lt;/b&gt;" in html, html
        assert "<b>no such queue" not in html
        assert d.digest() == before


class TestKeysPage:
    def test_a_key_import_names_the_settings_that_need_a_restart(self, admin_dashboard,
                                                                tmp_path):
        """The keys page reloads the gateway too: an S/MIME import while conf.d holds
        a changed lmtp.workers names it on the page."""
        from tests.integration.admin.test_admin_keys import upload
        from tests.integration.crypto.crypto_helpers import openssl
        from tests.peers.ca import TestCA

        d = admin_dashboard()
        assert d.rg.call(d.rg.gateway.reload()) is True
        (d.conf / "70-hand.toml").write_text("[lmtp]\nworkers = 3\n")
        issued = TestCA(tmp_path / "ca").issue("Sales", emails=("sales@example.org",))
        p12 = openssl("pkcs12", "-export", "-in", str(issued.cert), "-inkey",
                      str(issued.key), "-passout", "pass:p12-pass").stdout
        status, html = upload(d, {"action": "smime-import", "passphrase": "p12-pass"},
                              {"cert": ("sales.p12", p12)})
        assert status == 200, html
        assert 'id="done"' in html
        assert restart_keys(html) == ["lmtp.workers"], html
