"""Mass sends (群发): one library item to a segment of contacts, each through the rep who owns them.

A segment is the dashboard's contact filter (stage, temperature, owner, channel, keyword). Each
recipient gets a tracked link of their own (a share of the item's current version for that rep and
contact, source "mass"), so every open is the contact's, scored and alerted as any other, with or
without OAuth. The message goes out as `externalcontact/add_msg_template` with the owner as sender,
one per customer (one customer's link cannot be in another's message): WeCom does not deliver it by
itself, the rep confirms each in the client's 群发助手, so a person still decides. Each rep is told
by app message how many wait for them.

Left out, and counted by reason: contacts without an owner, contacts who are not WeCom customers
(no external_userid), contacts who unsubscribed, and contacts who already got a mass send today
(WeCom lets a customer receive one a day). Everything is queued through the outbox in one
transaction with keys of its own, so a retried request or a crash sends nothing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import click
from sqlalchemy import and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.contact_list import NO_CHANNEL, ContactFilter
from bot.context import Context
from bot.customer_text import clip
from bot.errors import InvalidInput, NotShareable
from bot.models import Channel, Contact, ContentItem, Event, MassSend, MassSendRecipient, Rep, Share
from bot.outbox import deliver_now
from bot.reports import Scope
from bot.shares import check_shareable, new_token
from bot.sop.steps import MESSAGE_BYTES, SEND_MSG_TEMPLATE, as_sentence

MAX_RECIPIENTS = 5000  # a larger segment is refused: narrow the filter (each customer is one 群发 task for a rep)
DEFAULT_TEXT = "{name}您好，给您分享一份《{title}》，{summary}欢迎查阅：{link}"
FIELDS = ("name", "company", "title", "summary", "link", "rep")
SKIP_REASONS = {
    "no_owner": "无负责人",
    "not_wecom": "不是企业微信客户",
    "unsubscribed": "已退订",
    "sent_today": "今日已收到群发",
}


SEGMENT_KEYS = ("stage", "temperature", "owner", "channel", "q")
EVERYONE = Scope(None)


async def parse_segment(session: Any, raw: Any) -> ContactFilter:
    """The contact filter from the body's `segment`: the dashboard's filter, the channel by name."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput("segment", "应为对象，例如 {\"stage\": \"mql\", \"owner\": \"rep1\"}")
    unknown = sorted(set(raw) - set(SEGMENT_KEYS))
    if unknown:
        raise InvalidInput("segment", f"未知条件 {unknown[0]!r}；可用：{', '.join(SEGMENT_KEYS)}")
    query = {}
    for key, value in raw.items():
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidInput(f"segment.{key}", "应为字符串")
        query[key] = value
    channel = query.get("channel", "").strip()
    if channel and channel != NO_CHANNEL:
        found = await session.scalar(select(Channel.id).where(Channel.name == channel))
        if found is None:
            raise InvalidInput("segment.channel", f"没有这个渠道：{channel}")
        query["channel"] = str(found)
    try:
        return ContactFilter.parse(query, EVERYONE)
    except InvalidInput as exc:
        raise InvalidInput(f"segment.{exc.field}", exc.message) from None


@dataclass(frozen=True)
class Recipient:
    contact_id: int
    external_userid: str
    owner: str
    name: str
    company: str


@dataclass
class MassPlan:
    """Who a mass send would reach, and who it leaves out by reason."""

    item: ContentItem
    recipients: list[Recipient] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def by_rep(self) -> dict[str, int]:
        return dict(sorted(Counter(r.owner for r in self.recipients).items()))


def check_text(text: str | None) -> str:
    """The message template: DEFAULT_TEXT when empty; placeholders only from FIELDS (InvalidInput names
    the one that is not); `{link}` appended when missing, since the link is what is tracked."""
    text = (text or "").strip() or DEFAULT_TEXT
    try:
        names = [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise InvalidInput("text", f"模板格式有误（{exc}）；花括号只用于 {{name}} 这样的占位符") from None
    if any(spec or conv for _, name, spec, conv in string.Formatter().parse(text) if name is not None):
        raise InvalidInput("text", "占位符只写名字，例如 {name}，不带 : 或 ! 格式")
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise InvalidInput("text", f"未知占位符 {{{unknown[0]}}}；可用：" + "、".join(f"{{{f}}}" for f in FIELDS))
    if "link" not in names:
        text = f"{text} {{link}}"
    if len(text.encode()) > MESSAGE_BYTES:
        raise InvalidInput("text", f"模板最长 {MESSAGE_BYTES} 字节")
    return text


def render(text: str, recipient: Recipient, item: ContentItem, link: str, rep_name: str) -> str:
    values = {"name": recipient.name, "company": recipient.company, "title": item.title, "summary": as_sentence(item.summary),
              "link": link, "rep": rep_name}  # fmt: skip
    return clip(text.format(**values).strip(), MESSAGE_BYTES)


async def plan(session: AsyncSession, item: ContentItem, segment: ContactFilter, scope: Scope, *, now: dt.datetime,
               timezone: str) -> MassPlan:
    """The segment's live contacts, split into recipients and the skipped (by reason). InvalidInput
    when the segment holds more than MAX_RECIPIENTS who would receive it; NotShareable for an
    internal or retired item."""
    check_shareable(item)
    zone = ZoneInfo(timezone)
    midnight = dt.datetime.combine(now.astimezone(zone).date(), dt.time(), tzinfo=zone).astimezone(dt.timezone.utc)
    unsubscribed = exists().where(Event.contact_id == Contact.id, Event.type == "unsubscribe")
    sent_today = exists().where(
        MassSendRecipient.contact_id == Contact.id,
        MassSend.id == MassSendRecipient.mass_send_id,
        MassSend.created_at >= midnight,
    )
    where = [Contact.merged_into_id.is_(None), Contact.erased_at.is_(None), *scope.on(Contact.owner_userid),
             *segment.conditions(scope)]  # fmt: skip
    rows = await session.execute(
        select(Contact.id, Contact.external_userid, Contact.owner_userid, Contact.name, Contact.company,
               unsubscribed.label("unsubscribed"), sent_today.label("sent_today"))
        .where(*where).order_by(Contact.id)
    )  # fmt: skip
    result = MassPlan(item)
    for cid, external, owner, name, company, unsub, today in rows:
        reason = ("not_wecom" if not external else "no_owner" if not owner else "unsubscribed" if unsub
                  else "sent_today" if today else None)  # fmt: skip
        if reason is not None:
            result.skipped[reason] = result.skipped.get(reason, 0) + 1
            continue
        result.recipients.append(Recipient(cid, external, owner, name or "", company or ""))
        if len(result.recipients) > MAX_RECIPIENTS:
            raise InvalidInput("segment", f"分组超过 {MAX_RECIPIENTS} 位可发送的客户，请缩小范围（按负责人、阶段或渠道）")
    return result


async def send(ctx: Context, prepared: MassPlan, text: str, *, segment: dict[str, Any], created_by: str) -> MassSend:
    """Record the send, give each recipient their link and queue their message and each rep's notice,
    all in the caller's unit of work (sent after commit, once)."""
    session, now, item = ctx.session, ctx.clock.now(), prepared.item
    mass = MassSend(item_id=item.id, segment=segment, text=text, created_by=created_by, created_at=now,
                    recipients=len(prepared.recipients), skipped=prepared.skipped)  # fmt: skip
    session.add(mass)
    await session.flush()
    shares = await _shares(session, item, prepared.recipients, now)
    reps = {r.userid: r.name or r.userid for r in (await session.scalars(
        select(Rep).where(Rep.userid.in_(sorted({r.owner for r in prepared.recipients}))))).all()}  # fmt: skip
    base = ctx.settings.server.public_url
    for recipient in prepared.recipients:
        share = shares[(recipient.owner, recipient.contact_id)]
        session.add(MassSendRecipient(mass_send_id=mass.id, contact_id=recipient.contact_id, share_id=share.id,
                                      rep_userid=recipient.owner))  # fmt: skip
        message = render(text, recipient, item, f"{base}/l/{share.token}", reps.get(recipient.owner, recipient.owner))
        payload = {"chat_type": "single", "external_userid": [recipient.external_userid], "sender": recipient.owner,
                   "text": {"content": message}}  # fmt: skip
        ctx.send(SEND_MSG_TEMPLATE, payload, key=f"mass:{mass.id}:{recipient.contact_id}")
    for owner, count in prepared.by_rep().items():
        ctx.send_text(owner, f"【群发待确认】《{item.title}》：{count} 位客户，每位一条带专属链接的消息。"
                             f"请在企业微信「群发助手」中确认发送。", key=f"mass:{mass.id}:notice:{owner}")  # fmt: skip
    return mass


async def _shares(session: AsyncSession, item: ContentItem, recipients: list[Recipient], now: dt.datetime) -> dict[tuple[str, int], Share]:
    """(rep, contact) -> the share of the item's current version for them: the existing one (as
    create_share would reuse it), else a new one with source "mass". Found a chunk at a time."""
    found: dict[tuple[str, int], Share] = {}
    ids = [r.contact_id for r in recipients]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for share in (await session.scalars(select(Share).where(
            Share.version_id == item.current_version_id, Share.contact_id.in_(chunk), Share.channel_id.is_(None),
            Share.parent_share_id.is_(None), Share.rep_userid.is_not(None),
        ))).all():  # fmt: skip
            found[(share.rep_userid or "", share.contact_id or 0)] = share
    for r in recipients:
        if (r.owner, r.contact_id) not in found:
            share = Share(token=new_token(), item_id=item.id, version_id=item.current_version_id, rep_userid=r.owner,
                          contact_id=r.contact_id, source="mass", created_at=now)  # fmt: skip
            session.add(share)
            found[(r.owner, r.contact_id)] = share
    await session.flush()
    return found


async def reports(session: AsyncSession, ids: list[int]) -> list[dict[str, Any]]:
    """The sends with these ids, newest first, as the API and the admin page show them: what went to
    whom, and how many recipients opened their link since. Three grouped queries, whatever the count."""
    if not ids:
        return []
    rec = MassSendRecipient
    sends = (await session.execute(
        select(MassSend, ContentItem.slug, ContentItem.title).outerjoin(ContentItem, ContentItem.id == MassSend.item_id)
        .where(MassSend.id.in_(ids)).order_by(MassSend.id.desc())
    )).all()  # fmt: skip
    by_rep: dict[int, dict[str, int]] = {}
    for mass_id, rep, count in await session.execute(
        select(rec.mass_send_id, rec.rep_userid, func.count()).where(rec.mass_send_id.in_(ids))
        .group_by(rec.mass_send_id, rec.rep_userid).order_by(rec.mass_send_id, rec.rep_userid)
    ):  # fmt: skip
        by_rep.setdefault(mass_id, {})[rep] = count
    opened = dict((await session.execute(
        select(rec.mass_send_id, func.count(func.distinct(rec.contact_id))).select_from(rec)
        .join(MassSend, MassSend.id == rec.mass_send_id)
        .join(Event, and_(Event.share_id == rec.share_id, Event.type == "open", Event.occurred_at >= MassSend.created_at))
        .where(rec.mass_send_id.in_(ids)).group_by(rec.mass_send_id)
    )).all())  # fmt: skip
    return [
        {"id": mass.id, "content": slug, "title": title, "segment": mass.segment, "created_by": mass.created_by,
         "created_at": mass.created_at.isoformat(), "recipients": mass.recipients, "by_rep": by_rep.get(mass.id, {}),
         "skipped": mass.skipped, "opened": int(opened.get(mass.id, 0))}
        for mass, slug, title in sends
    ]  # fmt: skip


async def report(session: AsyncSession, mass_id: int) -> dict[str, Any] | None:
    """One send (`reports`), or None."""
    found = await reports(session, [mass_id])
    return found[0] if found else None


def run_command(settings: Any, slug: str, segment: dict[str, str], text: str | None, by: str, dry_run: bool) -> int:
    """`python -m bot mass-send`: 0 done (or previewed), 1 WeCom refused some messages for good,
    2 bad input (the field named) or nobody to send to."""
    return asyncio.run(_command(settings, slug, segment, text, by, dry_run))


async def _command(settings: Any, slug: str, segment: dict[str, str], text: str | None, by: str, dry_run: bool) -> int:
    from bot.runtime import Runtime  # here: the runtime imports the app's services

    rt = Runtime.build(settings, routers=[])
    await rt.start(background=False)
    try:
        async with rt.sessions() as session:
            item = await session.scalar(select(ContentItem).where(ContentItem.slug == slug))
            if item is None:
                click.echo(f"error: content: no library item {slug!r}", err=True)
                return 2
            try:
                template = check_text(text)
                flt = await parse_segment(session, segment)
                prepared = await plan(session, item, flt, EVERYONE, now=rt.clock.now(), timezone=settings.scheduler.timezone)
            except (InvalidInput, NotShareable) as exc:
                click.echo(f"error: {exc}", err=True)
                return 2
            click.echo(f"mass send 《{item.title}》 to {len(prepared.recipients)} contact(s): "
                       + (", ".join(f"{rep} {n}" for rep, n in prepared.by_rep().items()) or "nobody"))
            for reason, count in sorted(prepared.skipped.items()):
                click.echo(f"  skipped {count}: {SKIP_REASONS[reason]} ({reason})")
            if not prepared.recipients:
                click.echo("error: segment: no contact in it can receive a mass send", err=True)
                return 2
            first = prepared.recipients[0]
            click.echo("  message: " + render(template, first, item, f"{settings.server.public_url}/l/…", first.owner))
            if dry_run:
                click.echo("dry run: nothing recorded or sent")
                return 0
            mass = await send(Context(rt, session, origin="cli:mass-send"), prepared, template,
                              segment={k: v for k, v in segment.items() if v}, created_by=by)  # fmt: skip
            mass_id = mass.id
            await session.commit()
        failed = await deliver_now(rt, f"mass:{mass_id}:")
    finally:
        await rt.stop()
    click.echo(f"mass send #{mass_id}: submitted to WeCom; each rep confirms their customers' messages in 群发助手")
    if failed:
        click.echo(f"warning: WeCom refused {failed} message(s) for good; see the log", err=True)
        return 1
    return 0
