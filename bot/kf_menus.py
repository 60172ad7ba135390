"""Customer-service menus built from the library: categories (kind / industry / stage), items, search hits.

Only customer-facing items (not internal, not retired) ever appear. WeCom's msgmenu limits: at most
10 entries, click id 1–64 bytes, entry text ≤ 128 bytes, head and tail ≤ 1024 bytes (kf/send_msg,
doc 94677). Longer lists show their first 9 entries plus a 更多 entry that pages on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.customer_text import LABELS, clip, label
from bot.models import ContentItem
from content.errors import InvalidFilter
from content.search import search_items
from content.vocab import KINDS, STAGES

MENU_MAX = 10
CLICK_ID_BYTES = 64
CLICK_TEXT_BYTES = 128
HEAD_BYTES = 1024
TAIL_BYTES = 1024
DIMENSIONS = ("kind", "industry", "stage")

Entry = tuple[str, str]  # (click id, text shown)


@dataclass(frozen=True)
class Pick:
    """What a clicked menu id asks for: `categories` (from offset), a `category`, or an `item`."""

    what: str
    dimension: str = ""
    value: str = ""
    offset: int = 0
    slug: str = ""
    item_id: int | None = None


def parse_menu_id(menu_id: str) -> Pick | None:
    """`cats:9`, `cat:kind:case_study[:9]`, `item:<slug>`, `iid:<id>`; None for ids we never made."""
    parts = menu_id.split(":")
    offset = lambda raw: int(raw) if raw.isdigit() else 0  # noqa: E731
    if parts[0] == "cats" and len(parts) == 2:
        return Pick("categories", offset=offset(parts[1]))
    if parts[0] == "cat" and len(parts) in (3, 4) and parts[1] in DIMENSIONS and parts[2]:
        return Pick("category", parts[1], parts[2], offset=offset(parts[3]) if len(parts) == 4 else 0)
    if parts[0] == "item" and len(parts) == 2 and parts[1]:
        return Pick("item", slug=parts[1])
    if parts[0] == "iid" and len(parts) == 2 and parts[1].isdigit():
        return Pick("item", item_id=int(parts[1]))
    return None


def item_entry(item: ContentItem) -> Entry:
    menu_id = f"item:{item.slug}"
    if len(menu_id.encode()) > CLICK_ID_BYTES:
        menu_id = f"iid:{item.id}"
    return menu_id, item.title


def page_of(entries: Sequence[Entry], offset: int, more: tuple[str, str]) -> list[Entry]:
    """At most MENU_MAX entries from `offset`; when more remain, 9 of them and `more` with its offset."""
    rest = list(entries[offset:])
    if len(rest) <= MENU_MAX:
        return rest
    more_id, more_text = more
    return rest[: MENU_MAX - 1] + [(f"{more_id}{offset + MENU_MAX - 1}", more_text)]


def msgmenu(head: str, entries: Iterable[Entry], tail: str) -> dict[str, Any]:
    """A kf `msgmenu` body within WeCom's limits."""
    return {
        "head_content": clip(head, HEAD_BYTES),
        "list": [
            {"type": "click", "click": {"id": menu_id, "content": clip(text, CLICK_TEXT_BYTES)}}
            for menu_id, text in list(entries)[:MENU_MAX]
        ],
        "tail_content": clip(tail, TAIL_BYTES),
    }


def _order(dimension: str, values: Iterable[str]) -> list[str]:
    known = {"kind": KINDS, "stage": STAGES, "industry": tuple(LABELS["industry"])}[dimension]
    return sorted(values, key=lambda v: (known.index(v) if v in known else len(known), v))


async def category_entries(session: AsyncSession, menu_by: Sequence[str]) -> list[Entry]:
    """One entry per category that has at least one customer-facing item, in config order."""
    items = await search_items(session, limit=None)
    found: dict[str, set[str]] = {d: set() for d in DIMENSIONS}
    for item in items:
        found["kind"].add(item.kind)
        found["stage"].add(item.stage)
        found["industry"].update(str(i) for i in item.industries or [])
    entries: list[Entry] = []
    for dimension in dict.fromkeys(menu_by):
        for value in _order(dimension, found[dimension]):
            menu_id = f"cat:{dimension}:{value}"
            if len(menu_id.encode()) + 4 <= CLICK_ID_BYTES:  # room for a paging offset
                entries.append((menu_id, label(dimension, value)))
    return entries


async def category_items(session: AsyncSession, dimension: str, value: str) -> list[ContentItem]:
    """Customer-facing items of one category, newest first (empty for a category that no longer exists)."""
    try:
        return await search_items(session, limit=None, **{dimension: value})
    except InvalidFilter:
        return []


async def shareable_item(session: AsyncSession, pick: Pick) -> ContentItem | None:
    """The picked item if a customer may have it (exists, not internal, not retired)."""
    where = ContentItem.id == pick.item_id if pick.item_id is not None else ContentItem.slug == pick.slug
    item = await session.scalar(select(ContentItem).where(where))
    if item is None or item.internal or item.retired_at is not None or item.current_version_id is None:
        return None
    return item


async def search_entries(session: AsyncSession, query: str) -> list[Entry]:
    """Items matching the whole text, else any of its words (≥ 2 characters), best first, ≤ MENU_MAX."""
    items = await search_items(session, q=query, limit=MENU_MAX)
    if not items:
        seen: dict[int, ContentItem] = {}
        for word in query.split():
            if len(word) >= 2:
                for item in await search_items(session, q=word, limit=MENU_MAX):
                    seen.setdefault(item.id, item)
        items = list(seen.values())[:MENU_MAX]
    return [item_entry(item) for item in items]
