"""auto-response requests: committed with the article, built by the outbound sender

Revision ID: 0007_auto_response_request
Revises: 0006_classifier
Create Date: 2026-12-03 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_auto_response_request'
down_revision = '0006_classifier'
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('auto_response_request',
    sa.Column('id', BigId, nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ticket_id', BigId, nullable=False),
    sa.Column('ticket_number', sa.String(length=100), nullable=False),
    sa.Column('queue', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('counter_id', BigId, nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    )


def downgrade() -> None:
    op.drop_table('auto_response_request')
