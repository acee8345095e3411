"""`deskgate tickets redecrypt N`: run the decrypt stage again on the stored raw
message of each incoming article (after a key was imported) and update the
article's body, crypto result and attachments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from gateway.commlog import Comm, write_comm
from gateway.crypto.inbound import decrypt_stage
from gateway.inbound.parse import parse_message
from gateway.model import Envelope, MessageContext
from gateway.runtime import Runtime
from gateway.store.tables import Article, Attachment, Delivery, RawMessage, Ticket


@dataclass
class Redecrypted:
    article_id: int
    crypto: dict[str, Any]
    changed: bool
    attachments: int


def redecrypt_ticket(conn: Connection, rt: Runtime, number: str) -> list[Redecrypted] | None:
    """None when the ticket does not exist; one result per article with crypto."""
    t = conn.execute(select(Ticket.id).where(Ticket.number == number)).first()
    if t is None:
        return None
    rows = conn.execute(select(Article.id, Article.crypto, Article.raw_id, RawMessage.data,
                               RawMessage.sha256)
                        .join(RawMessage, RawMessage.id == Article.raw_id)
                        .where(Article.ticket_id == t.id, Article.direction == "incoming")
                        .order_by(Article.id)).all()
    comm = Comm("Incoming", "CLI", "redecrypt")
    out: list[Redecrypted] = []
    for r in rows:
        raw = bytes(r.data)
        rcpts = tuple(x for (x,) in conn.execute(select(Delivery.recipient).where(
            Delivery.article_id == r.id)).all())
        ctx = MessageContext(envelope=Envelope(mail_from="", recipients=rcpts, raw=raw,
                                               source="CLI", account="redecrypt"),
                             log=comm.obj("Message"))
        ctx.log.article_id = r.id
        ctx.parsed = parse_message(raw)
        decrypt_stage(ctx, rt)
        c = ctx.crypto
        if not (c.encrypted or c.signed or (r.crypto or {}).get("encrypted")):
            ctx.log.close("Successful")
            continue
        p = ctx.parsed
        store_body = rt.config.crypto.store_decrypted_body or not c.decrypted
        body = p.body if store_body else "(encrypted; the decrypted text is not stored)"
        new = c.as_dict()
        changed = new != (r.crypto or {})
        conn.execute(update(Article).where(Article.id == r.id).values(
            body=body, body_html=p.body_html if store_body else None, crypto=new))
        conn.execute(delete(Attachment).where(Attachment.article_id == r.id))
        if p.attachments:
            _insert_attachments(conn, r.id, p.attachments)
        ctx.log.log("Info", "Redecrypt", f"article {r.id}: {new}")
        ctx.log.close("Successful" if not c.error else "Warning")
        out.append(Redecrypted(r.id, new, changed, len(p.attachments)))
    comm.close()
    write_comm(conn, comm)
    return out


def _insert_attachments(conn: Connection, article_id: int, atts: list[Any]) -> None:
    from sqlalchemy import insert

    conn.execute(insert(Attachment), [
        {"article_id": article_id, "filename": a.filename, "content_type": a.content_type,
         "content_id": a.content_id, "disposition": a.disposition, "size": len(a.content),
         "content": a.content} for a in atts])
