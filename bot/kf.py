"""WeChat Customer Service (微信客服): pulling messages with `kf/sync_msg` and answering each once.

A `kf_msg_or_event` callback carries no message, only a Token: we page through `sync_msg` from the
account's stored cursor. Each page is its own unit of work on the callback's session — the cursor moves
(compare-and-set on the old value) in the same transaction as the page's events and outbox rows, and
that transaction commits before the next page is fetched — so a crash or a handler error mid-page
neither skips nor repeats: the failed page is fetched again and processed from scratch when the inbox
retries the callback. Two workers racing on one account cannot both win the compare-and-set; the loser
re-reads the cursor. A message already marked processed (`kf:<msgid>` in events or outbox) is skipped
as well, in case WeCom repeats one. No transaction is open during WeCom calls (on SQLite a unit of work
holds the write lock).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channels import channel_by_state
from bot.context import Context
from bot.customer_text import text
from bot.identity import add_identity, contact_for_external_userid, find_by_identity, known_contact, merge_contacts
from bot.inbox import insert_ignore
from bot.kf_menus import category_entries, msgmenu, page_of
from bot.kf_replies import Conversation, answer
from bot.kf_thumb import thumb_media_id
from bot.models import Contact, Event, KfCursor, OutboxItem
from bot.wecom.client import WeComError

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.kf")

SYNC_MSG = "/cgi-bin/kf/sync_msg"
SEND_ON_EVENT = "/cgi-bin/kf/send_msg_on_event"
SERVICE_STATE = "/cgi-bin/kf/service_state/get"
KF_BAD_TOKEN = 95007
MAX_PAGES = 100  # per callback; WeCom may answer empty pages with has_more=1, so the loop is bounded
CUSTOMER, SYSTEM = 3, 4  # message origins that matter (5 = a human servicer's own messages)


@dataclass
class Page:
    next_cursor: str
    has_more: bool
    messages: list[dict[str, Any]]


@dataclass
class Prepared:
    """What a page needs from WeCom, fetched before its transaction."""

    states: dict[str, int] = field(default_factory=dict)
    latest: dict[str, dt.datetime] = field(default_factory=dict)
    thumb: str | None = None


def _when(message: dict[str, Any], fallback: dt.datetime) -> dt.datetime:
    raw = message.get("send_time")
    return dt.datetime.fromtimestamp(int(raw), dt.timezone.utc) if isinstance(raw, int) else fallback


async def read_cursor(session: AsyncSession, open_kfid: str) -> str | None:
    """The stored cursor; None when the account has none yet."""
    return await session.scalar(select(KfCursor.cursor).where(KfCursor.open_kfid == open_kfid))


async def fetch_page(rt: "Runtime", open_kfid: str, cursor: str, token: str | None) -> tuple[Page, str | None]:
    """One sync_msg page. The callback's Token lives 10 min: a retry after that syncs without it."""
    payload: dict[str, Any] = {"cursor": cursor, "limit": rt.settings.kf.page_size, "open_kfid": open_kfid}
    try:
        answer_ = await rt.wecom.post(SYNC_MSG, payload | ({"token": token} if token else {}))
    except WeComError as exc:
        if exc.errcode != KF_BAD_TOKEN or not token:
            raise
        log.info("kf token for %s expired; syncing without it", open_kfid)
        token = None
        answer_ = await rt.wecom.post(SYNC_MSG, payload)
    page = Page(
        next_cursor=str(answer_.get("next_cursor") or cursor),
        has_more=bool(answer_.get("has_more")),
        messages=[m for m in answer_.get("msg_list") or [] if isinstance(m, dict)],
    )
    return page, token


async def prepare(rt: "Runtime", open_kfid: str, messages: list[dict[str, Any]]) -> Prepared:
    prepared = Prepared()
    now = rt.clock.now()
    for message in messages:
        customer = message.get("external_userid")
        if message.get("origin") != CUSTOMER or not customer:
            continue
        at = _when(message, now)
        prepared.latest[customer] = max(at, prepared.latest.get(customer, at))
        if customer not in prepared.states:
            prepared.states[customer] = await _service_state(rt, open_kfid, customer)
        menu_id = str((message.get("text") or {}).get("menu_id") or "")
        if menu_id.startswith(("item:", "iid:")) and prepared.thumb is None:
            prepared.thumb = await thumb_media_id(rt)
    return prepared


async def _service_state(rt: "Runtime", open_kfid: str, customer: str) -> int:
    try:
        answer_ = await rt.wecom.post(SERVICE_STATE, {"open_kfid": open_kfid, "external_userid": customer})
    except WeComError as exc:
        log.warning("kf service state of %s unknown (%s); assuming the bot may answer", customer, exc)
        return 0
    return int(answer_.get("service_state") or 0)


async def advance_cursor(session: AsyncSession, open_kfid: str, old: str | None, new: str, now: dt.datetime) -> bool:
    """Compare-and-set the cursor inside the page's transaction; False if another worker moved it."""
    if old is None:
        stmt = insert_ignore(session.bind.dialect.name, KfCursor.__table__, "open_kfid")
        result = await session.execute(stmt, {"open_kfid": open_kfid, "cursor": new, "updated_at": now})
    else:
        result = await session.execute(
            update(KfCursor).where(KfCursor.open_kfid == open_kfid, KfCursor.cursor == old).values(cursor=new, updated_at=now)
        )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def sync_account(ctx: Context, open_kfid: str, token: str | None) -> int:
    """Process everything new for one kf account, committing page by page; returns messages processed."""
    session, rt = ctx.session, ctx.runtime
    handled = 0
    for _ in range(MAX_PAGES):
        cursor = await read_cursor(session, open_kfid)
        await session.commit()  # nothing pending: just leave no transaction open during WeCom calls
        page, token = await fetch_page(rt, open_kfid, cursor or "", token)
        prepared = await prepare(rt, open_kfid, page.messages)
        if not await advance_cursor(session, open_kfid, cursor, page.next_cursor, ctx.clock.now()):
            await session.rollback()
            log.info("kf cursor of %s moved by another worker; re-reading", open_kfid)
            continue
        for message in page.messages:
            handled += await process_message(ctx, open_kfid, message, prepared)
        await session.commit()
        rt.outbox.wake()
        rt.tracker.wake()
        if not page.has_more:
            break
    else:
        log.warning("kf %s: stopped after %d pages; the next callback continues from the cursor", open_kfid, MAX_PAGES)
    return handled


async def _seen(session: AsyncSession, msgid: str) -> bool:
    key = f"kf:{msgid}"
    if await session.scalar(select(Event.id).where(Event.idempotency_key == key)) is not None:
        return True
    return await session.scalar(select(OutboxItem.id).where(OutboxItem.idempotency_key == key)) is not None


async def process_message(ctx: Context, open_kfid: str, message: dict[str, Any], prepared: Prepared) -> int:
    """Answer a customer message (origin 3) or an enter_session event (origin 4), once per msgid."""
    msgid = str(message.get("msgid") or "")
    origin = message.get("origin")
    if not msgid or origin not in (CUSTOMER, SYSTEM) or await _seen(ctx.session, msgid):
        return 0
    now = ctx.clock.now()
    if origin == CUSTOMER:
        customer = str(message.get("external_userid") or "")
        if not customer:
            return 0
        contact = await contact_for_kf(ctx.session, customer, now=now)
        conv = Conversation(
            ctx, open_kfid, customer, msgid, contact,
            window_start=prepared.latest.get(customer, now),
            service_state=prepared.states.get(customer, 0),
            thumb_media_id=prepared.thumb,
        )  # fmt: skip
        await answer(conv, message, _when(message, now))
        prepared.states[customer] = conv.service_state  # after a hand-over the bot stays quiet
        return 1
    event = message.get("event") or {}
    if message.get("msgtype") == "event" and event.get("event_type") == "enter_session":
        await enter_session(ctx, msgid, event)
        return 1
    log.debug("kf event %s ignored", event.get("event_type"))
    return 0


async def enter_session(ctx: Context, msgid: str, event: dict[str, Any]) -> None:
    """The customer opened the chat: the category menu via `send_msg_on_event` (welcome_code, once, 20 s)."""
    customer = str(event.get("external_userid") or "")
    if not customer:
        return
    contact = await contact_for_kf(ctx.session, customer, now=ctx.clock.now())
    channel = await channel_by_state(ctx.session, str(event.get("scene_param") or ""))
    if channel is not None and contact.channel_id is None:
        contact.channel_id = channel.id  # a kf link made with a channel's state as scene_param
    code = str(event.get("welcome_code") or "")
    if not code:
        return
    kf, lang = ctx.settings.kf, ctx.settings.kf.lang
    entries = await category_entries(ctx.session, kf.menu_by)
    head = f"{kf.greeting or text('greeting', lang)}\n{kf.menu_head or text('menu_head', lang)}"
    if entries:
        shown = page_of(entries, 0, ("cats:", text("more_categories", lang)))
        body: dict[str, Any] = {"msgtype": "msgmenu", "msgmenu": msgmenu(head, shown, kf.menu_tail or text("menu_tail", lang))}
    else:
        body = {"msgtype": "text", "text": {"content": text("empty_library", lang)}}
    ctx.send(SEND_ON_EVENT, {"code": code, **body}, key=f"kf:{msgid}")


async def contact_for_kf(session: AsyncSession, external_userid: str, *, now: dt.datetime) -> Contact:
    """The contact behind a kf customer. In one corp a kf external_userid is the customer's contact
    external_userid, so both identities point at one contact (merging two if they had split)."""
    by_kf = await find_by_identity(session, "kf", external_userid)
    by_ext = await known_contact(session, external_userid)
    if by_ext is None and by_kf is not None:
        contact = by_kf
        if contact.external_userid is None:
            contact.external_userid = external_userid
        await add_identity(session, contact, "external_userid", external_userid)
    else:
        contact = await contact_for_external_userid(session, external_userid, now=now)
        if by_kf is not None and by_kf.id != contact.id:
            await merge_contacts(session, by_kf.id, contact.id, reason="kf external_userid = external_userid", now=now)
    await add_identity(session, contact, "kf", external_userid)
    return contact
