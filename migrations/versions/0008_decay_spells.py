"""Inactivity decay as one ledger row per quiet spell: score_ledger.quiet_since and its unique index

Decay used to add a ledger row per contact per quiet day (86 % of a synthetic company's ledger).
Rows written before this revision keep quiet_since NULL: they stay valid entries (a contact's score
is still the sum of its rows), and the next tick opens a spell row. `python -m bot rescore` rewrites
a contact's ledger with one row per spell.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 07:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('score_ledger', sa.Column('quiet_since', sa.Date(), nullable=True))  # no table copy
    op.create_index(
        'ux_score_ledger_quiet_spell', 'score_ledger', ['contact_id', 'model', 'quiet_since'], unique=True,
        sqlite_where=sa.text('quiet_since IS NOT NULL'), postgresql_where=sa.text('quiet_since IS NOT NULL'),
    )


def downgrade() -> None:
    op.drop_index('ux_score_ledger_quiet_spell', table_name='score_ledger')
    with op.batch_alter_table('score_ledger') as batch:
        batch.drop_column('quiet_since')
