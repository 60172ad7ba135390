"""A customer adds or deletes a rep: attribution to the channel, the WeCom profile, the welcome message.

`contact_added` runs in the inbox worker's unit of work. The welcome goes through the outbox right after
commit (WeCom accepts a WelcomeCode once, within 20 s); the profile is read first, before anything is
written and with no transaction open, so that no database lock is held during the WeCom call.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channels import channel_by_state
from bot.context import Context
from bot.customer_text import clip, text
from bot.errors import NotShareable
from bot.identity import add_identity, contact_for_external_userid, find_by_identity, known_contact, merge_contacts, normalize_phone
from bot.lifecycle import STAGE_LABELS, rescore_after_merge, shown_score
from bot.models import Channel, Contact, ContentItem, Event, Rep, Task
from bot.shares import create_share
from bot.team import ensure_rep
from bot.tracking import add_event
from bot.wecom.client import WeComError
from bot.wecom.inbound import Inbound

log = logging.getLogger("beacon.contacts")

GET_CONTACT = "/cgi-bin/externalcontact/get"
SEND_WELCOME = "/cgi-bin/externalcontact/send_welcome_msg"
LINK_TITLE_BYTES = 128
LINK_DESC_BYTES = 512


@dataclass(frozen=True)
class WeComProfile:
    """The part of `externalcontact/get` Beacon keeps."""

    name: str = ""
    company: str = ""
    title: str = ""
    unionid: str = ""
    followers: tuple[str, ...] = ()  # the members who have the customer now, the longest-standing first
    mobiles: tuple[str, ...] = ()  # the mobile numbers the reps noted for the customer (remark_mobiles), normalized
    remarks: tuple[tuple[str, str], ...] = ()  # (userid, remark): the name each rep gave the customer in WeCom

    def display_name(self, owner: str | None) -> str:
        """What the reps call the customer: the owner's remark (备注), else the longest-standing rep's,
        else the WeChat name. A rep's client shows the remark, so alerts and digests name the customer
        as the rep knows them (陈建国-华东精密, not a nickname)."""
        remarks = dict(self.remarks)
        if owner and remarks.get(owner):
            return remarks[owner]
        return next((remark for _, remark in self.remarks if remark), self.name)


def profile_from(answer: dict[str, Any], follow_user: list[dict[str, Any]] | None = None) -> WeComProfile:
    """The profile in an `externalcontact/get` answer (or a batch item's profile with `follow_user`,
    its follow_info). A customer's WeChat profile carries no company for a personal WeChat user: the
    company a rep noted (remark_corp_name) stands in then."""
    data: dict[str, Any] = answer.get("external_contact") or {}
    follow = [f for f in (answer.get("follow_user") if follow_user is None else follow_user) or []
              if isinstance(f, dict) and f.get("userid")]
    follow.sort(key=lambda f: int(f.get("createtime") or 0))
    noted = next((one_line(f["remark_corp_name"]) for f in follow if f.get("remark_corp_name")), "")
    mobiles = dict.fromkeys(m for f in follow for raw in f.get("remark_mobiles") or [] if (m := normalize_phone(str(raw))))
    return WeComProfile(
        name=one_line(data.get("name")),
        company=one_line(data.get("corp_name")) or noted,
        title=one_line(data.get("position")),
        unionid=str(data.get("unionid") or ""),
        followers=tuple(str(f["userid"]) for f in follow),
        mobiles=tuple(mobiles),
        remarks=tuple((str(f["userid"]), one_line(f.get("remark"))) for f in follow),
    )


def one_line(value: Any) -> str:
    """A name as WeCom gave it, on one line: it goes into card rows, markdown lines and table cells."""
    return " ".join(str(value or "").split())


def event_time(msg: Inbound, fallback: dt.datetime) -> dt.datetime:
    raw = msg.get("CreateTime")
    return dt.datetime.fromtimestamp(int(raw), dt.timezone.utc) if raw.isdigit() else fallback


async def fetch_profile(ctx: Context, external_userid: str) -> WeComProfile | None:
    """The customer's WeCom profile; None when WeCom cannot say (the welcome must not wait for retries)."""
    try:
        answer = await ctx.wecom.get(GET_CONTACT, {"external_userid": external_userid})
    except WeComError as exc:
        log.warning("no profile for %s: %s", external_userid, exc)
        return None
    return profile_from(answer)


async def apply_profile(session: AsyncSession, contact: Contact, profile: WeComProfile, *, now: dt.datetime) -> bool:
    """Fill empty fields from WeCom. A unionid, or a mobile number a rep noted, already known for another
    contact (a web visitor who left it on a gate form, say) merges that one in: its history and
    score join the customer's (the caller rescores it: `lifecycle.rescore_after_merge`). A number
    known for another WeCom customer merges nothing. Returns whether a contact was merged in."""
    # The name: what the reps call the customer. One Beacon took from WeCom before follows a rep's
    # later remark; one a rep or a form set stays.
    preferred = profile.display_name(contact.owner_userid)[:128]
    if preferred and (not contact.name or (contact.profile or {}).get("name_from") == "wecom"):
        contact.name = preferred
        contact.profile = {**(contact.profile or {}), "name_from": "wecom"}
    for name in ("company", "title"):
        value = getattr(profile, name)
        if value and not getattr(contact, name):
            setattr(contact, name, value[:128])
    if profile.mobiles and not contact.phone:
        contact.phone = profile.mobiles[0]
    known = [("unionid", profile.unionid, "same unionid")] if profile.unionid else []
    known += [("phone", mobile, "same mobile (noted in WeCom)") for mobile in profile.mobiles]
    merged = False
    for kind, value, reason in known:
        other = await find_by_identity(session, kind, value)
        if other is not None and other.id != contact.id:
            if kind == "phone" and other.external_userid is not None:
                continue  # another WeCom customer with the number a rep noted (an assistant's?): not the same person
            await merge_contacts(session, other.id, contact.id, reason=reason, now=now)
            merged = True
        await add_identity(session, contact, kind, value)
    return merged


async def contact_added(ctx: Context, msg: Inbound) -> None:
    """Attribute, own, profile and welcome a customer who added rep `UserID` (possibly via a channel)."""
    userid, external = msg.get("UserID"), msg.get("ExternalUserID")
    if not userid or not external:
        log.warning("%s without UserID/ExternalUserID; ignored", msg.kind)
        return
    session, now = ctx.session, ctx.clock.now()
    if not (session.new or session.dirty or session.deleted):
        # On SQLite a unit of work holds the write lock from its first statement; nothing is written
        # yet, so end that transaction rather than hold the lock during the WeCom call.
        await session.commit()
    profile = await fetch_profile(ctx, external)
    rep = await ensure_rep(session, userid)
    await session.flush()
    contact = await contact_for_external_userid(session, external, now=now)
    if profile is not None:
        if await apply_profile(session, contact, profile, now=now):
            await rescore_after_merge(ctx.runtime, session, contact, now)
        contact.profile_due_at = None
    if contact.owner_userid is None:
        contact.owner_userid = userid
    elif (contact.owner_userid != userid and profile is not None and contact.owner_userid not in profile.followers
          and await owner_let_go(session, contact)):
        # The owner had the customer and no longer has them (a transfer whose successor WeCom did not
        # list yet, or the owner deleted them): the rep who has the customer now follows them up.
        await take_over(ctx, contact, userid, external)
    state = msg.get("State")
    channel = await channel_by_state(session, state)
    if channel is not None and contact.channel_id is None:
        contact.channel_id = channel.id  # first touch wins; later touches are events only
    contact.updated_at = now
    props: dict[str, Any] = {"rep": userid}
    if state:
        props["state"] = state
    if channel is not None:
        props["channel"] = channel.name
    if msg.get("ChangeType") == "add_half_external_contact":
        props["half"] = True
    await add_event(
        session, "contact_added", contact_id=contact.id, at=event_time(msg, now), received_at=now, props=props,
        key=f"{ctx.origin}:contact_added", rep_userid=userid, channel_id=channel.id if channel else None,
    )  # fmt: skip
    code = msg.get("WelcomeCode")
    # No WelcomeCode means a welcome is configured in WeCom itself: sending ours would fail anyway.
    if code and channel is not None:
        await queue_welcome(ctx, channel, contact, rep, code)


async def queue_welcome(ctx: Context, channel: Channel, contact: Contact, rep: Rep, code: str) -> None:
    """The channel's welcome text plus a tracked link to its starter item, sent once after commit."""
    session = ctx.session
    attachments: list[dict[str, Any]] = []
    if channel.welcome_item_id is not None:
        item = await session.get(ContentItem, channel.welcome_item_id)
        try:
            if item is None:
                raise NotShareable(f"welcome item {channel.welcome_item_id} is gone")
            share = await create_share(
                session, item, rep_userid=rep.userid, contact_id=contact.id, channel_id=channel.id, source="welcome"
            )
        except NotShareable as exc:
            log.warning("channel %s: welcome without its item (%s)", channel.name, exc)
        else:
            link = {
                "title": clip(item.title, LINK_TITLE_BYTES),
                "desc": clip(item.summary, LINK_DESC_BYTES),
                "url": f"{ctx.settings.server.public_url}/l/{share.token}",
            }
            attachments.append({"msgtype": "link", "link": link})
    content = channel.welcome_text or text("welcome", ctx.settings.kf.lang, rep=rep.name or rep.userid)
    if not channel.welcome_text and not attachments:
        return  # nothing configured for this channel
    payload: dict[str, Any] = {"welcome_code": code, "text": {"content": content}}
    if attachments:
        payload["attachments"] = attachments
    ctx.send(SEND_WELCOME, payload, key=f"welcome:{code}")


async def contact_deleted(ctx: Context, msg: Inbound, *, by: str) -> None:
    """Record `contact_deleted` ({by: rep|customer}) and tell the owning rep by app message."""
    userid, external = msg.get("UserID"), msg.get("ExternalUserID")
    if not userid or not external:
        log.warning("%s without UserID/ExternalUserID; ignored", msg.kind)
        return
    if by == "rep" and msg.get("Source") == "DELETE_BY_TRANSFER":
        # A transfer to another rep removes the old relation; the customer is not lost.
        log.info("contact %s transferred away from %s; not a deletion", external, userid)
        await transferred_away(ctx, userid, external)
        return
    session, now = ctx.session, ctx.clock.now()
    rep = await ensure_rep(session, userid)
    await session.flush()
    contact = await contact_for_external_userid(session, external, now=now)
    await add_event(
        session, "contact_deleted", contact_id=contact.id, at=event_time(msg, now), received_at=now,
        props={"by": by, "rep": userid}, key=f"{ctx.origin}:contact_deleted", rep_userid=userid,
    )  # fmt: skip
    owner = contact.owner_userid or userid
    lang = "zh"
    who = text("you", lang) if owner == userid else (rep.name or userid)
    notice = "notice_deleted_by_customer" if by == "customer" else "notice_deleted_by_rep"
    ctx.send_text(owner, text(notice, lang, name=contact.name or external, who=who), key=f"{ctx.origin}:notice")


async def contact_edited(ctx: Context, msg: Inbound) -> None:
    """Rep `UserID` edited what they note about the customer: its profile is due again (the profile
    worker reads it outside this transaction). A customer Beacon did not know yet is stored, owned by
    the rep if nobody owns them."""
    userid, external = msg.get("UserID"), msg.get("ExternalUserID")
    if not userid or not external:
        log.warning("%s without UserID/ExternalUserID; ignored", msg.kind)
        return
    session, now = ctx.session, ctx.clock.now()
    await ensure_rep(session, userid)
    await session.flush()
    contact = await contact_for_external_userid(session, external, now=now)
    contact.profile_due_at = now
    if contact.owner_userid is None:
        contact.owner_userid = userid


async def transferred_away(ctx: Context, userid: str, external: str) -> None:
    """Rep `userid` lost the customer to a transfer. If they owned the contact, the member who has the
    customer now (the newest follower in WeCom's answer) takes it over; when WeCom does not list one
    yet, the takeover's own add_external_contact moves it (see contact_added)."""
    session = ctx.session
    contact = await known_contact(session, external)
    if contact is None or contact.owner_userid != userid:
        return
    contact_id = contact.id
    if not (session.new or session.dirty or session.deleted):
        await session.commit()  # no transaction held during the WeCom call (as in contact_added)
    profile = await fetch_profile(ctx, external)
    successors = [f for f in (profile.followers if profile else ()) if f != userid]
    contact = await session.get(Contact, contact_id)
    if contact is None or contact.owner_userid != userid:
        return  # moved meanwhile
    if not successors:  # WeCom does not list the takeover yet: its add_external_contact moves the contact
        contact.profile = {**(contact.profile or {}), "transferred_from": userid}
        return
    await ensure_rep(session, successors[-1])
    await session.flush()
    await take_over(ctx, contact, successors[-1], external)


async def owner_let_go(session: AsyncSession, contact: Contact) -> bool:
    """Whether the contact's owner had the customer in WeCom and gave them up: a transfer away from
    them was seen, or they deleted the customer. An owner who never had the customer in WeCom (one
    the MQL hand-off chose, say) keeps the contact when a colleague's add arrives."""
    owner = contact.owner_userid
    if (contact.profile or {}).get("transferred_from") == owner:
        return True
    deleted = select(Event.id).where(Event.contact_id == contact.id, Event.type == "contact_deleted", Event.rep_userid == owner)
    return await session.scalar(deleted.limit(1)) is not None


async def take_over(ctx: Context, contact: Contact, new_owner: str, external: str) -> None:
    """`new_owner` follows the contact up from now: it owns the contact and the former owner's open
    tasks for it, and is told what it takes over."""
    session, old_owner = ctx.session, contact.owner_userid
    moved = (await session.execute(
        update(Task).where(Task.contact_id == contact.id, Task.owner_userid == old_owner, Task.status == "open")
        .values(owner_userid=new_owner).execution_options(synchronize_session=False)
    )).rowcount or 0  # fmt: skip
    contact.owner_userid = new_owner
    contact.updated_at = ctx.clock.now()
    if "transferred_from" in (contact.profile or {}):
        contact.profile = {k: v for k, v in contact.profile.items() if k != "transferred_from"}
    former = await session.get(Rep, old_owner) if old_owner else None
    log.info("contact %s: owner %s -> %s (%d open tasks moved)", contact.id, old_owner, new_owner, moved)
    lang = "zh"
    tasks = text("taken_over_tasks", lang, n=moved) if moved else ""
    ctx.send_text(new_owner, text("notice_taken_over", lang, name=contact.name or external,
                                  former=(former.name or former.userid) if former else text("nobody", lang),
                                  stage=STAGE_LABELS.get(contact.stage, contact.stage), score=shown_score(contact.score), tasks=tasks),
                  key=f"{ctx.origin}:taken_over:{new_owner}")
