"""Reps: who is on the team (config, WeCom sync, or first seen as a follow user)."""

from __future__ import annotations

from typing import Iterable

from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import TeamMember
from bot.models import Rep


async def upsert_members(session: AsyncSession, members: Iterable[TeamMember]) -> None:
    for member in members:
        rep = await session.get(Rep, member.userid)
        if rep is None:
            rep = Rep(userid=member.userid)
            session.add(rep)
        rep.name = member.name or member.userid
        rep.role = member.role
        rep.manager_userid = member.manager or None
        rep.region = member.region
        rep.quiet_start, rep.quiet_end = member.quiet_start, member.quiet_end
        rep.source = "config"
        rep.active = True


async def get_rep(session: AsyncSession, userid: str) -> Rep | None:
    return await session.get(Rep, userid)


async def ensure_rep(session: AsyncSession, userid: str, *, source: str = "event") -> Rep:
    """A rep first seen in an event (e.g. the follow user of a new external contact)."""
    rep = await session.get(Rep, userid)
    if rep is None:
        rep = Rep(userid=userid, name=userid, role="rep", source=source)
        session.add(rep)
    return rep
