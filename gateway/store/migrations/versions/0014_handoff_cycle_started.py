"""handoff.cycle_started: when the current cycle of attempts began

A hand-off interrupted twice in a row is deferred, and failed, by its time in
the outbox; that time was counted from the row's creation, so a row an admin
retried (`deskgate handoff retry`) days later failed at its next two
interruptions. It now counts from the start of the current cycle: the row's
creation, or the last retry by hand. Existing rows start from their creation.

Revision ID: 0014_handoff_cycle_started
Revises: 0013_auto_response_build_retry
Create Date: 2026-12-06 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014_handoff_cycle_started'
down_revision = '0013_auto_response_build_retry'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('handoff', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cycle_started', sa.DateTime(timezone=True),
                                      nullable=True))
    op.execute("UPDATE handoff SET cycle_started = created")
    with op.batch_alter_table('handoff', schema=None) as batch_op:
        batch_op.alter_column('cycle_started', existing_type=sa.DateTime(timezone=True),
                              nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('handoff', schema=None) as batch_op:
        batch_op.drop_column('cycle_started')
