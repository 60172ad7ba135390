"""contacts.reach: how far along new → nurturing → mql → sql → customer each contact has got

The dashboards' funnels count contacts by the furthest stage they reached, current or earlier. They
grouped every counted contact's stage_history to find it: at a million contacts, the everyone's-data
overview took 6.6 s. The column keeps it on the contact (0 new … 4 customer; invalid and dormant
keep what came before), and this migration fills it from the current stage and the history, in one
set-based UPDATE of the contacts that got past `new` (on SQLite at a million contacts, a few
seconds with the write lock held).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 06:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

JOURNEY = ('new', 'nurturing', 'mql', 'sql', 'customer')  # as in bot.scoring.stages, frozen here


def _rank(column: str) -> str:
    return 'CASE ' + ' '.join(f"WHEN {column} = '{stage}' THEN {rank}" for rank, stage in enumerate(JOURNEY)) + ' ELSE 0 END'


def upgrade() -> None:
    op.add_column('contacts', sa.Column('reach', sa.SmallInteger(), server_default=sa.text('0'), nullable=False))
    greatest = 'max' if op.get_bind().dialect.name == 'sqlite' else 'GREATEST'
    op.execute(
        f"UPDATE contacts SET reach = {greatest}({_rank('stage')}, "
        f"COALESCE((SELECT MAX({_rank('h.to_stage')}) FROM stage_history h WHERE h.contact_id = contacts.id), 0)) "
        "WHERE stage <> 'new' OR EXISTS (SELECT 1 FROM stage_history h WHERE h.contact_id = contacts.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table('contacts') as batch:
        batch.drop_column('reach')
