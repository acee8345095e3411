"""mailbox poller state

Revision ID: 0003_poller
Revises: 0002_outbound
Create Date: 2026-11-26 22:37:11.365101
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003_poller'
down_revision = '0002_outbound'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('poller_account',
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('last_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_fetched', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_success', sa.DateTime(timezone=True), nullable=True),
    sa.Column('communication_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('account')
    )
    op.create_table('poller_folder',
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('folder', sa.String(length=500), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
    sa.Column('last_uid', sa.BigInteger(), nullable=False),
    sa.Column('changed', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account', 'folder')
    )
    op.create_table('poller_oversized',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('folder', sa.String(length=500), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('sender', sa.Text(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=False),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account', 'folder', 'key', name='uq_poller_oversized')
    )
    with op.batch_alter_table('poller_oversized', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_poller_oversized_account'), ['account'], unique=False)

    op.create_table('poller_seen',
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('uidl', sa.String(length=100), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account', 'uidl')
    )
    op.create_table('poller_token',
    sa.Column('account', sa.String(length=200), nullable=False),
    sa.Column('refresh_token', sa.Text(), nullable=False),
    sa.Column('config_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('changed', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account')
    )


def downgrade() -> None:
    op.drop_table('poller_token')
    op.drop_table('poller_seen')
    with op.batch_alter_table('poller_oversized', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_poller_oversized_account'))

    op.drop_table('poller_oversized')
    op.drop_table('poller_folder')
    op.drop_table('poller_account')
