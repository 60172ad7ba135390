"""event processing state and leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:16:15.989196
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=128), nullable=False),
    sa.Column('locked_until', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_leases'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('processed', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.create_index('ix_events_unprocessed', ['id'], unique=False, sqlite_where=sa.text('processed = 0'), postgresql_where=sa.text('processed = false'))
        batch_op.create_index('ix_events_visitor', ['visitor_id'], unique=False)

    


def downgrade() -> None:
    
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_visitor')
        batch_op.drop_index('ix_events_unprocessed', sqlite_where=sa.text('processed = 0'), postgresql_where=sa.text('processed = false'))
        batch_op.drop_column('processed')

    op.drop_table('leases')
    
