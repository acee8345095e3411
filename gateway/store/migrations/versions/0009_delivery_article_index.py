"""index delivery.article_id: the hand-off reads an article's recipients by it

The hand-off worker loads the envelope recipients of every article it hands to
the helpdesk (`helpdesk/outbox.py`), and `keys redecrypt` those of each article
it re-imports, with `WHERE delivery.article_id IN (...)`. Without an index both
read the whole delivery table: one row per accepted message and recipient, so
on a store with a year of mail every hand-off batch scanned millions of rows.
Article ids grow with time, so the new index's writes go to its last page.

Revision ID: 0009_delivery_article_index
Revises: 0008_drop_unused_indexes
Create Date: 2026-12-05 04:30:00
"""

from __future__ import annotations

from alembic import op

revision = '0009_delivery_article_index'
down_revision = '0008_drop_unused_indexes'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_article_id', ['article_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_article_id')
