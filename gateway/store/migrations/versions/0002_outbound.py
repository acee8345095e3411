"""outbound queue: messages, per-recipient outcomes, auto-response counts

Revision ID: 0002_outbound
Revises: 0001
Create Date: 2026-11-26 22:37:26.953428
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002_outbound'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('auto_response',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('ticket_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('outbound_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('sent', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('auto_response', schema=None) as batch_op:
        batch_op.create_index('ix_auto_response_address_sent', ['address', 'sent'], unique=False)

    op.create_table('outbound_message',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('queue', sa.String(length=200), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('return_path', sa.String(length=320), nullable=False),
    sa.Column('submitter', sa.String(length=200), nullable=False),
    sa.Column('message_id', sa.String(length=998), nullable=False),
    sa.Column('ticket_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('article_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.String(length=200), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('warned', sa.Boolean(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbound_message', schema=None) as batch_op:
        batch_op.create_index('ix_outbound_message_due', ['status', 'next_attempt'], unique=False)

    op.create_table('outbound_recipient',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('outbound_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_code', sa.Integer(), nullable=False),
    sa.Column('last_reply', sa.Text(), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['outbound_id'], ['outbound_message.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbound_recipient', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbound_recipient_outbound_id'), ['outbound_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outbound_recipient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbound_recipient_outbound_id'))

    op.drop_table('outbound_recipient')
    with op.batch_alter_table('outbound_message', schema=None) as batch_op:
        batch_op.drop_index('ix_outbound_message_due')

    op.drop_table('outbound_message')
    with op.batch_alter_table('auto_response', schema=None) as batch_op:
        batch_op.drop_index('ix_auto_response_address_sent')

    op.drop_table('auto_response')
