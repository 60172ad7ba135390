"""content_items.current_version_id: the foreign key PostgreSQL did not get

The initial schema declared it with use_alter (content_items and content_versions refer to each other);
Alembic's create_table leaves such a constraint out, so PostgreSQL databases lacked it. SQLite kept it
inline and needs nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 12:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_NAME = 'fk_content_items_current_version'


def _has_fk() -> bool:
    fks = sa.inspect(op.get_bind()).get_foreign_keys('content_items')
    return any(fk.get('name') == _NAME for fk in fks)


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite' or _has_fk():
        return
    # Versions pointing nowhere would fail the constraint: clear them first (none are expected).
    op.execute(
        'UPDATE content_items SET current_version_id = NULL WHERE current_version_id IS NOT NULL '
        'AND current_version_id NOT IN (SELECT id FROM content_versions)'
    )
    op.create_foreign_key(_NAME, 'content_items', 'content_versions', ['current_version_id'], ['id'])


def downgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite' and _has_fk():
        op.drop_constraint(_NAME, 'content_items', type_='foreignkey')
