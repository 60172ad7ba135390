"""Claiming rows of a work table (inbox, outbox) with a lease, safely across processes.

PostgreSQL: FOR UPDATE SKIP LOCKED, so several processes share the work without blocking each other.
SQLite: one writer at a time anyway; the conditional UPDATE makes the claim atomic.
A claim that is never finished (process killed) expires with its lease and is picked up again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession


async def claim(session: AsyncSession, model: Any, *, now: dt.datetime, lease_s: float, limit: int) -> list[int]:
    """Lease up to `limit` due rows with status 'pending'; returns their ids (oldest first)."""
    due = (
        select(model.id)
        .where(
            model.status == "pending",
            model.next_attempt_at <= now,
            or_(model.locked_until.is_(None), model.locked_until < now),
        )
        .order_by(model.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
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


def backoff_s(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff: base, 2·base, 4·base … capped."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


async def hold_lease(rt: Any, name: str, lease_s: float) -> bool:
    """Take or renew the named lease for this process (`rt.worker_id`); False if another holds it.

    A lease this process holds with more than half its time left is not renewed: no write transaction
    per call, so checking it on every wake-up costs nothing on the hot path's database."""
    from bot.inbox import insert_ignore
    from bot.models import Lease

    now = rt.clock.now()
    held = rt.held_leases.get(name)
    if held is not None and held - now > dt.timedelta(seconds=lease_s / 2):
        return True
    until = now + dt.timedelta(seconds=lease_s)
    async with rt.sessions() as session, session.begin():
        await session.execute(
            insert_ignore(session.bind.dialect.name, Lease.__table__, "name"),
            {"name": name, "owner": rt.worker_id, "locked_until": until},
        )
        lease = await session.get(Lease, name, with_for_update=True, populate_existing=True)
        if lease is None:
            return False
        if lease.owner != rt.worker_id and lease.locked_until > now:
            return False
        lease.owner = rt.worker_id
        lease.locked_until = until
    rt.held_leases[name] = until
    return True


async def release_leases(rt: Any) -> None:
    """On a graceful stop: hand the leases back so another process (or the next start) takes over at once."""
    from sqlalchemy import delete

    from bot.models import Lease

    if not rt.held_leases:
        return
    async with rt.sessions() as session, session.begin():
        await session.execute(delete(Lease).where(Lease.owner == rt.worker_id))
    rt.held_leases.clear()
