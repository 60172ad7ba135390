"""Tracked links: one share per (item version, rep, contact or channel), with an unguessable token.

Tokens carry 144 random bits (`secrets.token_urlsafe(18)`); a child token for one viewer of a share is
an HMAC of the parent token and the viewer's cookie, so it cannot be derived without the server key.
The hot path resolves tokens through a small TTL cache: shares never change, items rarely do.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.errors import NotShareable
from bot.models import ContentItem, ContentVersion, Share

TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


def new_token() -> str:
    return secrets.token_urlsafe(18)


def check_shareable(item: ContentItem) -> None:
    """NotShareable unless the item may go to customers: not internal, not retired, with a version."""
    if item.internal:
        raise NotShareable(f"{item.slug} is internal material for reps only")
    if item.retired_at is not None or item.current_version_id is None:
        raise NotShareable(f"{item.slug} is retired")


async def create_share(
    session: AsyncSession,
    item: ContentItem,
    *,
    rep_userid: str | None,
    contact_id: int | None = None,
    channel_id: int | None = None,
    source: str = "api",
    now: dt.datetime | None = None,
) -> Share:
    """The share for (current version, rep, contact, channel): reused if it exists, else created
    (at `now` when given: the caller's clock)."""
    check_shareable(item)
    existing = await session.scalar(
        select(Share).where(
            Share.version_id == item.current_version_id,
            Share.rep_userid.is_(None) if rep_userid is None else Share.rep_userid == rep_userid,
            Share.contact_id.is_(None) if contact_id is None else Share.contact_id == contact_id,
            Share.channel_id.is_(None) if channel_id is None else Share.channel_id == channel_id,
            Share.parent_share_id.is_(None),
        )
    )
    if existing is not None:
        return existing
    share = Share(
        token=new_token(),
        item_id=item.id,
        version_id=item.current_version_id,
        rep_userid=rep_userid,
        contact_id=contact_id,
        channel_id=channel_id,
        source=source,
    )
    if now is not None:
        share.created_at = now
    session.add(share)
    await session.flush()
    return share


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the link path needs to know about a token, without touching the database again."""

    share_id: int
    token: str
    item_id: int
    version_id: int
    current_version_id: int | None
    rep_userid: str | None
    contact_id: int | None
    channel_id: int | None
    parent_share_id: int | None
    parent_token: str | None
    slug: str
    title: str
    summary: str
    kind: str
    gated: bool
    internal: bool
    retired: bool
    attachment_name: str | None


class ShareResolver:
    """token → LinkInfo with a bounded TTL cache (content imports in another process show up within ttl)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: float = 60.0, size: int = 50_000) -> None:
        self.sessions = sessions
        self._cache: TTLCache[str, LinkInfo] = TTLCache(size, ttl_s, timer=time.monotonic)

    def forget(self, token: str | None = None) -> None:
        if token is None:
            self._cache.clear()
        else:
            self._cache.pop(token, None)

    async def resolve(self, token: str) -> LinkInfo | None:
        if not TOKEN_RE.match(token):
            return None
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        info = await self._load(token)
        if info is not None:  # misses are not cached: a child token may be written a moment later
            self._cache[token] = info
        return info

    async def _load(self, token: str) -> LinkInfo | None:
        async with self.sessions() as session:
            row = (await session.execute(LINK_BY_TOKEN, {"token": token})).first()
        if row is None:
            return None
        *head, retired_at, attachment = row
        return LinkInfo(*head, retired=retired_at is not None, attachment_name=attachment)


def _link_by_token() -> Any:
    """One row in LinkInfo's field order (`retired` as the item's retired_at) for a token: the share,
    its item, the item's current version's attachment and the parent share's token, read from the
    columns rather than as ORM objects."""
    share, item, version = Share.__table__, ContentItem.__table__, ContentVersion.__table__
    parent = Share.__table__.alias("parent")
    return (
        select(
            share.c.id, share.c.token, item.c.id, share.c.version_id, item.c.current_version_id, share.c.rep_userid,
            share.c.contact_id, share.c.channel_id, share.c.parent_share_id, parent.c.token, item.c.slug, item.c.title,
            item.c.summary, item.c.kind, item.c.gated, item.c.internal, item.c.retired_at,
            version.c.attachment_name,
        )
        .select_from(share)
        .join(item, item.c.id == share.c.item_id)
        .outerjoin(version, version.c.id == item.c.current_version_id)
        .outerjoin(parent, parent.c.id == share.c.parent_share_id)
        .where(share.c.token == bindparam("token"))
    )


# Built once: constructing it (an alias of shares, four joins) cost more than SQLite running it, on every
# cache miss: after a restart, and on the first open of every forward's child link.
LINK_BY_TOKEN = _link_by_token()
