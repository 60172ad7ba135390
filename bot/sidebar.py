"""What the chat-toolbar sidebar shows about the customer in the chat: score and why, recent
activity (shares and behavior), next-best content, and the library with filters.

Reads one contact at a time: its ledger is summed per rule by the database, activity is the latest
few shares and events, recommendations come from content.recommend.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.ledger import reason_label
from bot.models import Contact, ContentItem, Event, Rep, ScoreEntry, Share
from bot.scoring.rules import DECAY_RULE
from content.recommend import recommend_next
from content.search import search_items

ACTIVITY_LIMIT = 12
EVENT_LABELS = {
    "open": "打开", "read": "阅读", "dwell": "停留", "download": "下载附件", "cta": "点击", "form_submit": "提交表单",
    "forward": "转发给新访客", "menu_click": "客服菜单点击", "message": "发来消息", "contact_added": "添加了好友",
    "contact_deleted": "删除了好友", "demo_request": "预约演示", "webinar_attended": "参加直播", "call": "通话",
    "payment": "付款", "unsubscribe": "退订",
}  # fmt: skip
CTA_LABELS = {"demo": "预约演示", "contact": "联系销售"}
SOURCE_LABELS = {"sidebar": "侧边栏", "api": "接口", "bot": "机器人", "sop": "SOP", "kf": "客服", "welcome": "欢迎语", "mass": "群发"}


FOLLOW_TTL_S = 300.0


class FollowCache:
    """(rep, external_userid) pairs WeCom confirmed (the sidebar's follow check), kept FOLLOW_TTL_S; bounded."""

    def __init__(self, size: int = 10_000, ttl_s: float = FOLLOW_TTL_S) -> None:
        self._seen: TTLCache[tuple[str, str], bool] = TTLCache(size, ttl_s, timer=time.monotonic)

    def get(self, key: tuple[str, str]) -> bool:
        return key in self._seen

    def put(self, key: tuple[str, str]) -> None:
        self._seen[key] = True


@dataclass(frozen=True)
class Reason:
    rule: str
    label: str
    points: float
    times: int


@dataclass(frozen=True)
class Activity:
    at: dt.datetime
    kind: str  # "share" or an event type
    text: str
    who: str = ""


@dataclass
class Panel:
    external_userid: str
    contact: Contact | None
    owner_name: str | None = None
    reasons: list[Reason] = field(default_factory=list)
    activity: list[Activity] = field(default_factory=list)
    recommended: list[ContentItem] = field(default_factory=list)


async def why(session: AsyncSession, contact_id: int, limit: int = 6) -> list[Reason]:
    """The rules behind the score, biggest first: points summed per rule, with the latest reason."""
    latest = (
        select(ScoreEntry.rule, func.max(ScoreEntry.id).label("last_id"))
        .where(ScoreEntry.contact_id == contact_id)
        .group_by(ScoreEntry.rule)
        .subquery()
    )
    totals = (
        select(ScoreEntry.rule, func.sum(ScoreEntry.points).label("points"), func.count().label("times"))
        .where(ScoreEntry.contact_id == contact_id)
        .group_by(ScoreEntry.rule)
        .subquery()
    )
    rows = await session.execute(
        select(totals.c.rule, totals.c.points, totals.c.times, ScoreEntry.reason)
        .join(latest, latest.c.rule == totals.c.rule)
        .join(ScoreEntry, ScoreEntry.id == latest.c.last_id)
    )
    reasons = [
        # The label without its entry's points: the rule's total stands beside it.
        Reason(rule, "分数衰减（长期未互动）" if rule == DECAY_RULE else reason_label(reason or rule), round(points, 2), times)
        for rule, points, times, reason in rows
        if round(points, 2) != 0
    ]
    reasons.sort(key=lambda r: (-abs(r.points), r.rule))
    return reasons[:limit]


def _event_text(type_: str, props: dict[str, Any], title: str | None) -> str:
    text = EVENT_LABELS.get(type_, type_)
    if type_ == "cta":
        text += f"「{CTA_LABELS.get(str(props.get('cta')), str(props.get('cta', '')))}」"
    if title:
        text += f"《{title}》"
    if type_ == "read" and "depth" in props:
        text += f" 至 {props['depth']}%"
    elif type_ == "dwell" and "seconds" in props:
        text += f" {props['seconds']} 秒"
    return text


async def recent_activity(session: AsyncSession, contact_id: int, limit: int = ACTIVITY_LIMIT) -> list[Activity]:
    """The latest shares to the contact and the contact's latest events, newest first."""
    shares = await session.execute(
        select(Share.created_at, Share.source, ContentItem.title, Rep.name, Share.rep_userid)
        .join(ContentItem, ContentItem.id == Share.item_id)
        .outerjoin(Rep, Rep.userid == Share.rep_userid)
        .where(Share.contact_id == contact_id, Share.parent_share_id.is_(None))
        .order_by(Share.created_at.desc(), Share.id.desc())
        .limit(limit)
    )
    out = [
        Activity(at, "share", f"发送《{title}》", f"{name or rep or ''} · {SOURCE_LABELS.get(source, source)}")
        for at, source, title, name, rep in shares
    ]
    events = await session.execute(
        select(Event.occurred_at, Event.type, Event.props, ContentItem.title)
        .outerjoin(ContentItem, ContentItem.id == Event.item_id)
        .where(Event.contact_id == contact_id)
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(limit)
    )
    out += [Activity(at, type_, _event_text(type_, props or {}, title)) for at, type_, props, title in events]
    # a share and the open it led to can carry the same instant: show the share first (lower)
    out.sort(key=lambda a: (a.at, a.kind != "share"), reverse=True)
    return out[:limit]


async def _last_read_stage(session: AsyncSession, contact_id: int) -> str | None:
    return await session.scalar(
        select(ContentItem.stage)
        .join(Event, Event.item_id == ContentItem.id)
        .where(Event.contact_id == contact_id, Event.type.in_(("open", "read")))
        .order_by(Event.occurred_at.desc(), Event.id.desc())
        .limit(1)
    )


async def load_panel(session: AsyncSession, external_userid: str, contact: Contact | None, *, recommend: int = 3) -> Panel:
    """Everything the sidebar shows about one customer (a customer Beacon has not seen yet gets the
    starting recommendations and nothing else)."""
    panel = Panel(external_userid, contact)
    if contact is None:
        panel.recommended = await recommend_next(session, contact_profile={}, already_sent=set(), limit=recommend)
        return panel
    if contact.owner_userid:
        panel.owner_name = await session.scalar(select(Rep.name).where(Rep.userid == contact.owner_userid)) or contact.owner_userid
    panel.reasons = await why(session, contact.id)
    panel.activity = await recent_activity(session, contact.id)
    sent = set((await session.scalars(select(Share.item_id).where(Share.contact_id == contact.id))).all())
    profile = {"persona": contact.persona, "industry": contact.industry, "last_read_stage": await _last_read_stage(session, contact.id)}
    panel.recommended = await recommend_next(session, contact_profile=profile, already_sent=sent, limit=recommend)
    return panel


async def library(
    session: AsyncSession, *, q: str | None, kind: str | None, stage: str | None, industry: str | None, limit: int = 12
) -> tuple[list[ContentItem], list[ContentItem]]:
    """(items the rep may send, internal items shown read-only as 内部参考). Raises InvalidFilter."""
    items = await search_items(session, q=q, kind=kind, stage=stage, industry=industry, include_internal=True, limit=limit)
    return [i for i in items if not i.internal], [i for i in items if i.internal]


async def industries(session: AsyncSession) -> list[str]:
    """Industries named by live items, for the filter (the library is small: a few hundred rows)."""
    found: set[str] = set()
    for values in await session.scalars(select(ContentItem.industries).where(ContentItem.retired_at.is_(None))):
        found.update(str(v) for v in values or [])
    return sorted(found)
