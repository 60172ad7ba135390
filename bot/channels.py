"""Channels: WeCom "contact me" QR codes, each with a unique `state`, a set of reps and a welcome.

`create_channel` validates, asks WeCom for the QR code (`externalcontact/add_contact_way`) and stores
it (the caller passes a session factory: it is its own unit of work); `list_channels` adds each channel's counts. The callback side (a customer scanning the code) is in
`bot.contact_changes`.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.errors import DomainError, InvalidInput, NotFound
from bot.models import Channel, Contact, ContentItem, Event, Rep
from bot.shares import check_shareable
from content.search import get_item

if TYPE_CHECKING:
    from bot.wecom.client import WeComClient

log = logging.getLogger("beacon.channels")

ADD_CONTACT_WAY = "/cgi-bin/externalcontact/add_contact_way"
MAX_NAME_CHARS = 64  # channels.name
MAX_WELCOME_TEXT_BYTES = 4000  # send_welcome_msg text.content
MAX_WAY_USERS = 100  # add_contact_way `user` list
MAX_REMARK_CHARS = 30


class ChannelExists(DomainError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a channel named {name!r} already exists")
        self.name = name


@dataclass(frozen=True)
class ChannelRequest:
    """What an operator asks for; `reps` empty means every active rep."""

    name: str
    reps: tuple[str, ...] = ()
    welcome: str | None = None
    text: str = ""


@dataclass(frozen=True)
class ChannelView:
    """A channel with its counts: contacts first touched by it, adds through it, opens of its shares."""

    id: int
    name: str
    state: str
    kind: str
    config_id: str | None
    qr_code: str | None
    reps: list[str]
    welcome: str | None
    text: str
    created_at: dt.datetime
    contacts: int = 0
    adds: int = 0
    opens: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "state": self.state, "kind": self.kind,
            "config_id": self.config_id, "qr_code": self.qr_code, "reps": self.reps,
            "welcome": self.welcome, "text": self.text, "created_at": self.created_at.isoformat(),
            "contacts": self.contacts, "adds": self.adds, "opens": self.opens,
        }  # fmt: skip


def new_state() -> str:
    """A contact-way `state` (WeCom allows ≤ 30 characters) that names the channel in callbacks."""
    return "ch_" + secrets.token_hex(5)


async def _check(session: AsyncSession, req: ChannelRequest) -> tuple[list[str], ContentItem | None]:
    name = req.name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidInput("name", f"must be 1 to {MAX_NAME_CHARS} characters")
    if await session.scalar(select(Channel.id).where(Channel.name == name)) is not None:
        raise ChannelExists(name)
    if len(req.text.encode()) > MAX_WELCOME_TEXT_BYTES:
        raise InvalidInput("text", f"at most {MAX_WELCOME_TEXT_BYTES} bytes")
    reps = list(dict.fromkeys(r.strip() for r in req.reps if r.strip()))
    for userid in reps:
        if await session.get(Rep, userid) is None:
            raise NotFound("rep", userid)
    if not reps:
        rows = await session.scalars(select(Rep.userid).where(Rep.active.is_(True), Rep.role == "rep").order_by(Rep.userid))
        reps = list(rows.all())
    if not reps:
        raise InvalidInput("reps", "no reps given and none configured")
    if len(reps) > MAX_WAY_USERS:
        raise InvalidInput("reps", f"at most {MAX_WAY_USERS}")
    item = None
    if req.welcome:
        item = await get_item(session, req.welcome)
        if item is None:
            raise NotFound("content", req.welcome)
        check_shareable(item)
    return reps, item


async def create_channel(
    sessions: async_sessionmaker[AsyncSession], wecom: "WeComClient", req: ChannelRequest, *, now: dt.datetime
) -> ChannelView:
    """Validate, create the QR code in WeCom, store the channel.

    Raises NotFound (rep, content), NotShareable (internal or retired welcome item), InvalidInput,
    ChannelExists, or WeComError when WeCom refuses. No transaction is open during the WeCom call
    (on SQLite a unit of work holds the write lock), so the name is checked again by the insert.
    """
    async with sessions() as session:
        reps, item = await _check(session, req)
        welcome_id, welcome_slug = (item.id, item.slug) if item is not None else (None, None)
    name, state = req.name.strip(), new_state()
    answer = await wecom.post(
        ADD_CONTACT_WAY,
        {
            "type": 1 if len(reps) == 1 else 2,
            "scene": 2,
            "state": state,
            "user": reps,
            "skip_verify": True,
            "remark": name[:MAX_REMARK_CHARS],
        },
    )
    channel = Channel(
        name=name, state=state, kind="qr", config_id=answer.get("config_id"), qr_code=answer.get("qr_code"),
        reps=reps, welcome_item_id=welcome_id, welcome_text=req.text, created_at=now,
    )  # fmt: skip
    try:
        async with sessions() as session, session.begin():
            session.add(channel)
    except IntegrityError:
        log.warning("channel %s was created meanwhile; WeCom contact way %s is unused", name, channel.config_id)
        raise ChannelExists(name) from None
    log.info("channel %s created (state %s, config_id %s)", name, state, channel.config_id)
    return _view(channel, welcome_slug)


def _view(channel: Channel, welcome: str | None, counts: dict[str, int] | None = None) -> ChannelView:
    return ChannelView(
        id=channel.id, name=channel.name, state=channel.state, kind=channel.kind,
        config_id=channel.config_id, qr_code=channel.qr_code, reps=list(channel.reps or []),
        welcome=welcome, text=channel.welcome_text or "", created_at=channel.created_at, **(counts or {}),
    )  # fmt: skip


# The counts come from indexes alone (ix_contacts_channel_merged, the partial ix_events_type_channel):
# read from the tables, they took 43 s at a million contacts and ten million events.
CONTACTS_BY_CHANNEL = (
    select(Contact.channel_id, func.count())
    .where(Contact.channel_id.is_not(None), Contact.merged_into_id.is_(None))
    .group_by(Contact.channel_id)
)
ACTIVITY_BY_CHANNEL = (
    select(Event.channel_id, Event.type, func.count())
    .where(Event.type.in_(("contact_added", "open")), Event.channel_id.is_not(None))
    .group_by(Event.channel_id, Event.type)
)


async def list_channels(session: AsyncSession) -> list[ChannelView]:
    """Every channel, oldest first, with contacts (first touch), adds and opens of its shares."""
    rows = (
        await session.execute(
            select(Channel, ContentItem.slug)
            .outerjoin(ContentItem, ContentItem.id == Channel.welcome_item_id)
            .order_by(Channel.id)
        )
    ).all()
    contacts: dict[int, int] = dict((await session.execute(CONTACTS_BY_CHANNEL)).all())  # type: ignore[arg-type]
    activity = {(channel_id, kind): n for channel_id, kind, n in await session.execute(ACTIVITY_BY_CHANNEL)}
    return [
        _view(channel, slug, {"contacts": contacts.get(channel.id, 0), "adds": activity.get((channel.id, "contact_added"), 0),
                              "opens": activity.get((channel.id, "open"), 0)})
        for channel, slug in rows
    ]


async def channel_by_state(session: AsyncSession, state: str) -> Channel | None:
    """The channel a contact-way `state` (or a kf scene_param) names, if any."""
    if not state:
        return None
    return await session.scalar(select(Channel).where(Channel.state == state))
