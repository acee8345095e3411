"""drop two indexes no query uses: raw_message.sha256 and article.from_email

Their keys are random per message (a content hash, a sender address), so each
stored message dirtied one more leaf page of each index in every commit (about
one page in eight of an inbound commit's WAL writes) for lookups that nothing
makes: the dedupe uses delivery's unique key, the follow-up participant check
reads the ticket's articles by ticket_id.

Revision ID: 0008_drop_unused_indexes
Revises: 0007_auto_response_request
Create Date: 2026-12-04 21:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0008_drop_unused_indexes'
down_revision = '0007_auto_response_request'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('raw_message', schema=None) as batch_op:
        batch_op.drop_index('ix_raw_message_sha256')
    with op.batch_alter_table('article', schema=None) as batch_op:
        batch_op.drop_index('ix_article_from_email')


def downgrade() -> None:
    with op.batch_alter_table('article', schema=None) as batch_op:
        batch_op.create_index('ix_article_from_email', ['from_email'], unique=False)
    with op.batch_alter_table('raw_message', schema=None) as batch_op:
        batch_op.create_index('ix_raw_message_sha256', ['sha256'], unique=False)
