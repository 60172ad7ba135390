"""Operator commands that work on the database directly (no server needed)."""

from __future__ import annotations

from sqlalchemy import select

from bot.clock import SystemClock
from bot.config import Settings
from bot.db import create_engine, read_session_factory, session_factory
from bot.inbox import requeue
from bot.models import InboxItem


async def list_inbox(settings: Settings, status: str, limit: int) -> list[str]:
    engine = create_engine(settings.database)
    try:
        async with read_session_factory(engine)() as session:
            rows = await session.scalars(
                select(InboxItem).where(InboxItem.status == status).order_by(InboxItem.id.desc()).limit(limit)
            )
            return [
                f"{r.id}\t{r.kind}\tattempts={r.attempts}\treceived={r.received_at:%Y-%m-%d %H:%M:%S}\t{(r.last_error or '')[:120]}"
                for r in rows
            ] or [f"no {status} callbacks"]
    finally:
        await engine.dispose()


async def retry_inbox(settings: Settings, item_id: int | None) -> int:
    engine = create_engine(settings.database)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await requeue(session, item_id, SystemClock().now())
    finally:
        await engine.dispose()
