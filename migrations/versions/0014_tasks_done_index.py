"""Everyone's tasks done in a date range from an index alone

The admin's rep leaderboard counts the tasks done in the range per owner (and on time), and takes
their creation and completion times for the follow-up speed. SQLite drove both statements by the
status index and read each done task's row: at a million contacts (650k tasks, 99k of them done in
the 30 days), 0.15 s each. This index starts with the completion time and holds every column the two
statements read, so they are answered from it alone (0.06 s each). A team's statements keep the owner
index.

Tasks are few next to events (a task per alert or SOP step), so the index is built in the migration's
transaction on both databases.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 11:00:00
"""

from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_tasks_completed_cover', 'tasks', ['completed_at', 'status', 'owner_userid', 'due_at', 'kind', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_tasks_completed_cover', table_name='tasks')
