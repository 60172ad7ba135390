"""Everyone's SOP compliance from an index of tasks by kind and due time

The admin's SOP compliance counts the SOP tasks due in the date range. Without an index that starts
with the kind, SQLite read every task ever made (through the owner index): at a million contacts with
650k tasks, 207k of them SOP, 0.28 s for 30 days, growing with the history; from this index 0.09 s.

The tasks table is small next to events (a task per alert or SOP step), so the index is built in the
migration's transaction on both databases (0.5 s for 650k tasks on SQLite).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 10:40:00
"""

from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_tasks_kind_due', 'tasks', ['kind', 'due_at'])


def downgrade() -> None:
    op.drop_index('ix_tasks_kind_due', table_name='tasks')
