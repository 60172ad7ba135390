"""mass_sends and mass_send_recipients: mass sends (群发) of a library item to a segment of contacts

Each send records its segment, message template and what it skipped; each recipient row ties the
contact to the share its own tracked link belongs to (bot/mass_send.py), so a send's opens can be
counted and a customer is not sent two mass messages in one day.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 19:46:45
"""

from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mass_sends',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('item_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('segment', sa.JSON(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('recipients', sa.Integer(), nullable=False),
    sa.Column('skipped', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['content_items.id'], name=op.f('fk_mass_sends_item_id_content_items')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mass_sends'))
    )
    op.create_table('mass_send_recipients',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('mass_send_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('share_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('rep_userid', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_mass_send_recipients_contact_id_contacts')),
    sa.ForeignKeyConstraint(['mass_send_id'], ['mass_sends.id'], name=op.f('fk_mass_send_recipients_mass_send_id_mass_sends')),
    sa.ForeignKeyConstraint(['share_id'], ['shares.id'], name=op.f('fk_mass_send_recipients_share_id_shares')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mass_send_recipients'))
    )
    with op.batch_alter_table('mass_send_recipients', schema=None) as batch_op:
        batch_op.create_index('ix_mass_send_recipients_contact', ['contact_id'], unique=False)
        batch_op.create_index('ix_mass_send_recipients_send', ['mass_send_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('mass_send_recipients', schema=None) as batch_op:
        batch_op.drop_index('ix_mass_send_recipients_send')
        batch_op.drop_index('ix_mass_send_recipients_contact')

    op.drop_table('mass_send_recipients')
    op.drop_table('mass_sends')
