"""helpdesk hand-off: the outbox table and the helpdesk's ticket on each ticket

With a helpdesk behind deskgate the ticket number comes from the helpdesk, so
ticket.number may be empty (NULL) until the hand-off tells it.

Revision ID: 0005_helpdesk
Revises: 0004_outbound_article
Create Date: 2026-12-03 08:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005_helpdesk'
down_revision = '0004_outbound_article'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.alter_column('number', existing_type=sa.String(length=40), nullable=True)
        batch_op.add_column(sa.Column('helpdesk_ticket_id', sa.String(length=100),
                                      nullable=False, server_default=''))
        batch_op.add_column(sa.Column('helpdesk_ticket_number', sa.String(length=100),
                                      nullable=False, server_default=''))
        batch_op.create_index('ix_ticket_helpdesk_ticket_number', ['helpdesk_ticket_number'])
        batch_op.create_index('ix_ticket_helpdesk_ticket_id', ['helpdesk_ticket_id'])
    op.create_table('handoff',
    sa.Column('id', BigId, nullable=False),
    sa.Column('ticket_id', BigId, nullable=False),
    sa.Column('article_id', BigId, nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('helpdesk', sa.String(length=30), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.String(length=200), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('decisions', sa.JSON(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key', name='uq_handoff_key'),
    )
    op.create_index('ix_handoff_due', 'handoff', ['status', 'next_attempt'])
    op.create_index('ix_handoff_ticket', 'handoff', ['ticket_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_handoff_ticket', table_name='handoff')
    op.drop_index('ix_handoff_due', table_name='handoff')
    op.drop_table('handoff')
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.drop_index('ix_ticket_helpdesk_ticket_id')
        batch_op.drop_index('ix_ticket_helpdesk_ticket_number')
        batch_op.drop_column('helpdesk_ticket_number')
        batch_op.drop_column('helpdesk_ticket_id')
        batch_op.alter_column('number', existing_type=sa.String(length=40), nullable=False)
