"""poller_account.next_attempt: when deskgate serve polls the account next

The poller kept the time of an account's next run (after a failure: the retry,
a minute and doubling up to the interval) in memory only, so `deskgate fetch
--status` could not say when a failing account is tried again. The poller now
stores it after every run; existing rows have none until their next run.

Revision ID: 0015_poller_next_attempt
Revises: 0014_handoff_cycle_started
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015_poller_next_attempt'
down_revision = '0014_handoff_cycle_started'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('poller_account', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_attempt', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('poller_account', schema=None) as batch_op:
        batch_op.drop_column('next_attempt')
