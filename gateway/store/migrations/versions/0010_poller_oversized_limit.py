"""poller_oversized.size_limit: the max_message_size a message was left under

In `keep` mode an IMAP folder is read from the last handled UID on, so a message
left on the server as oversized was never listed again, even after the limit was
raised. The runner now remembers the limit and fetches the message once the
configured one is larger. Rows recorded before this revision have no limit
(NULL): the next run looks at them against the current one.

Revision ID: 0010_poller_oversized_limit
Revises: 0009_delivery_article_index
Create Date: 2026-12-05 21:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010_poller_oversized_limit'
down_revision = '0009_delivery_article_index'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('poller_oversized', schema=None) as batch_op:
        batch_op.add_column(sa.Column('size_limit', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('poller_oversized', schema=None) as batch_op:
        batch_op.drop_column('size_limit')
