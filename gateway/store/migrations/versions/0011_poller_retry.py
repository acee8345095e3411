"""poller_retry: IMAP keep mode's messages that failed for a reason of their own

A message that failed temporarily (a 451 of the pipeline while the database
was up) held the keep-mode folder position, so every later run fetched the
messages after it again (duplicates, counted against max_messages_per_run)
until the cap left no room for new mail. The position now moves past it and
the message is kept here, to be tried again by every run until it succeeds.

Revision ID: 0011_poller_retry
Revises: 0010_poller_oversized_limit
Create Date: 2026-12-05 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011_poller_retry'
down_revision = '0010_poller_oversized_limit'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('poller_retry',
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('folder', sa.String(length=500), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('first_failed', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_failed', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account', 'folder', 'key')
    )


def downgrade() -> None:
    op.drop_table('poller_retry')
