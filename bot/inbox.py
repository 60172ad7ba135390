"""The durable inbox: every callback is stored before WeCom gets its 200, then processed once.

Edge: `InboxStore.put` inserts through the group-commit writer with ON CONFLICT DO NOTHING on the
dedupe key, so a redelivery is acknowledged and never stored twice.
Worker: leases due rows, runs the handler and marks the row done in the same transaction (so the
handler's effects and "done" commit together), retries failures with backoff, parks after N attempts.
A claimed batch shares transactions; a failed handler's transaction is done again without it
(`InboxWorker.process_batch`).
Rows leased by a process that died are picked up again when the lease runs out.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot import notify
from bot.batch import BatchWriter
from bot.context import Context
from bot.db import delete_in_chunks, session_factory, write_gate
from bot.leases import backoff_s
from bot.models import InboxItem
from bot.wecom.inbound import Inbound, parse_inbound
from bot.worker import PollingWorker

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.inbox")


def insert_ignore(dialect_name: str, table: object, key: str) -> object:
    """INSERT ... ON CONFLICT (key) DO NOTHING for the engine's dialect."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=[key])


class InboxStore:
    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer
        self._stmt = insert_ignore(writer.engine.dialect.name, InboxItem.__table__, "dedupe_key")

    async def put(self, msg: Inbound, now: dt.datetime) -> None:
        """Durably store one callback (returns after commit). A repeated dedupe key is a no-op."""
        await self.writer.write(
            self._stmt,
            {
                "dedupe_key": msg.dedupe_key,
                "source": msg.source,
                "kind": msg.kind[:64],
                "body": msg.plaintext,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "received_at": now,
            },
        )


class HandlerLeftFailedTransaction(Exception):
    """A handler caught a database error and returned: the shared transaction can only be rolled back."""


class OwnTransactionNeeded(Exception):
    """A handler ended the shared transaction itself (see SharedSession)."""


class SharedSession(AsyncSession):
    """The session a batch of callbacks shares (InboxWorker.process_batch).

    Some handlers commit part-way, so that no transaction is open while they call WeCom (kf pulls
    messages page by page, a new contact's profile is fetched): they cannot share a transaction with
    other callbacks. While a handler runs (`sharing`), its commit or rollback of the session is refused
    with OwnTransactionNeeded and remembered in `refused` (in case the handler swallowed the exception);
    the worker then rolls back the shared transaction, with what the handler did, and runs that callback
    alone, in its own session."""

    sharing = False
    refused = False

    def _refuse(self, what: str) -> None:
        self.refused = True
        raise OwnTransactionNeeded(f"the handler calls session.{what}(): it runs in a transaction of its own")

    async def commit(self) -> None:
        if self.sharing:
            self._refuse("commit")
        await super().commit()

    async def rollback(self) -> None:
        if self.sharing:
            self._refuse("rollback")
        await super().rollback()


# How long one shared transaction may run before it commits and the batch goes on in the next one. On
# SQLite it holds the write lock that link opens and callbacks wait for: there it also commits as soon
# as one of them is queued for the lock (WriteGate.contended), so the edge waits for one callback's
# handler at most, not for the budget.
SHARED_BUDGET_S = {"sqlite": 0.02, "postgresql": 0.2}


class InboxWorker(PollingWorker):
    name = "inbox"
    channel = notify.INBOX
    settle_s = 0.02  # PollingWorker: a burst of callbacks is claimed together, not one by one

    def __init__(self, runtime: "Runtime") -> None:
        super().__init__(runtime)
        self.cfg = runtime.settings.inbox
        self.poll_s = self.cfg.poll_s
        self.shared_sessions = session_factory(runtime.engine, class_=SharedSession)
        self.budget_s = SHARED_BUDGET_S.get(runtime.engine.dialect.name, 0.02)
        self.gate = write_gate(runtime.engine)

    def runs_here(self) -> bool:
        return self.cfg.workers > 0

    def runs_elsewhere(self) -> bool:
        return self.cfg.workers == 0  # a process that only stores callbacks: the others process them

    async def drain(self, limit: int = 50) -> int:
        """Process everything due now; returns how many rows were handled (stopping: see drain_claimed)."""
        return await self.drain_claimed(InboxItem, lease_s=self.cfg.lease_s, limit=limit, handle=self.process_batch)

    async def process_batch(self, ids: list[int]) -> int:
        """Process claimed rows in order, many to a transaction, the rows finished marked done with one
        UPDATE in the same transaction, so a callback's effects and its "done" commit together. Each
        transaction runs for about `budget_s` (on SQLite, until another writer of this process waits
        for the lock).

        Handlers share the transaction without savepoints: a savepoint per callback made the ORM flush
        and the driver make two more round trips for every callback, and tripled the worker's time per
        callback. When a handler fails, the transaction, with what the handler did, is rolled back and
        done again without that handler: the callbacks before it run again and commit, and its row
        counts the failure (it is retried later). A handler that needs a transaction of its own
        (SharedSession) runs alone the same way, after what came before it has committed. So a handler
        may run twice for one callback, as after any failed commit: its effects are in the session.
        Returns how many rows were handled (fewer when a stop was asked for)."""
        n = 0
        rows: dict[int, Any] | None = None  # read once: the rows are leased to this worker
        known: dict[int, object] = {}  # outcomes of failed handlers whose transaction was rolled back
        while n < len(ids) and not self.stopping:
            start, began = n, time.perf_counter()
            done: list[tuple[int, str]] = []
            failed: list[tuple[int, str, Exception]] = []
            alone: int | None = None
            redo = False
            async with self.shared_sessions() as session:
                if rows is None:
                    rows = {row.id: row for row in await session.execute(
                        select(InboxItem.id, InboxItem.kind, InboxItem.body, InboxItem.status).where(InboxItem.id.in_(ids))
                    )}
                began = time.perf_counter()
                while n < len(ids) and not self.stopping:
                    item_id = ids[n]
                    row = rows.get(item_id)
                    if row is None or row.status != "pending":
                        n += 1
                        continue
                    if n in known:
                        outcome = known.pop(n)
                    else:
                        outcome = await self._shared(session, item_id, row.body)
                        if outcome is not None:  # its partial work is in the transaction: do it again without
                            known[n] = outcome
                            redo = True
                            break
                    if outcome is OwnTransactionNeeded:
                        alone = item_id
                        break
                    n += 1
                    if isinstance(outcome, Exception):
                        failed.append((item_id, row.kind, outcome))
                    else:
                        done.append((item_id, row.kind))
                    if time.perf_counter() - began > self.budget_s or (self.gate is not None and self.gate.contended):
                        break
                if redo:
                    await session.rollback()
                    n = start
                    continue
                try:
                    if done:
                        await session.execute(
                            update(InboxItem).where(InboxItem.id.in_([item_id for item_id, _ in done]))
                            .values(status="done", processed_at=self.rt.clock.now(), locked_until=None, attempts=InboxItem.attempts + 1)
                        )
                        await session.commit()
                except Exception:
                    # The shared transaction is lost: do its callbacks again, each on its own, where a
                    # failure is counted against its row only.
                    log.warning("a shared inbox transaction of %d callbacks failed; processing them one by one", len(done),
                                exc_info=True)
                    await session.rollback()
                    retry, done = done, []
                else:
                    retry = []
            self._finished(done)
            for item_id, kind, exc in failed:
                await self._failed(item_id, kind, exc)
            for item_id, _kind in retry:
                await self.process(item_id)
            if alone is not None and not self.stopping:
                await self.process(alone)
                n += 1
            # Acknowledging comes first (bot.edge): WeCom waits at most 5 s for an answer, then delivers
            # again. A stored callback is safe; its reply goes out as a burst eases.
            self.rt.metrics.inbox_gave_way.inc(await self.give_way(time.perf_counter() - began))
        return n

    async def _shared(self, session: SharedSession, item_id: int, body: str) -> object:
        """One callback in the shared session: None when handled, the exception when it failed, or
        OwnTransactionNeeded (the class) when it has to run alone. Either way but the first, what the
        handler did is still in the session: the caller rolls the transaction back."""
        session.sharing, session.refused = True, False
        try:
            await self._dispatch(session, item_id, body)
            if session.refused:
                return OwnTransactionNeeded
            if not session.is_active:  # a database error the handler caught: the transaction is lost
                return HandlerLeftFailedTransaction(f"inbox {item_id}: the handler caught a database error")
        except OwnTransactionNeeded:
            return OwnTransactionNeeded
        except Exception as exc:
            return exc
        finally:
            session.sharing = False
        return None

    async def _dispatch(self, session: AsyncSession, item_id: int, body: str) -> None:
        """The callback's handler, with this row's unit of work (its keys derive from `inbox:<id>`)."""
        await self.rt.dispatcher.dispatch(parse_inbound(body), Context(self.rt, session, origin=f"inbox:{item_id}"))

    def _finished(self, handled: list[tuple[int, str]]) -> None:
        for _item_id, kind in handled:
            self.rt.metrics.callbacks_processed.labels(kind=kind).inc()
        if handled:
            self.rt.outbox.wake()
            self.rt.tracker.wake()

    async def process(self, item_id: int) -> None:
        """One row in a transaction of its own (a handler that commits part-way, or a retry)."""
        async with self.rt.sessions() as session:
            item = await session.get(InboxItem, item_id)
            if item is None or item.status != "pending":
                return
            kind = item.kind
            try:
                await self._dispatch(session, item_id, item.body)
                item.status = "done"
                item.processed_at = self.rt.clock.now()
                item.locked_until = None
                item.attempts += 1
                await session.commit()
            except Exception as exc:
                await session.rollback()
                await self._failed(item_id, kind, exc)
                return
        self._finished([(item_id, kind)])

    async def _failed(self, item_id: int, kind: str, exc: Exception) -> None:
        self.rt.metrics.callbacks_failed.labels(kind=kind).inc()
        async with self.rt.sessions() as session, session.begin():
            item = await session.get(InboxItem, item_id)
            if item is None:
                return
            item.attempts += 1
            item.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            item.locked_until = None
            if item.attempts >= self.cfg.max_attempts:
                item.status = "parked"
                self.rt.metrics.callbacks_parked.inc()
                log.error("inbox %s (%s) parked after %d attempts", item_id, kind, item.attempts, exc_info=exc)
            else:
                delay = backoff_s(item.attempts, self.cfg.retry_base_s, self.cfg.retry_max_s)
                item.next_attempt_at = self.rt.clock.now() + dt.timedelta(seconds=delay)
                log.warning("inbox %s (%s) failed, attempt %d, retry in %.0fs", item_id, kind, item.attempts, delay, exc_info=exc)


async def inbox_counts(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(InboxItem.status, func.count()).where(InboxItem.status.in_(["pending", "parked"])).group_by(InboxItem.status)
    )
    return {"pending": 0, "parked": 0} | {status: count for status, count in rows.all()}


async def requeue(session: AsyncSession, item_id: int | None, now: dt.datetime) -> int:
    """Operator action: put parked rows (one, or all when item_id is None) back in the queue."""
    stmt = update(InboxItem).where(InboxItem.status == "parked")
    if item_id is not None:
        stmt = stmt.where(InboxItem.id == item_id)
    result = await session.execute(
        stmt.values(status="pending", attempts=0, next_attempt_at=now, locked_until=None)
    )
    return result.rowcount or 0


async def purge_done(rt: "Runtime", older_than: dt.datetime) -> int:
    """Housekeeping: processed rows older than WeCom's redelivery horizon are no longer needed for
    dedupe. In short transactions (`delete_in_chunks`)."""
    inbox = InboxItem.__table__
    return await delete_in_chunks(rt.sessions, inbox, inbox.c.status == "done", inbox.c.received_at < older_than)
