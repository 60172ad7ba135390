"""The durable inbox: every callback is stored before WeCom gets its 200, then processed once.

Edge: `InboxStore.put` inserts through the group-commit writer with ON CONFLICT DO NOTHING on the
dedupe key, so a redelivery is acknowledged and never stored twice.
Worker: leases due rows, runs the handler and marks the row done in the same transaction (so the
handler's effects and "done" commit together), retries failures with backoff, parks after N attempts.
Rows leased by a process that died are picked up again when the lease runs out.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.batch import BatchWriter
from bot.context import Context
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


class InboxWorker(PollingWorker):
    name = "inbox"
    settle_s = 0.02  # PollingWorker: a burst of callbacks is claimed together, not one by one

    def __init__(self, runtime: "Runtime") -> None:
        super().__init__(runtime)
        self.cfg = runtime.settings.inbox
        self.poll_s = self.cfg.poll_s

    async def drain(self, limit: int = 50) -> int:
        """Process everything due now; returns how many rows were handled (stopping: see drain_claimed)."""
        return await self.drain_claimed(InboxItem, lease_s=self.cfg.lease_s, limit=limit, handle=self.process)

    async def process(self, item_id: int) -> None:
        async with self.rt.sessions() as session:
            item = await session.get(InboxItem, item_id)
            if item is None or item.status != "pending":
                return
            kind = item.kind
            try:
                msg = parse_inbound(item.body)
                ctx = Context(self.rt, session, origin=f"inbox:{item.id}")
                await self.rt.dispatcher.dispatch(msg, ctx)
                item.status = "done"
                item.processed_at = self.rt.clock.now()
                item.locked_until = None
                item.attempts += 1
                await session.commit()
            except Exception as exc:
                await session.rollback()
                await self._failed(item_id, kind, exc)
                return
        self.rt.metrics.callbacks_processed.labels(kind=kind).inc()
        self.rt.outbox.wake()
        self.rt.tracker.wake()

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


async def purge_done(session: AsyncSession, older_than: dt.datetime) -> int:
    """Housekeeping: processed rows older than WeCom's redelivery horizon are no longer needed for dedupe."""
    result = await session.execute(
        delete(InboxItem).where(InboxItem.status == "done", InboxItem.received_at < older_than)
    )
    return result.rowcount or 0
