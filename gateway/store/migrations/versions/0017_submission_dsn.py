"""the DSN parameters of submitted mail (RFC 3461)

The submission listener takes RET and ENVID with MAIL FROM and NOTIFY and ORCPT
with each RCPT TO; the relay decides by them which delivery status notifications
the sender gets, what a failure notice returns, and what it passes on to a next
hop that announces DSN. They are kept with the queued message
(outbound_message.dsn_ret, dsn_envid) and each recipient
(outbound_recipient.dsn_notify, dsn_orcpt); '' is "not given", which is what
every existing row and every message from another source has, and behaves as
before.

Revision ID: 0017_submission_dsn
Revises: 0016_inbound_index_cost
Create Date: 2026-12-06 12:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017_submission_dsn'
down_revision = '0016_inbound_index_cost'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbound_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dsn_ret', sa.String(4), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('dsn_envid', sa.String(100), nullable=False,
                                      server_default=''))
    with op.batch_alter_table('outbound_recipient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dsn_notify', sa.String(30), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('dsn_orcpt', sa.String(500), nullable=False,
                                      server_default=''))


def downgrade() -> None:
    # Dropped in place (SQLite 3.35 and later can): the table copy a batch would make on
    # SQLite drops outbound_message, whose ON DELETE CASCADE would empty
    # outbound_recipient of every queued message.
    with op.batch_alter_table('outbound_recipient', schema=None,
                              recreate='never') as batch_op:
        batch_op.drop_column('dsn_orcpt')
        batch_op.drop_column('dsn_notify')
    with op.batch_alter_table('outbound_message', schema=None,
                              recreate='never') as batch_op:
        batch_op.drop_column('dsn_envid')
        batch_op.drop_column('dsn_ret')
