"""index outbound_message.article_id

An article sent as several copies (opportunistic encryption) has one queue row
per copy; whether all of them are sent is looked up by article.

Revision ID: 0004_outbound_article
Revises: 0003_poller
Create Date: 2026-11-27 02:05:00
"""

from __future__ import annotations

from alembic import op

revision = '0004_outbound_article'
down_revision = '0003_poller'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_outbound_message_article_id', 'outbound_message', ['article_id'])


def downgrade() -> None:
    op.drop_index('ix_outbound_message_article_id', table_name='outbound_message')
