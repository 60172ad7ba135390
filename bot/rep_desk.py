"""What the rep's chat commands answer: library search, sharing, a contact's story, hot leads.

Each function reads (and, for sharing, writes) through the caller's session and returns a `Reply`
(a WeCom app message body) for the handler to send; bad input answers with a hint, never silence.
Reps see their own contacts (owned, or shared with); managers and admins see everyone's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import NotShareable
from bot.lifecycle import STAGE_LABELS, TEMPERATURE_LABELS, shown_score
from bot.models import Contact, ContentItem, Rep, Share
from bot.rep_texts import EVENT_LABELS, KIND_LABELS, label, say
from bot.shares import create_share
from content.search import get_item, search_items
from content.vocab import SLUG_RE

if TYPE_CHECKING:
    from bot.runtime import Runtime

FIND_LIMIT = 5
MARKDOWN_BYTES = 2000  # WeCom refuses markdown over 2048 bytes
CHOICES = 8


@dataclass(frozen=True)
class Reply:
    """One app message: `msgtype` and its body (`{"content": ...}` for text and markdown)."""

    msgtype: str
    body: dict[str, Any]

    @classmethod
    def text(cls, content: str) -> "Reply":
        return cls("text", {"content": content})


def when_text(at: dt.datetime | None, now: dt.datetime, tz: str, lang: str) -> str:
    """Local time as a rep reads it: 今天 14:00 / 明天 09:00 / 11-25 09:00."""
    if at is None:
        return say("never", lang)
    zone = ZoneInfo(tz)
    local, today = at.astimezone(zone), now.astimezone(zone).date()
    days = (local.date() - today).days
    words = {0: ("今天", "today"), 1: ("明天", "tomorrow"), -1: ("昨天", "yesterday")}
    day = words[days][0 if lang == "zh" else 1] if days in words else local.strftime("%m-%d")
    return f"{day} {local:%H:%M}"


def display_name(contact: Contact, lang: str) -> str:
    company = f"（{contact.company}）" if lang == "zh" else f" ({contact.company})"
    return (contact.name or contact.external_userid or f"#{contact.id}") + (company if contact.company else "")


def contact_key(contact: Contact) -> str:
    """What the rep can type to name this contact unambiguously (find_contact understands both)."""
    return contact.external_userid or f"id:{contact.id}"


# ---- finding things ----------------------------------------------------------------------------


def _visible(rep: Rep) -> ColumnElement[bool]:
    """Whose contacts a member finds in chat, as on the pages (bot/auth.py): a rep their own, a manager
    also their reports', an admin everyone's; and anyone those they shared with. Found through the
    owner and share indexes: a manager's search used to read every contact (seconds at a million,
    inside the inbox worker's write transaction)."""
    if rep.role == "admin":
        return true()
    shared = select(Share.contact_id).where(Share.rep_userid == rep.userid, Share.contact_id.is_not(None))
    if rep.role == "manager":
        team = select(Rep.userid).where(or_(Rep.userid == rep.userid, Rep.manager_userid == rep.userid))
        return or_(Contact.owner_userid.in_(team), Contact.id.in_(shared))
    return or_(Contact.owner_userid == rep.userid, Contact.id.in_(shared))


async def rep_contacts(session: AsyncSession, rep: Rep, query: str) -> list[Contact]:
    """Contacts of this rep matching `query`: by ID exactly, else by name exactly, else by name or company."""
    live = select(Contact).where(_visible(rep), Contact.merged_into_id.is_(None), Contact.erased_at.is_(None))
    q = query.strip()
    if q.startswith("id:") and q[3:].isdigit():
        return list((await session.scalars(live.where(Contact.id == int(q[3:])))).all())
    exact = list((await session.scalars(live.where(or_(Contact.external_userid == q, Contact.name == q)).order_by(Contact.id))).all())
    by_id = [c for c in exact if c.external_userid == q]
    if by_id or exact:
        return by_id or exact
    like = or_(Contact.name.icontains(q, autoescape=True), Contact.company.icontains(q, autoescape=True))
    return list((await session.scalars(live.where(like).order_by(Contact.score.desc(), Contact.id).limit(CHOICES + 1))).all())


async def find_items(session: AsyncSession, query: str) -> list[ContentItem]:
    """Items named by slug, exact title, or title keyword (internal ones included: reps may see them)."""
    q = query.strip()
    if SLUG_RE.fullmatch(q.lower()):
        item = await get_item(session, q.lower())
        if item is not None:
            return [item]
    items = await search_items(session, q=q, include_internal=True, limit=20)
    exact = [i for i in items if i.title == q]
    titled = [i for i in items if q.casefold() in i.title.casefold()]
    return exact[:1] or titled or items


def _choices(head: str, lines: list[str]) -> Reply:
    more = ["…"] if len(lines) > CHOICES else []
    return Reply.text("\n".join([head, *lines[:CHOICES], *more]))


def _contact_choices(query: str, contacts: list[Contact], lang: str) -> Reply:
    return _choices(say("contact_many", lang, q=query), [f"· {display_name(c, lang)} — {contact_key(c)}" for c in contacts])


# ---- commands ----------------------------------------------------------------------------------


async def search_reply(session: AsyncSession, query: str, lang: str) -> Reply:
    """找 <关键词>: a markdown list with kind, slug, summary and the 分享 command (internal ones marked)."""
    q = query.strip()
    if not q:
        return Reply.text(say("find_usage", lang))
    items = await search_items(session, q=q, include_internal=True, limit=None)
    if not items:
        return Reply.text(say("find_none", lang, q=q))
    parts = [say("find_head", lang, q=q, n=len(items))]
    shown = 0
    for n, item in enumerate(items[:FIND_LIMIT], 1):
        summary = item.summary if len(item.summary) <= 60 else item.summary[:59] + "…"
        mark = say("internal_mark", lang) if item.internal else ""
        hint = say("internal_hint", lang) if item.internal else say("share_hint", lang, slug=item.slug)
        block = f"{n}. **{item.title}**{mark}\n> {label(KIND_LABELS, item.kind, lang)} · `{item.slug}`\n> {summary}\n{hint}"
        if len("\n\n".join([*parts, block]).encode()) > MARKDOWN_BYTES - 200:
            break
        parts.append(block)
        shown += 1
    if len(items) > shown:
        parts.append(say("find_more", lang, n=len(items) - shown))
    return Reply("markdown", {"content": "\n\n".join(parts)})


async def share_reply(rt: "Runtime", session: AsyncSession, rep: Rep, item_query: str, contact_query: str, lang: str) -> Reply:
    """分享 <内容> 给 <客户>: the contact's tracked link as a ready-to-forward news message."""
    items = await find_items(session, item_query)
    if not items:
        return Reply.text(say("item_none", lang, q=item_query))
    if len(items) > 1:
        return _choices(say("item_many", lang, q=item_query), [f"· {i.slug} — {i.title}" for i in items])
    item = items[0]
    if item.internal:
        return Reply.text(say("item_internal", lang, title=item.title))
    contacts = await rep_contacts(session, rep, contact_query)
    if not contacts:
        return Reply.text(say("contact_none", lang, q=contact_query))
    if len(contacts) > 1:
        return _contact_choices(contact_query, contacts, lang)
    try:
        share = await create_share(session, item, rep_userid=rep.userid, contact_id=contacts[0].id, source="bot")
    except NotShareable:
        return Reply.text(say("item_retired", lang, title=item.title))
    article: dict[str, Any] = {
        "title": item.title,
        "description": item.summary[:120],
        "url": f"{rt.settings.server.public_url}/l/{share.token}",
    }
    if item.cover and item.cover.startswith(("http://", "https://")):
        article["picurl"] = item.cover
    return Reply("news", {"articles": [article]})


async def contact_reply(rt: "Runtime", session: AsyncSession, rep: Rep, query: str, lang: str) -> Reply:
    """客户 <姓名|ID>: score, stage, temperature, the top reasons, the last 5 events, the owner."""
    from handlers.contacts_api import contact_view  # the API's view of a contact, one definition

    if not query.strip():
        return Reply.text(say("contact_usage", lang))
    contacts = await rep_contacts(session, rep, query)
    if not contacts:
        return Reply.text(say("contact_none", lang, q=query.strip()))
    if len(contacts) > 1:
        return _contact_choices(query.strip(), contacts, lang)
    contact = contacts[0]
    view = await contact_view(session, contact, timeline_limit=5)
    owner = await session.get(Rep, contact.owner_userid) if contact.owner_userid else None
    stage = STAGE_LABELS.get(contact.stage, contact.stage) if lang == "zh" else contact.stage
    temperature = TEMPERATURE_LABELS.get(contact.temperature, contact.temperature) if lang == "zh" else contact.temperature
    title = f" · {contact.title}" if contact.title else ""
    lines = [
        display_name(contact, lang) + title,
        say("contact_score", lang, score=shown_score(view["score"]), stage=stage, temperature=temperature),
        say("contact_owner", lang, owner=(owner.name or owner.userid) if owner else say("nobody", lang)),
    ]
    top = sorted((e for e in view["score_breakdown"] if e["points"] > 0), key=lambda e: -e["points"])[:3]
    if top:
        lines += [say("contact_why", lang), *(f"· {e['reason'] or e['rule']}" for e in top)]
    lines.append(say("contact_recent", lang))
    now, tz = rt.clock.now(), rt.settings.scheduler.timezone
    for event in view["timeline"] or []:
        what = label(EVENT_LABELS, event["type"], lang)
        if event["item_title"]:
            what += f"《{event['item_title']}》" if lang == "zh" else f" \"{event['item_title']}\""
        if "depth" in event["props"]:
            what += f" {event['props']['depth']}%"
        lines.append(f"· {when_text(dt.datetime.fromisoformat(event['at']), now, tz, lang)} {what}")
    if not view["timeline"]:
        lines.append(say("contact_no_events", lang))
    return Reply.text("\n".join(lines))


async def hot_reply(rt: "Runtime", session: AsyncSession, rep: Rep, lang: str) -> Reply:
    """热线索: the rep's hot contacts, highest score first."""
    rows = (await session.scalars(
        select(Contact).where(Contact.owner_userid == rep.userid, Contact.temperature == "hot", Contact.merged_into_id.is_(None),
                              Contact.erased_at.is_(None)).order_by(Contact.score.desc(), Contact.id).limit(10)
    )).all()
    if not rows:
        return Reply.text(say("hot_none", lang))
    now, tz = rt.clock.now(), rt.settings.scheduler.timezone
    lines = [say("hot_head", lang)]
    for n, c in enumerate(rows, 1):
        company = (f"（{c.company}）" if lang == "zh" else f" ({c.company})") if c.company else ""
        stage = STAGE_LABELS.get(c.stage, c.stage) if lang == "zh" else c.stage
        lines.append(say("hot_line", lang, n=n, name=c.name or contact_key(c), company=company, score=shown_score(c.score), stage=stage,
                         when=when_text(c.last_activity_at, now, tz, lang)))
    return Reply.text("\n".join(lines))
