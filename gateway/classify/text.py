"""The text the classifier learns from and predicts on: subject + what the customer wrote.

Quoted replies, "On ... wrote:" tails, forwarded header blocks and signatures are
cut, so a reply does not carry the vocabulary of the mail it quotes. Pure Python:
training and inference must see exactly the same text.
"""

from __future__ import annotations

import re

# Where the customer's own text ends: a reply header of a mail client, or a signature.
_TAIL = re.compile(
    r"^\s*(?:"
    r"on\b.{0,200}\bwrote:?"                                 # English clients
    r"|am\b.{0,200}\bschrieb\b.{0,200}"                      # German
    r"|le\b.{0,200}\ba [ée]crit ?:?"                         # French
    r"|el\b.{0,200}\bescribi[óo]:?"                          # Spanish
    r"|-{2,}\s*(?:original message|urspr[üu]ngliche nachricht|message d'origine"
    r"|mensaje original|forwarded message|weitergeleitete nachricht)\s*-{2,}"
    r"|_{10,}"                                               # Outlook's rule
    r"|(?:from|von|de|sent|gesendet):\s.*"                   # a quoted header block
    r"|--\s?"                                                # signature separator
    r"|(?:best|kind|warm)\s+regards,?|regards,?|thanks(?: and regards)?,?|cheers,?"
    r"|mit freundlichen gr[üu](?:ß|ss)en,?|viele gr[üu](?:ß|ss)e,?|beste gr[üu](?:ß|ss)e,?"
    r"|cordialement,?|bien [àa] vous,?|saludos,?|atentamente,?"
    r")\s*$", re.IGNORECASE)

MAX_CHARS = 4000


def customer_text(body: str) -> str:
    """The customer's own lines of a body: quoted lines (>) dropped, the tail cut."""
    out: list[str] = []
    for line in body.splitlines():
        if line.lstrip().startswith(">"):
            continue
        if out and _TAIL.match(line):
            break
        out.append(line)
    return "\n".join(out).strip()


def message_text(subject: str, body: str, body_html: str | None = None) -> str:
    """Subject and normalised body, as one string of at most MAX_CHARS."""
    if not body.strip() and body_html:
        from gateway.inbound.parse import html_to_text

        body = html_to_text(body_html)
    subject = re.sub(r"^\s*(?:(?:re|aw|fw|fwd|wg|tr|sv)\s*:\s*)+", "", subject, flags=re.I)
    return (subject + "\n" + customer_text(body))[:MAX_CHARS]
