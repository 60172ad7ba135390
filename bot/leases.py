"""Claiming rows of a work table (inbox, outbox) with a lease, safely across processes.

PostgreSQL: FOR UPDATE SKIP LOCKED, so several processes share the work without blocking each other.
SQLite: one writer at a time anyway; the conditional UPDATE makes the claim atomic.
A claim that is never finished (process killed) expires with its lease and is picked up again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession


def due_rows(model: Any, *, now: dt.datetime, limit: int) -> Any:
    """The ids of due 'pending' rows, oldest first (served by the table's (status, next_attempt_at) index)."""
    return (
        select(model.id)
        .where(
            model.status == "pending",
            model.next_attempt_at <= now,
            or_(model.locked_until.is_(None), model.locked_until < now),
        )
        .order_by(model.id)
        .limit(limit)
    )


async def claim(session: AsyncSession, model: Any, *, now: dt.datetime, lease_s: float, limit: int) -> list[int]:
    """Lease up to `limit` due rows with status 'pending'; returns their ids (oldest first)."""
    due = due_rows(model, now=now, limit=limit).with_for_update(skip_locked=True)
    ids = list((await session.scalars(due)).all())
    if not ids:
        return []
    lease = now + dt.timedelta(seconds=lease_s)
    claimed = await session.scalars(
        update(model)
        .where(model.id.in_(ids), or_(model.locked_until.is_(None), model.locked_until < now))
        .values(locked_until=lease)
        .returning(model.id)
    )
    return sorted(claimed.all())


async def unclaim(rt: Any, model: Any, ids: list[int]) -> None:
    """Give back the lease on claimed rows this process will not handle after all (it is stopping)."""
    if not ids:
        return
    async with rt.sessions() as session, session.begin():
        await session.execute(
            update(model).where(model.id.in_(ids), model.status == "pending").values(locked_until=None)
        )


def backoff_s(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff: base, 2·base, 4·base … capped."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


async def hold_lease(rt: Any, name: str, lease_s: float, *, on_acquire: Callable[[], None] | None = None) -> bool:
    """Take or renew the named lease for this process (`rt.worker_id`); False if another holds it.

    A lease this process holds with more than half its time left is not renewed: no write transaction
    per call, so checking it on every wake-up costs nothing on the hot path's database.

    `on_acquire` is called when the lease is taken rather than renewed: nobody held it, or another
    process did (its holder released it or let it expire). Whatever this process cached while holding
    the lease before may have been changed since by the other holder, so that is the moment to drop it.
    A lease of this process that expired without anyone else taking it is simply renewed.

    A lease held by another process is not asked for again until it expires, and at most every tenth
    of `lease_s` before that: a process that is not the tracker does not open a write transaction on
    every link open that wakes its tracker."""
    from bot.inbox import insert_ignore
    from bot.models import Lease

    now = rt.clock.now()
    held = rt.held_leases.get(name)
    if held is not None and held - now > dt.timedelta(seconds=lease_s / 2):
        return True
    retry_at = rt.lease_retry_at.get(name)
    if retry_at is not None and now < retry_at:
        return False  # another process holds it: not asked again on every wake-up
    until = now + dt.timedelta(seconds=lease_s)
    async with rt.sessions() as session, session.begin():
        stmt = insert_ignore(session.bind.dialect.name, Lease.__table__, "name").returning(Lease.__table__.c.name)
        inserted = (await session.execute(stmt, {"name": name, "owner": rt.worker_id, "locked_until": until})).first() is not None
        lease = await session.get(Lease, name, with_for_update=True, populate_existing=True)
        if lease is None:
            return False
        if lease.owner != rt.worker_id and lease.locked_until > now:
            # Asked again when it expires, or sooner (its holder may hand it back at a stop).
            rt.lease_retry_at[name] = min(lease.locked_until, now + dt.timedelta(seconds=lease_s / 10))
            return False
        taken = inserted or lease.owner != rt.worker_id
        lease.owner = rt.worker_id
        lease.locked_until = until
    rt.held_leases[name] = until
    rt.lease_retry_at.pop(name, None)
    if taken and on_acquire is not None:
        on_acquire()
    return True


def holds_lease(rt: Any, name: str) -> bool:
    """Whether this process holds the named lease now (as far as it knows: its last take or renewal)."""
    held = rt.held_leases.get(name)
    return held is not None and held > rt.clock.now()


async def release_leases(rt: Any) -> None:
    """On a graceful stop: hand the leases back so another process (or the next start) takes over at once."""
    from sqlalchemy import delete

    from bot.models import Lease

    if not rt.held_leases:
        return
    async with rt.sessions() as session, session.begin():
        await session.execute(delete(Lease).where(Lease.owner == rt.worker_id))
    rt.held_leases.clear()
