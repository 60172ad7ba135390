"""sop enrollments: playbook key, starting stage, trigger, finish time

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-23 10:30:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sop_enrollments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('playbook_key', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('start_stage', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('trigger', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('finished_at', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_sop_enrollments_key_contact', ['playbook_key', 'contact_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sop_enrollments', schema=None) as batch_op:
        batch_op.drop_index('ix_sop_enrollments_key_contact')
        batch_op.drop_column('finished_at')
        batch_op.drop_column('trigger')
        batch_op.drop_column('start_stage')
        batch_op.drop_column('playbook_key')
