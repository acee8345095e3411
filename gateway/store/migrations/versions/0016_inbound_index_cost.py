"""fewer index entries per inbound message

Every index a stored message adds an entry to costs the commit process an
insert into one more B-tree and, once per commit, a page written to the WAL
and synced. Three of them served no standalone lookup:

- ticket.helpdesk_ticket_id and helpdesk_ticket_number are empty until the
  hand-off tells the helpdesk's ticket (and always empty without a helpdesk),
  yet every new ticket added its '' to both indexes. They are now partial
  indexes over the tickets that have a helpdesk ticket; the queries that look
  a ticket up by them say so (`<> ''`), so SQLite and PostgreSQL use them.
- comm_entry.communication_id: the communication log reads a communication's
  entries through its objects (comm_entry.object_id, indexed); the column stays.

And an inbound message's Message-ID, a random key, went into two indexes: the
article's message_id index and the delivery's unique key (content hash,
recipient, Message-ID). Each random key dirties a leaf page of its index in
every commit. The unique key now leads with the Message-ID, so it also finds an
inbound article by Message-ID (through delivery.article_id), and the article's
index holds only the articles deskgate sent (direction <> 'incoming'), which
have no delivery. On SQLite the delivery table is copied once to change its
unique key (a few seconds per million rows).

Revision ID: 0016_inbound_index_cost
Revises: 0015_poller_next_attempt
Create Date: 2026-12-06 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016_inbound_index_cost'
down_revision = '0015_poller_next_attempt'
branch_labels = None
depends_on = None

_HELPDESK = ('helpdesk_ticket_id', 'helpdesk_ticket_number')


def upgrade() -> None:
    for col in _HELPDESK:
        op.drop_index(f'ix_ticket_{col}', table_name='ticket')
        cond = sa.text(f"{col} <> ''")
        op.create_index(f'ix_ticket_{col}', 'ticket', [col], unique=False,
                        sqlite_where=cond, postgresql_where=cond)
    op.drop_index('ix_comm_entry_communication_id', table_name='comm_entry')
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_constraint('uq_delivery', type_='unique')
        batch_op.create_unique_constraint('uq_delivery',
                                          ['message_id', 'content_hash', 'recipient'])
    op.drop_index('ix_article_message_id', table_name='article')
    sent = sa.text("direction <> 'incoming'")
    op.create_index('ix_article_message_id', 'article', ['message_id'], unique=False,
                    sqlite_where=sent, postgresql_where=sent)


def downgrade() -> None:
    op.drop_index('ix_article_message_id', table_name='article')
    op.create_index('ix_article_message_id', 'article', ['message_id'], unique=False)
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_constraint('uq_delivery', type_='unique')
        batch_op.create_unique_constraint('uq_delivery',
                                          ['content_hash', 'recipient', 'message_id'])
    op.create_index('ix_comm_entry_communication_id', 'comm_entry', ['communication_id'],
                    unique=False)
    for col in _HELPDESK:
        op.drop_index(f'ix_ticket_{col}', table_name='ticket')
        op.create_index(f'ix_ticket_{col}', 'ticket', [col], unique=False)
