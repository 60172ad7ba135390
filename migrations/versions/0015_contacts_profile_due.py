"""contacts.profile_due_at: contacts whose WeCom profile (name, company, title) is still to be fetched

A contact Beacon first sees by its external_userid anywhere but the contact-added callback (a share
made through the API or the sidebar, a chat command, a kf customer, a link opened after OAuth) was
kept nameless: alerts, to-do lists and digests named it by its id. Such contacts are now marked
due, and a background worker (bot/profiles.py) fetches `externalcontact/get` for them. This
migration marks the contacts already known only by their id, so the worker names them too. The
partial index holds only the due contacts: the worker's query reads nothing else.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 17:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('contacts', sa.Column('profile_due_at', sa.DateTime(), nullable=True))
    op.execute(
        "UPDATE contacts SET profile_due_at = created_at "
        "WHERE external_userid IS NOT NULL AND name = '' AND merged_into_id IS NULL AND erased_at IS NULL"
    )
    op.create_index('ix_contacts_profile_due', 'contacts', ['profile_due_at'],
                    sqlite_where=sa.text('profile_due_at IS NOT NULL'), postgresql_where=sa.text('profile_due_at IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_contacts_profile_due', table_name='contacts')
    with op.batch_alter_table('contacts') as batch:
        batch.drop_column('profile_due_at')
