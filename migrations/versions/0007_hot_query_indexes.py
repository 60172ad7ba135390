"""Indexes for the scheduled alert pass: due pending alerts, sent cards awaiting their update, snoozes
that ran out (tests/test_explain.py checks every hot query uses an index)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 10:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_alerts_status_send_after', 'alerts', ['status', 'send_after'], unique=False)
    op.create_index(
        'ix_alerts_updates_due', 'alerts', ['id'], unique=False,
        sqlite_where=sa.text('send_after > sent_at'), postgresql_where=sa.text('send_after > sent_at'),
    )
    op.create_index('ix_tasks_status_snoozed', 'tasks', ['status', 'snoozed_until'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_tasks_status_snoozed', table_name='tasks')
    op.drop_index('ix_alerts_updates_due', table_name='alerts')
    op.drop_index('ix_alerts_status_send_after', table_name='alerts')
