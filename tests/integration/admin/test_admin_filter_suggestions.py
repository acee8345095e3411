"""The filter form suggests the X-header names a filter can set, the FollowUp- ones that
change a follow-up among them."""

from __future__ import annotations

import re

FOLLOWUP = ("State", "State-Keep", "State-PendingTime", "Priority", "Queue", "Title",
            "Type", "Service", "SLA", "Owner", "Responsible", "Lock", "CustomerNo",
            "CustomerUser", "SenderType", "IsVisibleForCustomer")


def suggested(html: str) -> list[str]:
    """The option values of the form's x-headers datalist."""
    m = re.search(r'<datalist id="x-headers">(.*?)</datalist>', html, re.S)
    assert m, html
    return re.findall(r'<option value="([^"]*)">', m.group(1))


class TestSetSuggestions:
    def test_followup_names_are_offered(self, admin_dashboard):
        """FollowUp-State, FollowUp-State-Keep, FollowUp-SenderType, ... are suggested with
        the prefix the plain names have."""
        d = admin_dashboard()
        status, html = d.request("/admin/filter")
        assert status == 200, html
        names = suggested(html)
        assert "X-Deskgate-Queue" in names and "X-Deskgate-IsVisibleForCustomer" in names
        for name in FOLLOWUP:
            assert f"X-Deskgate-FollowUp-{name}" in names, name
        assert len(names) == len(set(names))

    def test_names_without_a_followup_meaning_are_not(self, admin_dashboard):
        """Neither a plain State-Keep (OTOBO has none), the computed names, nor FollowUp-
        forms no follow-up reads (FollowUp-Ignore, -Loop, -Sign, ...) are suggested."""
        d = admin_dashboard()
        names = suggested(d.request("/admin/filter")[1])
        for name in ("State-Keep", "AttachmentCount", "AttachmentExists",
                     "FollowUp-Ignore", "FollowUp-Loop", "FollowUp-BodyDecrypted",
                     "FollowUp-Sign", "FollowUp-Encrypt", "FollowUp-ArticleKey",
                     "FollowUp-AttachmentCount"):
            assert f"X-Deskgate-{name}" not in names, name
