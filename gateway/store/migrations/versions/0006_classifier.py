"""classifier: the decision recorded on each ticket, and agents' queue moves

Revision ID: 0006_classifier
Revises: 0005_helpdesk
Create Date: 2026-12-03 08:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006_classifier'
down_revision = '0005_helpdesk'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.add_column(sa.Column('classification', sa.JSON(), nullable=False,
                                      server_default=sa.text("'{}'")))
    op.create_table('ticket_move',
    sa.Column('id', BigId, nullable=False),
    sa.Column('ticket_id', BigId, nullable=False),
    sa.Column('from_queue', sa.String(length=200), nullable=False),
    sa.Column('to_queue', sa.String(length=200), nullable=False),
    sa.Column('from_priority', sa.String(length=100), nullable=False),
    sa.Column('to_priority', sa.String(length=100), nullable=False),
    sa.Column('by', sa.String(length=200), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['ticket_id'], ['ticket.id'], ),
    sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_ticket_move_ticket_id', 'ticket_move', ['ticket_id'])
    op.create_index('ix_ticket_move_created', 'ticket_move', ['created'])


def downgrade() -> None:
    op.drop_index('ix_ticket_move_created', table_name='ticket_move')
    op.drop_index('ix_ticket_move_ticket_id', table_name='ticket_move')
    op.drop_table('ticket_move')
    with op.batch_alter_table('ticket', schema=None) as batch_op:
        batch_op.drop_column('classification')
