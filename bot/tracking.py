"""The behavior log's write side: every event goes through `EventLog`, batched by group commit.

The link path writes what it knows for certain (share, item, version, rep, channel, visitor cookie) and
returns once the batch is committed; the tracker (bot/tracker.py) resolves the contact behind it.
A visitor row and a viewer's child share are upserted in the same transaction as the event.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from typing import Any

from cachetools import TTLCache
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.batch import BatchWriter, Row
from bot.event_types import check_event_type
from bot.inbox import insert_ignore
from bot.models import Event, Share, Visitor
from bot.shares import LinkInfo

VISITOR_COOKIE = "bcn_v"


def new_visitor_id() -> str:
    return secrets.token_urlsafe(18)


class EventLog:
    """Writes behavior events (and the visitor/child-share rows they need) in batches."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.writer = BatchWriter(engine, name="events")
        dialect = engine.dialect.name
        visitor_of = select(Visitor.id).where(Visitor.cookie_id == bindparam("cookie")).scalar_subquery()
        self._visitor = insert_ignore(dialect, Visitor.__table__, "cookie_id")
        self._child = insert_ignore(dialect, Share.__table__, "token").values(
            token=bindparam("token"),
            item_id=bindparam("item_id"),
            version_id=bindparam("version_id"),
            rep_userid=bindparam("rep_userid"),
            contact_id=None,
            channel_id=bindparam("channel_id"),
            parent_share_id=bindparam("parent_share_id"),
            visitor_id=visitor_of,
            source="forward",
            created_at=bindparam("created_at"),
        )
        self._event_with_visitor = insert_ignore(dialect, Event.__table__, "idempotency_key").values(
            type=bindparam("type"),
            contact_id=bindparam("contact_id"),
            visitor_id=visitor_of,
            share_id=bindparam("share_id"),
            item_id=bindparam("item_id"),
            version_id=bindparam("version_id"),
            rep_userid=bindparam("rep_userid"),
            channel_id=bindparam("channel_id"),
            props=bindparam("props", type_=Event.__table__.c.props.type),
            occurred_at=bindparam("occurred_at", type_=Event.__table__.c.occurred_at.type),
            received_at=bindparam("received_at", type_=Event.__table__.c.received_at.type),
            idempotency_key=bindparam("idempotency_key"),
            processed=False,
        )
        self._event = insert_ignore(dialect, Event.__table__, "idempotency_key")

    async def close(self) -> None:
        await self.writer.close()

    @staticmethod
    def _link_event(type_: str, link: LinkInfo, cookie: str, props: dict[str, Any], key: str | None, now: dt.datetime) -> dict[str, Any]:
        return {
                "type": check_event_type(type_),
                "contact_id": None,
                "cookie": cookie,
                "share_id": link.share_id,
                "item_id": link.item_id,
                "version_id": link.version_id,
                "rep_userid": link.rep_userid,
                "channel_id": link.channel_id,
                "props": props,
                "occurred_at": now,
                "received_at": now,
                "idempotency_key": key,
            }

    async def link_event(
        self,
        type_: str,
        link: LinkInfo,
        cookie: str,
        *,
        now: dt.datetime,
        props: dict[str, Any] | None = None,
        key: str | None = None,
        user_agent: str = "",
        child_token: str | None = None,
    ) -> None:
        """An event on a tracked link by the browser with `cookie`; returns once committed.
        With `child_token`, also the viewer's own child share (for forward chains)."""
        params = self._link_event(type_, link, cookie, props or {}, key, now)
        rows: list[Row] = [
            (0, self._visitor, {"cookie_id": cookie, "user_agent": user_agent[:512], "first_seen_at": now, "contact_id": None}),
        ]
        if child_token is not None:
            rows.append(
                (
                    1,
                    self._child,
                    {
                        "token": child_token,
                        "item_id": link.item_id,
                        "version_id": link.version_id,
                        "rep_userid": link.rep_userid,
                        "channel_id": link.channel_id,
                        "parent_share_id": link.share_id,
                        "cookie": cookie,
                        "created_at": now,
                    },
                )
            )
        rows.append((2, self._event_with_visitor, params))
        await self.writer.write_rows(rows)

    async def contact_event(
        self,
        type_: str,
        contact_id: int,
        *,
        occurred_at: dt.datetime,
        received_at: dt.datetime,
        props: dict[str, Any] | None = None,
        key: str | None = None,
        rep_userid: str | None = None,
        item_id: int | None = None,
        channel_id: int | None = None,
    ) -> None:
        """An event that already knows its contact (offline import, chat, contact changes)."""
        await self.writer.write(
            self._event,
            {
                "type": check_event_type(type_),
                "contact_id": contact_id,
                "visitor_id": None,
                "share_id": None,
                "item_id": item_id,
                "version_id": None,
                "rep_userid": rep_userid,
                "channel_id": channel_id,
                "props": props or {},
                "occurred_at": occurred_at,
                "received_at": received_at,
                "idempotency_key": key,
                "processed": False,
            },
        )


class RecentOpens:
    """Reloads within a window are not new opens: a bounded in-process memory of (share, visitor).

    Across processes the event's idempotency key (share, visitor, window bucket) does the same job.
    """

    def __init__(self, window_s: float, size: int = 100_000) -> None:
        self.window_s = window_s
        self._seen: TTLCache[tuple[int, str], bool] = TTLCache(size, window_s, timer=time.monotonic)

    def is_reload(self, share_id: int, cookie: str) -> bool:
        key = (share_id, cookie)
        if key in self._seen:  # opened within the window (a reload does not extend it)
            return True
        self._seen[key] = True
        return False

    def bucket_key(self, share_id: int, cookie: str, at: dt.datetime) -> str:
        return f"open:{share_id}:{cookie}:{int(at.timestamp() // self.window_s)}"


async def add_event(
    session: Any,
    type_: str,
    *,
    contact_id: int | None,
    at: dt.datetime,
    received_at: dt.datetime | None = None,
    props: dict[str, Any] | None = None,
    key: str | None = None,
    rep_userid: str | None = None,
    item_id: int | None = None,
    channel_id: int | None = None,
    share_id: int | None = None,
) -> None:
    """Record an event inside the caller's transaction (callback handlers, jobs): it commits, or not,
    with the rest of the unit of work. A repeated `key` is ignored. The tracker scores it after commit."""
    stmt = insert_ignore(session.bind.dialect.name, Event.__table__, "idempotency_key")
    await session.execute(
        stmt,
        {
            "type": check_event_type(type_),
            "contact_id": contact_id,
            "visitor_id": None,
            "share_id": share_id,
            "item_id": item_id,
            "version_id": None,
            "rep_userid": rep_userid,
            "channel_id": channel_id,
            "props": props or {},
            "occurred_at": at,
            "received_at": received_at or at,
            "idempotency_key": key,
            "processed": False,
        },
    )
