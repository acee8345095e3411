"""auto_response_request.attempts, next_attempt, last_error: crashed builds back off

A request whose build crashed was built again on every pass of the sender, for
as long as it ran. Crashed builds are now counted and retried on relay.retry;
when it runs out the request is given up (an Error in the communication log).

Revision ID: 0013_auto_response_build_retry
Revises: 0012_handoff_earlier_attempts
Create Date: 2026-12-06 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013_auto_response_build_retry'
down_revision = '0012_handoff_earlier_attempts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('auto_response_request', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('next_attempt', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('last_error', sa.Text(), nullable=False,
                                      server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('auto_response_request', schema=None) as batch_op:
        batch_op.drop_column('last_error')
        batch_op.drop_column('next_attempt')
        batch_op.drop_column('attempts')
