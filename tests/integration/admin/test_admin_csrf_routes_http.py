"""Every state-changing dashboard request is a POST carrying the form's CSRF token:
checked over HTTP for every POST route the running dashboard has, and for every form
its pages show."""

from __future__ import annotations

import re

from tests.integration.admin.conftest import ADMIN


def _routes(d) -> list[tuple[str, str]]:
    dash = next(s for s in d.rg.gateway.services if s.name == "dashboard")
    return [(r.method, r.resource.canonical) for r in dash.app.router.routes()  # type: ignore[attr-defined]
            if r.resource is not None]


class TestEveryPost:
    def test_every_post_route_needs_the_token_and_changes_nothing(self, admin_dashboard):
        """An admin's POST to each route without the CSRF token, with the token of
        another login session, or with its own from another site, is refused with 403
        and no configuration file changes."""
        d = admin_dashboard()
        posts = sorted({path for method, path in _routes(d) if method == "POST"})
        assert {"/admin/address", "/accounts/check", "/logout"} <= set(posts)
        before = d.digest()
        good = d.csrf(ADMIN)
        other = d.csrf(ADMIN, session="another browser")
        assert other != good
        for path in posts:
            data = {"action": "save", "name": "x", "email": "x@example.org",
                    "account": "x", "original": ""}
            status, _ = d.request(path, data=data)
            assert status == 403, (path, status)
            status, _ = d.request(path, data={**data, "csrf": other})
            assert status == 403, (path, status)
            status, _ = d.request(path, data={**data, "csrf": good},
                                  headers={"Sec-Fetch-Site": "cross-site"})
            assert status == 403, (path, status)
            status, _ = d.request(path, data={**data, "csrf": good},
                                  headers={"Origin": "http://evil.test"})
            assert status == 403, (path, status)
        assert d.digest() == before

    def test_every_post_form_carries_the_token(self, admin_dashboard):
        """Each form on every page (admin's view) that posts has the csrf field; the
        others are GET searches."""
        d = admin_dashboard()
        pages = sorted({path for method, path in _routes(d)
                        if method == "GET" and "{" not in path
                        and path not in ("/", "/metrics", "/healthz")})
        forms = 0
        for path in pages:
            status, body = d.request(path)
            assert status == 200, path
            for form in re.findall(r"<form\b.*?</form>", body, re.S):
                method = re.search(r'method="(\w+)"', form)
                assert method, (path, form[:200])
                if method.group(1).lower() == "post":
                    forms += 1
                    assert re.search(r'name="csrf" value="[0-9a-f]{64}"', form), (path, form)
                else:
                    assert method.group(1).lower() == "get", (path, form[:200])
        assert forms >= 4
