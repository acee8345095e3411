"""handoff.earlier_attempts: attempts made before an admin's retry

`deskgate handoff retry` kept a row's attempt count, so a row that had run out
of its schedule failed again after one more failure (or went on at the
schedule's longest interval). A retry now starts a fresh cycle (attempts = 0)
and moves the count here, so the next attempt still knows the row was tried
before (REST connectors look for what an earlier attempt may have created).

Revision ID: 0012_handoff_earlier_attempts
Revises: 0011_poller_retry
Create Date: 2026-12-06 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012_handoff_earlier_attempts'
down_revision = '0011_poller_retry'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('handoff', schema=None) as batch_op:
        batch_op.add_column(sa.Column('earlier_attempts', sa.Integer(), nullable=False,
                                      server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('handoff', schema=None) as batch_op:
        batch_op.drop_column('earlier_attempts')
