"""CLI side of personal-data requests and backups (kept out of cli.py to keep it a table of commands)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bot.clock import SystemClock
from bot.config import Settings
from bot.db import create_engine, read_session_factory, session_factory


async def _with_contact(settings: Settings, key: str, erase: bool) -> dict:
    from bot.privacy import erase_contact, export_contact
    from handlers.contacts_api import find_contact

    engine = create_engine(settings.database)
    try:
        # An export only reads: on SQLite it neither takes the write lock nor waits for a serving process's writers.
        sessions = session_factory(engine) if erase else read_session_factory(engine)
        async with sessions() as session, session.begin():
            contact = await find_contact(session, key)
            if contact is None:
                raise click.ClickException(f"unknown contact: {key} (an external_userid, or id:<number>)")
            if erase:
                return await erase_contact(session, contact, now=SystemClock().now())
            return await export_contact(session, contact)
    finally:
        await engine.dispose()


def run_export(settings: Settings, key: str, out: Path | None) -> None:
    import asyncio

    data = asyncio.run(_with_contact(settings, key, erase=False))
    text = json.dumps(data, ensure_ascii=False, indent=2)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"exported contact {key} to {out}", err=True)


def run_erase(settings: Settings, key: str) -> None:
    import asyncio

    counts = asyncio.run(_with_contact(settings, key, erase=True))
    click.echo(f"erased contact {key}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def run_backup(settings: Settings, dest: Path, restore: bool) -> None:
    from bot.backup import BackupError, backup
    from bot.backup import restore as do_restore

    try:
        path = do_restore(settings.database.url, dest) if restore else backup(settings.database.url, dest)
    except BackupError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{'restored from' if restore else 'backup written to'} {path}")
