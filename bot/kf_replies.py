"""Answering one customer message in WeChat Customer Service: menus, links, search, hand-over.

Every reply goes through `Conversation.send`, which keeps WeCom's budget: after a customer message
we may send at most 5 messages within 48 h. What is over budget is not sent but recorded as an
outbox row with status `skipped` (and the reason), so the decision is durable and visible.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from bot.context import Context
from bot.customer_text import clip, label, text
from bot.errors import NotShareable
from bot.kf_menus import (
    Pick,
    category_entries,
    parse_menu_id,
    category_items,
    item_entry,
    msgmenu,
    page_of,
    search_entries,
    shareable_item,
)
from bot.models import Contact, Event, OutboxItem
from bot.outbox import enqueue
from bot.router import normalize_text
from bot.shares import create_share
from bot.tracking import add_event

log = logging.getLogger("beacon.kf")

SEND_MSG = "/cgi-bin/kf/send_msg"
TRANS = "/cgi-bin/kf/service_state/trans"
WINDOW = dt.timedelta(hours=48)
WINDOW_MESSAGES = 5
TEXT_BYTES = 2048
LINK_TITLE_BYTES = 128
LINK_DESC_BYTES = 512
BOT_STATES = (0, 1)  # new / with the bot: the only states in which kf/send_msg may be used
_PUNCTUATION = " ，。！？、,.!?~～…:：;；\"'“”‘’()（）"


def plain(value: str) -> str:
    """Text as a keyword compares: NFKC, lower case, surrounding punctuation and spaces dropped."""
    return normalize_text(value).lower().strip(_PUNCTUATION)


@dataclass
class Conversation:
    """One customer message being answered, inside the page's unit of work."""

    ctx: Context
    open_kfid: str
    external_userid: str
    msgid: str
    contact: Contact
    window_start: dt.datetime
    service_state: int = 0
    thumb_media_id: str | None = None
    first: bool = False
    event_type: str = "message"
    event_props: dict[str, Any] = field(default_factory=dict)
    event_item_id: int | None = None
    event_share_id: int | None = None
    _sent: int = 0

    @property
    def lang(self) -> str:
        return self.ctx.settings.kf.lang

    @property
    def may_reply(self) -> bool:
        return self.service_state in BOT_STATES

    def _cfg(self, key: str) -> str:
        return str(getattr(self.ctx.settings.kf, key)) or text(key, self.lang)

    # ---- sending within WeCom's budget ------------------------------------------------------

    async def _over_budget(self) -> str | None:
        if self.ctx.clock.now() - self.window_start > WINDOW:
            return "the customer's last message is older than 48 h"
        used = await self.ctx.session.scalar(
            select(func.count()).select_from(OutboxItem).where(
                OutboxItem.path == SEND_MSG,
                OutboxItem.idempotency_key.startswith(f"kf:{self.open_kfid}:{self.external_userid}:", autoescape=True),
                OutboxItem.created_at >= self.window_start,
                OutboxItem.status.not_in(("failed", "skipped")),
            )
        )
        if (used or 0) >= WINDOW_MESSAGES:
            return f"{WINDOW_MESSAGES} messages already sent since the customer's last message"
        return None

    async def send(self, msgtype: str, body: dict[str, Any]) -> bool:
        """Queue one kf message to this customer; False (and a `skipped` record) when over budget."""
        self._sent += 1
        key = f"kf:{self.open_kfid}:{self.external_userid}:{self.msgid}:{self._sent}"
        payload = {"touser": self.external_userid, "open_kfid": self.open_kfid, "msgtype": msgtype, msgtype: body}
        problem = await self._over_budget()
        if problem is None:
            self.ctx.send(SEND_MSG, payload, key=key)
            return True
        row = enqueue(self.ctx.session, SEND_MSG, payload, key=key, now=self.ctx.clock.now())
        row.status, row.last_error = "skipped", f"kf budget: {problem}"
        log.warning("kf reply to %s not sent: %s", self.external_userid, problem)
        return False

    async def send_text(self, content: str) -> bool:
        return await self.send("text", {"content": clip(content, TEXT_BYTES)})

    def _head(self, head: str) -> str:
        return f"{self._cfg('greeting')}\n{head}" if self.first else head

    # ---- what the customer asked for --------------------------------------------------------

    async def send_categories(self, head: str | None = None, offset: int = 0) -> None:
        entries = await category_entries(self.ctx.session, self.ctx.settings.kf.menu_by)
        if not entries:
            await self.send_text(text("empty_library", self.lang))
            return
        shown = page_of(entries, offset, ("cats:", text("more_categories", self.lang)))
        await self.send("msgmenu", msgmenu(self._head(head or self._cfg("menu_head")), shown, self._cfg("menu_tail")))

    async def send_category(self, pick: Pick) -> None:
        items = await category_items(self.ctx.session, pick.dimension, pick.value)
        self.event_props["category"] = f"{pick.dimension}:{pick.value}"
        if not items:
            await self.send_categories()
            return
        name = label(pick.dimension, pick.value)
        shown = page_of([item_entry(i) for i in items], pick.offset, (f"cat:{pick.dimension}:{pick.value}:", text("more", self.lang)))
        head = text("items_head", self.lang, label=name, count=len(items))
        await self.send("msgmenu", msgmenu(head, shown, self._cfg("menu_tail")))

    async def send_item(self, pick: Pick) -> None:
        """A link message with a tracked share of the item for this customer (source "kf")."""
        session = self.ctx.session
        item = await shareable_item(session, pick)
        try:
            if item is None:
                raise NotShareable(pick.slug or str(pick.item_id))
            share = await create_share(
                session, item, rep_userid=self.contact.owner_userid, contact_id=self.contact.id, source="kf"
            )
        except NotShareable:
            self.event_props["unavailable"] = pick.slug or str(pick.item_id)
            await self.send_text(text("unavailable", self.lang))
            return
        self.event_item_id, self.event_share_id = item.id, share.id
        url = f"{self.ctx.settings.server.public_url}/l/{share.token}"
        if self.thumb_media_id is None:
            # WeCom refuses link messages without a thumbnail; a text with the link still tracks.
            await self.send_text(f"{item.title}\n{item.summary}\n{url}")
            return
        link = {
            "title": clip(item.title, LINK_TITLE_BYTES),
            "desc": clip(item.summary, LINK_DESC_BYTES),
            "url": url,
            "thumb_media_id": self.thumb_media_id,
        }
        await self.send("link", link)

    async def search(self, query: str) -> None:
        entries = await search_entries(self.ctx.session, query)
        shown_query = clip(query, 60)
        self.event_props["results"] = len(entries)
        if entries:
            head = self._head(text("results_head", self.lang, query=shown_query))
            await self.send("msgmenu", msgmenu(head, entries, self._cfg("menu_tail")))
        elif self.first:
            await self.send_categories()
        else:
            await self.send_categories(text("not_found_head", self.lang, query=shown_query))

    async def handover(self) -> None:
        """To a human: the contact's owner (state 3) if there is one, else the waiting pool (state 2)."""
        owner = self.contact.owner_userid
        self.event_props["handover"] = owner or "pool"
        await self.send_text(text("handover", self.lang))
        trans: dict[str, Any] = {"open_kfid": self.open_kfid, "external_userid": self.external_userid}
        trans |= {"service_state": 3, "servicer_userid": owner} if owner else {"service_state": 2}
        self.ctx.send(TRANS, trans, key=f"kf:{self.msgid}:trans")
        self.service_state = trans["service_state"]
        if owner:
            name = self.contact.name or self.external_userid
            self.ctx.send_text(owner, text("notice_handover", "zh", name=name), key=f"kf:{self.msgid}:notice")

    async def has_history(self) -> bool:
        """Whether this customer wrote to customer service before (their events are keyed `kf:`)."""
        found = await self.ctx.session.scalar(
            select(Event.id).where(Event.contact_id == self.contact.id, Event.idempotency_key.startswith("kf:")).limit(1)
        )
        return found is not None

    async def record(self, at: dt.datetime) -> None:
        """The message's behavior event; its key `kf:<msgid>` also marks the message as processed."""
        props = {"open_kfid": self.open_kfid, **self.event_props}
        await add_event(
            self.ctx.session, self.event_type, contact_id=self.contact.id, at=at, received_at=self.ctx.clock.now(),
            props=props, key=f"kf:{self.msgid}", rep_userid=self.contact.owner_userid,
            item_id=self.event_item_id, share_id=self.event_share_id,
        )  # fmt: skip


def is_one_of(value: str, words: list[str]) -> bool:
    return bool(plain(value)) and plain(value) in {plain(w) for w in words}


async def answer(conv: Conversation, message: dict[str, Any], at: dt.datetime) -> None:
    """Queue the replies to one customer message (origin 3) and record its event.

    A menu pick answers with the next menu level or the item's link; 人工 hands over; a keyword, the
    customer's first message or an unmatched search gets the category menu; other text is searched.
    Nothing is sent while a human has the chat (service state other than 0/1)."""
    msgtype = str(message.get("msgtype") or "")
    body = message.get("text") if msgtype == "text" else None
    content = str((body or {}).get("content") or "")
    menu_id = str((body or {}).get("menu_id") or "")
    conv.first = not await conv.has_history()
    pick = parse_menu_id(menu_id) if menu_id else None
    if pick is not None:
        conv.event_type = "menu_click"
        conv.event_props["menu_id"] = menu_id
    else:
        conv.event_props |= {"msgtype": msgtype, **({"text": content[:500]} if content else {})}
    kf = conv.ctx.settings.kf
    if conv.may_reply:
        if pick is not None:
            await _picked(conv, pick)
        elif msgtype == "text" and is_one_of(content, kf.handover_words):
            await conv.handover()
        elif msgtype == "text" and (is_one_of(content, kf.keywords) or (conv.first and not plain(content))):
            await conv.send_categories()
        elif msgtype == "text" and plain(content):
            await conv.search(normalize_text(content))
        elif conv.first:
            await conv.send_categories()
    else:
        conv.event_props["service_state"] = conv.service_state
    await conv.record(at)


async def _picked(conv: Conversation, pick: Pick) -> None:
    if pick.what == "categories":
        await conv.send_categories(offset=pick.offset)
    elif pick.what == "category":
        await conv.send_category(pick)
    else:
        await conv.send_item(pick)
