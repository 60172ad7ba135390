"""One tracker transaction, set-based: what a batch of events needs is read up front, what it writes
is queued and written together.

`TrackerBatch` preloads, per batch (one query each, `IN (...)`): the shares, visitors and contacts the
events refer to, which share contacts already have a browser, and whatever the hooks ask for in their
`prepare` (scoring: the replay data of contacts not yet in the ScoreBook; SOP: running enrollments;
alerts: the open alerts and latest stage change of contacts with an owner). Attribution then runs in
memory. Writes (visitor bindings, re-flagged anonymous events, forward events, ledger rows,
tag-mirror outbox rows, and at the end each event's `contact_id` / `processed`) go to a queue per
table, in order, flushed as executemany runs (the tables do not depend on one another: rows only
refer to rows that existed before the batch):
- at the end of the batch, and before each hook that is not batch-aware (bot/tracker.py);
- before anything else in the session reads or writes a queued table (a `do_orm_execute` listener),
  so code that queries sees what it saw when every statement was executed at once.
Contacts stay ORM objects in the session (hooks and lifecycle change them; the unit of work writes
each changed contact once per batch). A stage change is written at once (`record_stage_change`),
not queued: the alerts hook reads the change an event caused, with its id, for that event and every
later one of the contact in the batch; queued, each such read was a flush and a query.

Nothing is cached across batches: shares, visitors and contacts change under merges, erasure and
`undo_merge`, and a batch of 50 costs one query per table anyway.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import bindparam, event as sa_event, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.sql import TableClause
from sqlalchemy.sql.util import find_tables

from bot.db import session_factory
from bot.inbox import insert_ignore
from bot.ledger import ledger_insert
from bot.models import Contact, Event, Share, StageChange, Visitor, utcnow

if TYPE_CHECKING:
    from bot.tracker import Tracker

BATCH_KEY = "beacon.tracker_batch"  # session.info key: the batch the session is processing

_EVENTS = Event.__table__
_VISITORS = Visitor.__table__
_SHARES = Share.__table__
_CONTACTS = Contact.__table__
_CONTACT_COLUMNS = frozenset(c.key for c in _CONTACTS.c if not c.primary_key)
TABLE_ORDER = ("visitors", "events", "score_ledger", "outbox")  # flushed in this order

_SHARE_COLUMNS = (
    _SHARES.c.id, _SHARES.c.item_id, _SHARES.c.version_id, _SHARES.c.rep_userid, _SHARES.c.contact_id,
    _SHARES.c.channel_id, _SHARES.c.visitor_id,
)  # fmt: skip
_BIND_VISITOR = update(_VISITORS).where(_VISITORS.c.id == bindparam("b_id")).values(contact_id=bindparam("b_contact"))
# bind_visitor: the browser's earlier anonymous events are the contact's, and processed again.
_REFLAG = (
    update(_EVENTS)
    .where(_EVENTS.c.visitor_id == bindparam("b_visitor"), _EVENTS.c.contact_id.is_(None))
    .values(contact_id=bindparam("b_contact"), processed=False)
)
_EVENT_STATE = (
    update(_EVENTS).where(_EVENTS.c.id == bindparam("b_id")).values(contact_id=bindparam("b_contact"), processed=bindparam("b_processed"))
)
_MARK_PROCESSED = update(_EVENTS).where(_EVENTS.c.id.in_(bindparam("b_ids", expanding=True))).values(processed=True)
# The preloads, built once: building a statement costs about as much as SQLite running it (about 90 µs
# for an IN query), and a batch runs a dozen of them; the values go in as an expanding parameter.
_SHARES_BY_ID = select(*_SHARE_COLUMNS).where(_SHARES.c.id.in_(bindparam("ids", expanding=True)))
_VISITORS_BY_ID = select(_VISITORS.c.id, _VISITORS.c.contact_id).where(_VISITORS.c.id.in_(bindparam("ids", expanding=True)))
_CONTACTS_WITH_BROWSER = select(_VISITORS.c.contact_id).where(_VISITORS.c.contact_id.in_(bindparam("ids", expanding=True))).distinct()
CONTACTS_BY_ID = select(Contact).where(Contact.id.in_(bindparam("ids", expanding=True)))  # also scoring's warm-up
_STAGE_CHANGES = StageChange.__table__
_INSERT_STAGE_CHANGE = _STAGE_CHANGES.insert().returning(_STAGE_CHANGES.c.id)


class MadeStageChange:
    """A stage_history row a batch wrote (`TrackerBatch.record_stage_change`), with the attributes of
    a StageChange that readers in the batch use (an ORM object cost more to make than the row)."""

    __slots__ = ("id", "contact_id", "from_stage", "to_stage", "by", "reason", "at")

    def __init__(self, id: int, contact_id: int, from_stage: str, to_stage: str, by: str, reason: str, at: dt.datetime) -> None:
        self.id, self.contact_id, self.from_stage, self.to_stage = id, contact_id, from_stage, to_stage
        self.by, self.reason, self.at = by, reason, at


class BrowserRow:
    """A visitor as attribution needs it (the contact it belongs to, if known)."""

    __slots__ = ("id", "contact_id")

    def __init__(self, id: int, contact_id: int | None) -> None:
        self.id = id
        self.contact_id = contact_id


class TrackerBatch:
    def __init__(self, tracker: "Tracker", session: AsyncSession, events: list[Event]) -> None:
        self.tracker = tracker
        self.session = session
        self.events = events
        self.index = 0  # the event being processed
        self.ops: dict[str, list[tuple[Any, dict[str, Any]]]] = {name: [] for name in TABLE_ORDER}
        self._queued = 0
        self._stored = {e.id: (e.contact_id, e.processed) for e in events}  # what the database holds
        self._dirty: set[Event] = set()
        self.shares: dict[int, Any] = {}
        self.visitors: dict[int, BrowserRow | None] = {}
        self.contacts: dict[int, Contact | None] = {}
        self.has_browser: set[int] = set()
        self._browser_known: set[int] = set()
        self.prepared: dict[str, Any] = {}  # hooks' own preloads, by hook
        self.stage_changes: dict[int, MadeStageChange] = {}  # contact id -> its newest stage change written by this batch
        self.stale = True
        self._forward = insert_ignore(session.bind.dialect.name, _EVENTS, "idempotency_key")
        self._ledger = ledger_insert(session.bind.dialect.name)
        self._inserts: dict[str, Any] = {}
        self._savepoints: list[Any] = []

    # --- lifecycle -------------------------------------------------------------------------------

    async def install(self) -> None:
        """The batch takes over the session: a BatchSession (`batch_sessions`) hands its ORM
        statements and savepoints to the batch from here until `uninstall`."""
        if not isinstance(self.session.sync_session, BatchSession):
            raise TypeError("a tracker batch needs a session from batch_sessions()")
        self._conn = (await self.session.connection()).sync_connection  # the transaction's connection
        self.session.info[BATCH_KEY] = self

    def uninstall(self) -> None:
        self.session.info.pop(BATCH_KEY, None)

    async def load(self) -> None:
        """Preload what the events from `index` on refer to (after a slow event: again, fresh)."""
        pending = self.events[self.index:]
        conn = await self.session.connection()
        share_ids = {e.share_id for e in pending if e.share_id is not None}
        self.shares = {}
        if share_ids:
            rows = await conn.execute(_SHARES_BY_ID, {"ids": list(share_ids)})
            self.shares = {row.id: row for row in rows}
        visitor_ids = {e.visitor_id for e in pending if e.visitor_id is not None}
        visitor_ids.update(s.visitor_id for s in self.shares.values() if s.visitor_id is not None)
        self.visitors = dict.fromkeys(visitor_ids)
        if visitor_ids:
            rows = await conn.execute(_VISITORS_BY_ID, {"ids": list(visitor_ids)})
            for vid, cid in rows:
                self.visitors[vid] = BrowserRow(vid, cid)
        # share contacts that may be handed an anonymous browser: do they have one already?
        candidates = {
            share.contact_id
            for e in pending
            if e.visitor_id is not None and e.share_id is not None
            and (share := self.shares.get(e.share_id)) is not None and share.contact_id is not None
        }  # fmt: skip
        self.has_browser = set()
        if candidates:
            rows = await conn.execute(_CONTACTS_WITH_BROWSER, {"ids": list(candidates)})
            self.has_browser = {cid for (cid,) in rows}
        self._browser_known = set(candidates)
        contact_ids = {e.contact_id for e in pending if e.contact_id is not None}
        contact_ids.update(v.contact_id for v in self.visitors.values() if v is not None and v.contact_id is not None)
        contact_ids.update(s.contact_id for s in self.shares.values() if s.contact_id is not None)
        await self._load_contacts(contact_ids)
        self.stale = False
        for hook in self.tracker.hooks:
            prepare = getattr(hook, "prepare", None)
            if prepare is not None:
                await prepare(self.session, self)

    async def _load_contacts(self, ids: Iterable[int]) -> None:
        wanted = {cid for cid in ids if cid not in self.contacts}
        for _ in range(11):  # the contacts, then whatever they were merged into (live_contact's 10 hops)
            if not wanted:
                return
            found = (await self.session.scalars(CONTACTS_BY_ID, {"ids": list(wanted)})).all()
            for contact in found:
                self.contacts[contact.id] = contact
            for cid in wanted:
                self.contacts.setdefault(cid, None)
            wanted = {c.merged_into_id for c in found if c.merged_into_id is not None and c.merged_into_id not in self.contacts}

    # --- reads -----------------------------------------------------------------------------------

    async def contact(self, contact_id: int) -> Contact | None:
        contact = self.contacts.get(contact_id)
        if contact is not None:
            return contact
        contact = await self.session.get(Contact, contact_id)  # created in this batch, or not preloaded
        self.contacts[contact_id] = contact
        return contact

    async def live_contact(self, contact_id: int) -> Contact | None:
        """bot.identity.live_contact, from the preloaded contacts."""
        contact = await self.contact(contact_id)
        seen = 0
        while contact is not None and contact.merged_into_id is not None and seen < 10:
            contact = await self.contact(contact.merged_into_id)
            seen += 1
        return contact

    def live_contact_id(self, contact_id: int | None) -> int | None:
        """The surviving contact of a preloaded one, without queries (None if not preloaded)."""
        contact = self.contacts.get(contact_id) if contact_id is not None else None
        seen = 0
        while contact is not None and contact.merged_into_id is not None and seen < 10:
            contact = self.contacts.get(contact.merged_into_id)
            seen += 1
        return contact.id if contact is not None else None

    async def visitor(self, visitor_id: int) -> BrowserRow | None:
        if visitor_id in self.visitors:
            return self.visitors[visitor_id]
        row = (await (await self.session.connection()).execute(
            select(_VISITORS.c.id, _VISITORS.c.contact_id).where(_VISITORS.c.id == visitor_id)
        )).first()
        found = self.visitors[visitor_id] = BrowserRow(row[0], row[1]) if row is not None else None
        return found

    async def contact_has_browser(self, contact_id: int) -> bool:
        """Whether any visitor belongs to the contact (bot.tracker._has_browser)."""
        if contact_id in self.has_browser:
            return True
        if contact_id not in self._browser_known:
            conn = await self.session.connection()
            row = (await conn.execute(select(_VISITORS.c.id).where(_VISITORS.c.contact_id == contact_id).limit(1))).first()
            self._browser_known.add(contact_id)
            if row is not None:
                self.has_browser.add(contact_id)
        return contact_id in self.has_browser

    async def share(self, share_id: int) -> Any:
        if share_id not in self.shares:
            row = (await (await self.session.connection()).execute(select(*_SHARE_COLUMNS).where(_SHARES.c.id == share_id))).first()
            self.shares[share_id] = row
        return self.shares[share_id]

    # --- writes ----------------------------------------------------------------------------------

    def set_contact(self, event: Event, contact_id: int | None) -> None:
        """event.contact_id = contact_id, written with the batch."""
        if event.contact_id != contact_id:
            set_committed_value(event, "contact_id", contact_id)
            self._dirty.add(event)

    def set_processed(self, event: Event, processed: bool = True) -> None:
        if event.processed != processed:
            set_committed_value(event, "processed", processed)
            self._dirty.add(event)

    def bind_visitor(self, visitor: BrowserRow, contact_id: int) -> None:
        """bot.tracker.bind_visitor: the browser is the contact's, its anonymous events too (processed again)."""
        visitor.contact_id = contact_id
        self.has_browser.add(contact_id)
        self.add("visitors", _BIND_VISITOR, {"b_id": visitor.id, "b_contact": contact_id})
        self.add("events", _REFLAG, {"b_visitor": visitor.id, "b_contact": contact_id})
        # The statement's effect on this batch's events, as the final write of each will state it.
        for i, other in enumerate(self.events):
            if other.visitor_id == visitor.id and other.contact_id is None:
                self.set_contact(other, contact_id)
                if i < self.index:
                    self.set_processed(other, False)

    def add(self, table: str, stmt: Any, params: dict[str, Any]) -> None:
        self.ops[table].append((stmt, params))
        self._queued += 1

    async def record_stage_change(self, row: dict[str, Any]) -> MadeStageChange:
        """A stage_history row, written now (in the batch's transaction, past the ORM); the contact's
        later reads in this batch get it from `stage_changes`."""
        conn = await self.session.connection()
        change_id = (await conn.execute(_INSERT_STAGE_CHANGE, row)).scalar_one()
        change = self.stage_changes[row["contact_id"]] = MadeStageChange(id=change_id, **row)
        return change

    def insert(self, table: Any, row: dict[str, Any]) -> None:
        """A new row for one of the queued tables (same keys for every row of a table, please)."""
        stmt = self._inserts.get(table.name)
        if stmt is None:
            stmt = self._inserts[table.name] = table.insert()
        self.add(table.name, stmt, row)

    def add_forward(self, params: dict[str, Any]) -> None:
        self.add("events", self._forward, params)

    def add_ledger(self, rows: list[dict[str, Any]]) -> None:
        """Ledger rows (bot.ledger.ledger_rows). Two ticks of one spell from different events of the
        batch go in one executemany, row by row: the second adds to the row the first wrote."""
        for row in rows:
            self.add("score_ledger", self._ledger, row)

    @property
    def pending(self) -> bool:
        return bool(self._queued or self._dirty)

    _conn: Any = None
    _hidden = 0

    async def flush(self, *, processed: bool = True) -> None:
        """Write what is queued. `processed=False` leaves the `processed` flags of finished events for
        later (nothing but the tracker's own code reads them, and it flushes before it does)."""
        if self.pending:
            await self.session.run_sync(lambda _: self._flush_sync(processed=processed))

    def _flush_sync(self, *, processed: bool = True) -> None:
        conn = self._conn
        if self._queued:
            for table in TABLE_ORDER:
                ops = self.ops[table]
                if not ops:
                    continue
                self.ops[table] = []
                if table == "events":
                    ops = _inserts_first(ops)
                start = 0
                while start < len(ops):  # consecutive rows of one statement: one executemany
                    stmt = ops[start][0]
                    end = start + 1
                    while end < len(ops) and ops[end][0] is stmt:
                        end += 1
                    conn.execute(stmt, [params for _, params in ops[start:end]])
                    start = end
            self._queued = 0
        # Last, so that each event ends as this batch decided whatever the statements above did.
        done: list[int] = []
        states: list[dict[str, Any]] = []
        later: set[Event] = set()
        for ev in sorted(self._dirty, key=lambda e: e.id):
            stored_contact, stored_processed = self._stored[ev.id]
            if ev.contact_id == stored_contact:
                if ev.processed == stored_processed:
                    continue
                if not processed:
                    later.add(ev)
                    continue
                if ev.processed:
                    done.append(ev.id)
                    self._stored[ev.id] = (ev.contact_id, ev.processed)
                    continue
            states.append({"b_id": ev.id, "b_contact": ev.contact_id, "b_processed": ev.processed})
            self._stored[ev.id] = (ev.contact_id, ev.processed)
        self._dirty = later
        if done:
            conn.execute(_MARK_PROCESSED, {"b_ids": done})
        if states:
            conn.execute(_EVENT_STATE, states)

    async def write_contacts(self) -> None:
        """Write the batch's changed contacts with one executemany, in place of the ORM's flush.

        The ORM writes a changed row with an UPDATE of the columns that changed in it, and only
        consecutive rows changed alike share an executemany: contacts changed in different ways (a
        score, a stage, a temperature, only the last activity) cost a statement per run of alike rows,
        about eight per batch on the links benchmark. Here every changed contact's UPDATE sets the
        columns any of them changed (the unchanged ones to their own values), and the objects are
        then marked as stored, so the ORM has nothing left to write for them."""
        states = [s for s in (instance_state(c) for c in self.contacts.values() if c is not None) if s.persistent and s.modified]
        columns = sorted({key for state in states for key in state.committed_state if key in _CONTACT_COLUMNS})
        if not columns:
            return
        dirty = [state.obj() for state in states]
        if "updated_at" not in columns:  # the column's onupdate, as the ORM would apply it
            now = utcnow()
            for contact in dirty:
                contact.updated_at = now
            columns.append("updated_at")
        stmt = _contact_update(tuple(columns))
        rows = [{"b_id": c.id, **{f"v_{k}": getattr(c, k) for k in columns}} for c in dirty]

        def write(_: Any) -> None:
            self._conn.execute(stmt, rows)
            for contact in dirty:
                for key in columns:
                    set_committed_value(contact, key, getattr(contact, key))

        await self.session.run_sync(write)

    async def call_unaware(self, hook: Any, event: Event) -> None:
        """Run a hook that knows nothing of batches: it sees every write so far in the database, and
        whatever it calls (scoring included) executes directly."""
        await self.flush(processed=False)
        self._hide()
        try:
            await hook(self.session, event)
        finally:
            self._unhide()

    def _hide(self) -> None:
        # Nothing is queued meanwhile: BATCH_KEY users (scoring, lifecycle, tags) execute directly.
        self._hidden += 1
        self.session.info.pop(BATCH_KEY, None)

    def _unhide(self) -> None:
        self._hidden -= 1
        if not self._hidden:
            self.session.info[BATCH_KEY] = self

    def resync(self) -> None:
        """After ORM code wrote events itself (the slow path): their attributes are the database."""
        for ev in self.events:
            self._stored[ev.id] = (ev.contact_id, ev.processed)
        self._dirty.clear()

    def _before_foreign_statement(self, state: Any) -> None:
        # Someone else's statement (a hook's query, ORM code): it must see the queued writes.
        if not self.pending:
            return
        try:
            found = find_tables(state.statement, include_joins=True, include_selects=True, include_crud=True)
            tables = {t.name for t in found if isinstance(t, TableClause)}  # (the statement itself is among them)
        except Exception:  # an unusual construct: flush rather than guess
            tables = set()
        if not tables or not tables.isdisjoint(TABLE_ORDER):
            # Inside a savepoint only what was decided before it is pending: keep `processed` flags
            # out of it, or rolling it back would take them. Nor are they written for a statement
            # that does not touch `events` (an alert reading the stage history, once per event).
            self._flush_sync(processed=not self._savepoints and (not tables or "events" in tables))

    def _before_savepoint(self, session: Session, transaction: Any) -> None:
        # A savepoint is beginning (its SAVEPOINT is emitted on first use): what is queued goes in
        # before it, so that rolling it back cannot take it, as it could not have when every statement
        # was executed at once; within it, everything executes directly (and rolls back with it).
        # The ORM has flushed its own pending rows just before this, for the same reason.
        if not transaction.nested:
            return
        if self.pending:
            self._flush_sync(processed=False)
        self._savepoints.append(transaction)
        self._hide()

    def _after_savepoint(self, session: Session, transaction: Any) -> None:
        if self._savepoints and self._savepoints[-1] is transaction:
            self._savepoints.pop()
            self._unhide()


class BatchSession(Session):
    """The tracker's sessions: their ORM statements and savepoints go to the batch installed in them,
    if any. Listening once on the class rather than on each batch's session: registering and removing
    three listeners per batch was about 6 % of the tracker's time."""


@sa_event.listens_for(BatchSession, "do_orm_execute")
def _foreign_statement(state: Any) -> None:
    batch = state.session.info.get(BATCH_KEY)
    if batch is not None:
        batch._before_foreign_statement(state)


@sa_event.listens_for(BatchSession, "after_transaction_create")
def _transaction_created(session: Session, transaction: Any) -> None:
    batch = session.info.get(BATCH_KEY)
    if batch is not None:
        batch._before_savepoint(session, transaction)


@sa_event.listens_for(BatchSession, "after_transaction_end")
def _transaction_ended(session: Session, transaction: Any) -> None:
    batch = session.info.get(BATCH_KEY)
    if batch is not None:
        batch._after_savepoint(session, transaction)


def batch_sessions(engine: Any) -> Any:
    """bot.db.session_factory sessions whose ORM work a TrackerBatch can take over."""
    return session_factory(engine, sync_session_class=BatchSession)


def _inserts_first(ops: list[tuple[Any, dict[str, Any]]]) -> list[tuple[Any, dict[str, Any]]]:
    """The events queue with its forward events' INSERTs before its re-flags (`_REFLAG`), each kind in
    its own order: one executemany each instead of one per alternation (a forward, then the browser
    bound, for most events of a batch of forwards: about 17 statements a batch on the links benchmark).

    The same rows come out. A forward inserted before a re-flag is still inserted before it. One
    queued after a re-flag of browser V could only be matched by it if it were V's anonymous forward
    (visitor V, no contact), and once V is bound in the batch its forwards name V's contact as the
    referrer (bot.tracker: the batch's browser rows carry the binding)."""
    inserts = [op for op in ops if op[0].is_insert]
    return inserts + [op for op in ops if not op[0].is_insert] if 0 < len(inserts) < len(ops) else ops


@functools.lru_cache(maxsize=64)
def _contact_update(columns: tuple[str, ...]) -> Any:
    """UPDATE contacts SET <columns> by id (TrackerBatch.write_contacts): one statement per set of columns."""
    return update(_CONTACTS).where(_CONTACTS.c.id == bindparam("b_id")).values({k: bindparam(f"v_{k}") for k in columns})


def forward_params(share: Any, visitor_id: int, to_contact: int | None, referrer: int | None,
                   occurred_at: dt.datetime, now: dt.datetime) -> dict[str, Any]:
    return {
        "type": "forward",
        "contact_id": referrer,
        "visitor_id": share.visitor_id if referrer is None else None,
        "share_id": share.id,
        "item_id": share.item_id,
        "version_id": share.version_id,
        "rep_userid": share.rep_userid,
        "channel_id": share.channel_id,
        "props": {"to_visitor": visitor_id, "to_contact": to_contact},
        "occurred_at": occurred_at,
        "received_at": now,
        "idempotency_key": f"forward:{share.id}:{visitor_id}",
        "processed": False,
    }
