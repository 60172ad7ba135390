"""The database schema: typed SQLAlchemy 2 models for the whole domain (see PRODUCT.md).

Relationships are `lazy="raise_on_sql"` so that a hidden lazy load under asyncio fails loudly.
Times are stored as UTC and always come back timezone-aware (`UTCDateTime`).
Alembic (migrations/) is the only way the schema changes; tests build it by running migrations.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates
from sqlalchemy.types import TypeDecorator

from bot.scoring.stages import reach_of

# Integer on SQLite so that the primary key is the rowid (autoincrement); BIGINT on PostgreSQL.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC; returns aware UTC. Rejects naive input so local times never sneak in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.timezone.utc)

    @staticmethod
    def sqlite_text(value: dt.datetime) -> str:
        """`process_bind_param` and SQLite's DATETIME text in one step, for rows that go to the driver
        past SQLAlchemy (bot/batch.py checks it gives what the two processors give)."""
        if value.tzinfo is _UTC:
            return value.isoformat(" ", "microseconds")[:-6]  # drop "+00:00"
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        return value.astimezone(_UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


_UTC = dt.timezone.utc


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


# --- people -------------------------------------------------------------------------------------


class Rep(Base):
    """An internal WeCom member: rep, manager or admin."""

    __tablename__ = "reps"
    userid: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16), default="rep")
    manager_userid: Mapped[str | None] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(String(16), default="config")  # config | wecom | event
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    quiet_start: Mapped[str | None] = mapped_column(String(5))  # "21:00"; None = settings default
    quiet_end: Mapped[str | None] = mapped_column(String(5))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Contact(Base):
    """An external contact (customer). Identities (external_userid, unionid, phone, visitor) merge here."""

    __tablename__ = "contacts"
    __table_args__ = (
        # A channel's contacts counted from the index alone (bot/channels.py CONTACTS_BY_CHANNEL).
        Index("ix_contacts_channel_merged", "channel_id", "merged_into_id"),
        # The contacts whose WeCom profile is still to be fetched, and only those (bot/profiles.py).
        Index("ix_contacts_profile_due", "profile_due_at",
              sqlite_where=text("profile_due_at IS NOT NULL"), postgresql_where=text("profile_due_at IS NOT NULL")),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_userid: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    company: Mapped[str] = mapped_column(String(128), default="")
    title: Mapped[str] = mapped_column(String(128), default="")
    phone: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(128))
    region: Mapped[str] = mapped_column(String(64), default="")
    industry: Mapped[str] = mapped_column(String(64), default="")
    company_size: Mapped[str] = mapped_column(String(32), default="")
    persona: Mapped[str] = mapped_column(String(32), default="")
    profile: Mapped[dict[str, Any]] = mapped_column(default=dict)
    owner_userid: Mapped[str | None] = mapped_column(ForeignKey("reps.userid"), index=True)
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id"))
    referrer_contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    stage: Mapped[str] = mapped_column(String(16), default="new", index=True)
    temperature: Mapped[str] = mapped_column(String(8), default="cold")
    score: Mapped[float] = mapped_column(Float, default=0.0)
    last_activity_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    last_payment_at: Mapped[dt.datetime | None]
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    erased_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Set when Beacon first sees the contact by its external_userid without its WeCom profile (name,
    # company, title): from then until bot/profiles.py has fetched it, or learned WeCom has none.
    profile_due_at: Mapped[dt.datetime | None]

    # The furthest rank in JOURNEY (bot.scoring.stages) the contact has reached, current stage or
    # any earlier one: 0 new … 4 customer; invalid and dormant keep what came before. The dashboards'
    # funnels read it instead of grouping every contact's stage_history (migration 0011). Kept by
    # `_keep_reach` when the ORM sets `stage`; Core writers of a forward stage (rescore, synth) set it
    # with the stage.
    reach: Mapped[int] = mapped_column(SmallInteger, default=0, server_default=text("0"))

    @validates("stage")
    def _keep_reach(self, _key: str, stage: str) -> str:
        rank = reach_of(stage)
        if rank > (self.reach or 0):
            self.reach = rank
        return stage


class Identity(Base):
    """One way of recognising a person; (kind, value) is unique across contacts."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("kind", "value"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))  # external_userid | unionid | phone | visitor | kf
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ContactMerge(Base):
    """A merge of one contact into another, with what moved, so it can be undone."""

    __tablename__ = "contact_merges"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    from_contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    into_contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    reason: Mapped[str] = mapped_column(String(255))
    moved: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    undone_at: Mapped[dt.datetime | None]


class Visitor(Base):
    """A browser seen on tracked links (first-party cookie)."""

    __tablename__ = "visitors"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    cookie_id: Mapped[str] = mapped_column(String(64), unique=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    first_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- content ------------------------------------------------------------------------------------


class ContentItem(Base):
    __tablename__ = "content_items"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(128), unique=True)
    title: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32), index=True)
    stage: Mapped[str] = mapped_column(String(16), index=True)
    personas: Mapped[list[Any]] = mapped_column(default=list)
    industries: Mapped[list[Any]] = mapped_column(default=list)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    gated: Mapped[bool] = mapped_column(Boolean, default=False)
    internal: Mapped[bool] = mapped_column(Boolean, default=False)
    variant_of: Mapped[str | None] = mapped_column(String(128))
    summary: Mapped[str] = mapped_column(Text, default="")
    cover: Mapped[str | None] = mapped_column(String(255))
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("content_versions.id", use_alter=True, name="fk_content_items_current_version")
    )
    retired_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    versions: Mapped[list["ContentVersion"]] = relationship(
        back_populates="item", lazy="raise_on_sql", foreign_keys="ContentVersion.item_id"
    )


class ContentVersion(Base):
    __tablename__ = "content_versions"
    __table_args__ = (UniqueConstraint("item_id", "version"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("content_items.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(255))
    summary: Mapped[str] = mapped_column(Text, default="")
    body_md: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[str] = mapped_column(String(64))
    attachment_name: Mapped[str | None] = mapped_column(String(255))
    attachment_hash: Mapped[str | None] = mapped_column(String(64))
    attachment_size: Mapped[int | None] = mapped_column(Integer)
    attachment_data: Mapped[bytes | None] = mapped_column(deferred=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    item: Mapped[ContentItem] = relationship(
        back_populates="versions", lazy="raise_on_sql", foreign_keys=[item_id]
    )


class Channel(Base):
    """A source of contacts: a WeCom "contact me" QR code with a unique `state`, or a kf entry."""

    __tablename__ = "channels"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(30), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="qr")  # qr | kf | campaign
    config_id: Mapped[str | None] = mapped_column(String(64))
    qr_code: Mapped[str | None] = mapped_column(String(512))
    reps: Mapped[list[Any]] = mapped_column(default=list)
    welcome_item_id: Mapped[int | None] = mapped_column(ForeignKey("content_items.id"))
    welcome_text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Share(Base):
    """A tracked link: unique to (item version, rep, contact or channel). Children are forwards."""

    __tablename__ = "shares"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("content_items.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("content_versions.id"))
    rep_userid: Mapped[str | None] = mapped_column(ForeignKey("reps.userid"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id"))
    parent_share_id: Mapped[int | None] = mapped_column(ForeignKey("shares.id"), index=True)
    visitor_id: Mapped[int | None] = mapped_column(ForeignKey("visitors.id"))
    source: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- behavior and scoring -----------------------------------------------------------------------


# A read to the end (a `read` event of props.depth 100), and the events the content leaderboard counts
# per item (opens, CTA clicks, downloads, reads to the end), in the words of the partial index that holds
# the latter: the leaderboard states it exactly so (SQLite uses a partial index only for a query whose
# WHERE contains the index's condition as written, with its literal values).
READ_FULL = {
    "sqlite": "type = 'read' AND json_extract(props, '$.depth') = 100",
    "postgresql": "type = 'read' AND (props ->> 'depth') = '100'",
}
COUNTED_BY_ITEM = {dialect: f"(type IN ('open', 'cta', 'download') OR ({read_full}))" for dialect, read_full in READ_FULL.items()}


class Event(Base):
    """The append-only behavior log.

    What happened (type, share, item, visitor, props, times) is never changed. Two columns are
    processing state: `contact_id` is resolved by the tracker when the hot path could not know it
    (and re-homed by merges), `processed` marks events the tracker has attributed and scored.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_contact_occurred", "contact_id", "occurred_at"),
        Index("ix_events_type_occurred", "type", "occurred_at"),
        # A rep's or a team's activity on the dashboards (bot/leaderboards.py), without reading every
        # event of the date range.
        Index("ix_events_rep_type_occurred", "rep_userid", "type", "occurred_at"),
        # Everyone's activity per item (the admin's content leaderboard) and each item's openers (the
        # admin's content funnel), read from the index alone; partial, so the other events (reads short
        # of the end, time on page, forwards…) write no entry.
        Index("ix_events_item_counted", "item_id", "type", "occurred_at", "contact_id",
              sqlite_where=text(COUNTED_BY_ITEM["sqlite"]), postgresql_where=text(COUNTED_BY_ITEM["postgresql"])),
        Index("ix_events_visitor", "visitor_id"),
        # The few events a channel brought (adds, opens of its welcome links), counted per channel from
        # the index alone (bot/channels.py ACTIVITY_BY_CHANNEL); most events have no channel.
        Index(
            "ix_events_type_channel",
            "type",
            "channel_id",
            sqlite_where=text("channel_id IS NOT NULL"),
            postgresql_where=text("channel_id IS NOT NULL"),
        ),
        Index(
            "ix_events_unprocessed",
            "id",
            sqlite_where=text("processed = 0"),
            postgresql_where=text("processed = false"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    visitor_id: Mapped[int | None] = mapped_column(ForeignKey("visitors.id"))
    share_id: Mapped[int | None] = mapped_column(ForeignKey("shares.id"), index=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("content_items.id"), index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("content_versions.id"))
    rep_userid: Mapped[str | None] = mapped_column(String(64))
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id"))
    props: Mapped[dict[str, Any]] = mapped_column(default=dict)
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    processed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class ScoreEntry(Base):
    """One application of one scoring rule; a contact's score is the sum of its entries.

    Inactivity decay is one row per quiet spell, not per day: `quiet_since` (the local day of the
    last engagement the spell follows) is set on decay rows only, and each night's tick adds its
    points to the spell's row (`bot.ledger.ledger_insert`), moving `at` to the latest tick.
    """

    __tablename__ = "score_ledger"
    __table_args__ = (
        Index("ix_score_ledger_contact_at", "contact_id", "at"),
        Index(
            "ux_score_ledger_quiet_spell",
            "contact_id",
            "model",
            "quiet_since",
            unique=True,
            sqlite_where=text("quiet_since IS NOT NULL"),
            postgresql_where=text("quiet_since IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    model: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(128))
    points: Mapped[float] = mapped_column(Float)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    reason: Mapped[str] = mapped_column(String(255), default="")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    quiet_since: Mapped[dt.date | None] = mapped_column(Date)


class StageChange(Base):
    __tablename__ = "stage_history"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    from_stage: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    by: Mapped[str] = mapped_column(String(64))  # "rule:<name>" or a rep userid
    reason: Mapped[str] = mapped_column(String(255), default="")
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


# --- acting -------------------------------------------------------------------------------------


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_owner_status_due", "owner_userid", "status", "due_at"),
        Index("ix_tasks_status_snoozed", "status", "snoozed_until"),  # send-due-alerts: snoozes that ran out
        Index("ix_tasks_kind_due", "kind", "due_at"),  # everyone's SOP compliance: the range's SOP tasks
        # everyone's rep leaderboard: the tasks done in the range, from the index alone
        Index("ix_tasks_completed_cover", "completed_at", "status", "owner_userid", "due_at", "kind", "created_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # follow_up | sop | hot_lead | dormant | manual
    title: Mapped[str] = mapped_column(String(255))
    body: Mapped[str] = mapped_column(Text, default="")
    owner_userid: Mapped[str] = mapped_column(ForeignKey("reps.userid"))
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), index=True)
    item_id: Mapped[int | None] = mapped_column(ForeignKey("content_items.id"))
    priority: Mapped[int] = mapped_column(Integer, default=2)  # 1 urgent, 2 normal, 3 low
    status: Mapped[str] = mapped_column(String(12), default="open")  # open | done | dismissed
    due_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    snoozed_until: Mapped[dt.datetime | None]
    source_event_id: Mapped[int | None] = mapped_column(ForeignKey("events.id"))
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("sop_enrollments.id"))
    escalated_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None]


class Alert(Base):
    """A follow-up alert to a rep; a burst of activity merges into one alert (one WeCom card)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_rep_contact_status", "rep_userid", "contact_id", "status"),
        Index("ix_alerts_status_send_after", "status", "send_after"),  # send-due-alerts: pending alerts now due
        # send-due-alerts: sent cards with news for an update, in id order (a handful at any time; the
        # predicate compares two columns, so it also holds for prepared statements with parameters)
        Index(
            "ix_alerts_updates_due",
            "id",
            sqlite_where=text("send_after > sent_at"),
            postgresql_where=text("send_after > sent_at"),
        ),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    rep_userid: Mapped[str] = mapped_column(ForeignKey("reps.userid"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    kind: Mapped[str] = mapped_column(String(24))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending|sent|suppressed|merged (into detail.merged_into)
    score_delta: Mapped[float] = mapped_column(Float, default=0.0)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    card_task_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    response_code: Mapped[str | None] = mapped_column(String(128))
    first_event_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    send_after: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]
    clicked_at: Mapped[dt.datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))


class Playbook(Base):
    """An SOP playbook version; editing makes a new version, running enrollments keep theirs."""

    __tablename__ = "sop_playbooks"
    __table_args__ = (UniqueConstraint("key", "version"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    key: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    definition_hash: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Enrollment(Base):
    __tablename__ = "sop_enrollments"
    __table_args__ = (
        Index("ix_sop_enrollments_status_due", "status", "next_due_at"),
        Index("ix_sop_enrollments_key_contact", "playbook_key", "contact_id"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    playbook_id: Mapped[int] = mapped_column(ForeignKey("sop_playbooks.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    owner_userid: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12), default="active")  # active|done|stopped
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[dt.datetime | None]
    stopped_reason: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    playbook_key: Mapped[str] = mapped_column(String(64), default="", server_default="")  # denormalised: "enrolled in this playbook?" without a join
    start_stage: Mapped[str | None] = mapped_column(String(16))  # the contact's stage at enrollment; a later one stops it
    trigger: Mapped[str] = mapped_column(String(64), default="", server_default="")  # what enrolled the contact
    finished_at: Mapped[dt.datetime | None]


class Digest(Base):
    """One digest per (kind, recipient, date): the unique key makes sending exactly-once."""

    __tablename__ = "digests"
    __table_args__ = (UniqueConstraint("kind", "recipient", "day"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # reps | managers
    recipient: Mapped[str] = mapped_column(String(64))
    day: Mapped[dt.date] = mapped_column()
    content: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MassSend(Base):
    """A mass send (群发) of one library item to a segment of contacts, each through its owning rep
    (bot/mass_send.py); its recipients each got a tracked link of their own."""

    __tablename__ = "mass_sends"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("content_items.id"))
    segment: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the filter as given
    text: Mapped[str] = mapped_column(Text, default="")  # the message template ({name}, {title}, {summary}, {link})
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[dict[str, Any]] = mapped_column(default=dict)  # reason -> how many contacts


class MassSendRecipient(Base):
    """One contact of a mass send, with the share its link belongs to."""

    __tablename__ = "mass_send_recipients"
    __table_args__ = (Index("ix_mass_send_recipients_send", "mass_send_id"), Index("ix_mass_send_recipients_contact", "contact_id"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    mass_send_id: Mapped[int] = mapped_column(ForeignKey("mass_sends.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    share_id: Mapped[int] = mapped_column(ForeignKey("shares.id"))
    rep_userid: Mapped[str] = mapped_column(String(64))


# --- plumbing -----------------------------------------------------------------------------------


class InboxItem(Base):
    """A WeCom callback, stored before it is acknowledged; the worker processes it once."""

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_status_next", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(160), unique=True)
    source: Mapped[str] = mapped_column(String(16), default="app")  # app | kf
    kind: Mapped[str] = mapped_column(String(64))  # msgtype or event[/changetype]
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending|done|parked
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[dt.datetime | None]


class OutboxItem(Base):
    """An outbound WeCom call decided inside a transaction, sent after commit, at most once."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(160), unique=True)
    path: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(12), default="pending")  # pending|sending|sent|failed|skipped (kf budget)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]


class KfCursor(Base):
    """sync_msg cursor per WeChat Customer Service account, so a restart neither skips nor repeats."""

    __tablename__ = "kf_cursors"
    open_kfid: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class JobRun(Base):
    """A claimed scheduled run; the unique run key makes a job run once across processes."""

    __tablename__ = "job_runs"
    run_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    claimed_by: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text)


class WeComTag(Base):
    """Beacon's corp tags (stage / temperature) mirrored to WeCom, by name → WeCom tag id."""

    __tablename__ = "wecom_tags"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(30))
    tag_id: Mapped[str] = mapped_column(String(64))


class Lease(Base):
    """A named singleton role (e.g. the event tracker) held by one process at a time, with expiry."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    locked_until: Mapped[dt.datetime]
