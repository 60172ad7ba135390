"""`python -m bot channel create|list`: the CLI edge of bot.channels.

Exit status: 0 done; 2 bad usage (unknown rep or content, internal or retired welcome item, name taken,
bad field); 1 WeCom refused or the database failed. Messages are one line on stderr.
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable, TypeVar

import aiohttp
import click
from sqlalchemy.exc import SQLAlchemyError

from bot.channels import ChannelExists, ChannelRequest, ChannelView, create_channel, list_channels
from bot.clock import SystemClock
from bot.config import Settings
from bot.db import create_engine, read_session_factory, session_factory
from bot.errors import InvalidInput, NotFound, NotShareable
from bot.team import upsert_members
from bot.wecom.client import WeComClient, WeComError

T = TypeVar("T")


def _guarded(work: Callable[[], Awaitable[T]]) -> T | int:
    """Run `work`, translating domain and infrastructure errors into an exit status with a message."""
    try:
        return asyncio.run(work())
    except (NotFound, NotShareable, InvalidInput, ChannelExists) as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except WeComError as exc:
        click.echo(f"WeCom refused: {exc}", err=True)
        return 1
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        click.echo(f"database error: {first} (has `python -m bot migrate` been run?)", err=True)
        return 1


def run_create(settings: Settings, req: ChannelRequest) -> int:
    async def work() -> ChannelView:
        engine = create_engine(settings.database)
        sessions = session_factory(engine)
        try:
            async with aiohttp.ClientSession() as http:
                w = settings.wecom
                wecom = WeComClient(http, api_base=w.api_base, corp_id=w.corp_id, secret=w.secret, timeout=w.timeout_s)
                async with sessions() as session, session.begin():
                    await upsert_members(session, settings.team.members)  # config is the source of truth for reps
                return await create_channel(sessions, wecom, req, now=SystemClock().now())
        finally:
            await engine.dispose()

    result = _guarded(work)
    if isinstance(result, int):
        return result
    click.echo(f"channel {result.name} created")
    for key in ("state", "config_id", "qr_code"):
        click.echo(f"{key}: {getattr(result, key) or ''}")
    click.echo(f"reps: {', '.join(result.reps)}")
    click.echo(f"welcome: {result.welcome or '-'}")
    return 0


def run_list(settings: Settings, as_json: bool) -> int:
    async def work() -> list[ChannelView]:
        engine = create_engine(settings.database)
        try:
            async with read_session_factory(engine)() as session:
                return await list_channels(session)
        finally:
            await engine.dispose()

    result = _guarded(work)
    if isinstance(result, int):
        return result
    if as_json:
        click.echo(json.dumps([v.as_json() for v in result], ensure_ascii=False, indent=2))
        return 0
    if not result:
        click.echo("no channels yet: python -m bot channel create NAME")
        return 0
    click.echo("name\tstate\treps\twelcome\tcontacts\tadds\topens\tqr_code")
    for v in result:
        click.echo(f"{v.name}\t{v.state}\t{','.join(v.reps)}\t{v.welcome or '-'}\t{v.contacts}\t{v.adds}\t{v.opens}\t{v.qr_code or ''}")
    return 0
