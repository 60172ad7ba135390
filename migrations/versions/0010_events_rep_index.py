"""An index of events by rep, type and time, for the dashboards of a rep or a team

A manager's dashboard counts their team's opens, reads, CTA clicks and downloads, and a rep's their
own. Without an index by rep, each such count read every event of the date range and kept the team's:
at a million contacts and ten million events, 30 days, a team of 11 reps waited 4.1 s for the content
leaderboard and 1.1 s for the rep leaderboard. With it, 0.08 s and 0.02 s.

Building it reads the whole events table (about 15 s per ten million events on SQLite). On PostgreSQL it
is built CONCURRENTLY, outside the migration's transaction: the serving processes keep inserting events
meanwhile. On SQLite the build holds the write lock: run `migrate` when few links are being opened.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 00:30:00
"""

from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.execute('DROP INDEX CONCURRENTLY IF EXISTS ix_events_rep_type_occurred')  # left invalid by an interrupted build
            op.create_index('ix_events_rep_type_occurred', 'events', ['rep_userid', 'type', 'occurred_at'], unique=False,
                            postgresql_concurrently=True)
    else:
        op.create_index('ix_events_rep_type_occurred', 'events', ['rep_userid', 'type', 'occurred_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_events_rep_type_occurred', table_name='events')
