"""The dashboard's address form refuses an e-mail address with a control character or a
space at its field, as `deskgate check` refuses it in the files."""

from __future__ import annotations

import re

import pytest


@pytest.mark.parametrize(("email", "words"), [
    ("\x00@example.org", "contains a control character (\\x00)"),
    ("new@example.org\r\nx", "contains a control character (\\r)"),
    ("a\x7fb@example.org", "contains a control character (\\x7f)"),
    ("a b@example.org", "contains a space"),
    ("ab\u00a0@example.org", "contains a space (\\xa0)"),
])
def test_address_form_refuses_control_characters_and_spaces(admin_dashboard, email, words):
    """422 with the reason at the email field; no file changes and no address is added."""
    d = admin_dashboard()
    before = d.digest()
    status, html = d.request("/admin/address", data={
        "csrf": d.csrf(), "original": "", "email": email, "queue": "Raw",
        "valid": "valid", "display_name": "", "comment": ""})
    assert status == 422, html
    m = re.search(r'id="error-email">([^<]*)<', html)
    assert m and words in m.group(1), html
    assert d.digest() == before
    assert d.rg.gateway.config.address_by_email(email) is None
