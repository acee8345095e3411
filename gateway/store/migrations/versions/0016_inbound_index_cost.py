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


def downgrade() -> None:
    op.create_index('ix_comm_entry_communication_id', 'comm_entry', ['communication_id'],
                    unique=False)
    for col in _HELPDESK:
        op.drop_index(f'ix_ticket_{col}', table_name='ticket')
        op.create_index(f'ix_ticket_{col}', 'ticket', [col], unique=False)
