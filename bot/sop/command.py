"""`python -m bot sop import DIR` / `sop list`, and loading `[sop] folder` when `serve` starts.

Import exit status: 0 all files imported; 1 some files had errors (printed as `path: field: why`,
the valid files are imported anyway); 2 DIR is not a folder or holds no playbook files.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from bot.clock import SystemClock
from bot.config import Settings
from bot.db import create_engine, read_session_factory, session_factory
from bot.models import Enrollment, Playbook
from bot.sop.definition import playbook_files
from bot.sop.store import ImportReport, import_playbooks

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.sop")


def run_import(settings: Settings, folder: Path) -> int:
    if not folder.is_dir() or not playbook_files(folder):
        click.echo(f"error: {folder}: no playbook files (*.toml, *.yaml, *.yml)", err=True)
        return 2
    try:
        report = asyncio.run(_import(settings, folder))
    except SQLAlchemyError as exc:
        click.echo(f"database error: {str(exc).splitlines()[0]} (has `python -m bot migrate` been run?)", err=True)
        return 1
    for error in report.errors:
        click.echo(str(error), err=True)
    for label in report.created:
        click.echo(f"new      {label}")
    for label in report.updated:
        click.echo(f"changed  {label} (running enrollments keep their version)")
    for label in report.unchanged:
        click.echo(f"same     {label}")
    click.echo(f"sop import {folder}: {report.summary()}")
    return 0 if report.ok else 1


async def _import(settings: Settings, folder: Path) -> ImportReport:
    engine = create_engine(settings.database)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await import_playbooks(session, folder, now=SystemClock().now())
    finally:
        await engine.dispose()


def run_list(settings: Settings) -> int:
    for line in asyncio.run(_list(settings)):
        click.echo(line)
    return 0


async def _list(settings: Settings) -> list[str]:
    engine = create_engine(settings.database)
    try:
        async with read_session_factory(engine)() as session:
            counts = dict((await session.execute(
                select(Enrollment.playbook_id, func.count()).where(Enrollment.status == "active").group_by(Enrollment.playbook_id)
            )).all())
            rows = (await session.scalars(select(Playbook).order_by(Playbook.key, Playbook.version))).all()
    finally:
        await engine.dispose()
    lines = [f"{'key':32} {'ver':>3} {'in force':8} {'running':>7}  name"]
    for row in rows:
        name = (row.definition or {}).get("name", "")
        lines.append(f"{row.key:32} {row.version:>3} {'yes' if row.active else 'no':8} {counts.get(row.id, 0):>7}  {name}")
    return lines if rows else ["no playbooks; import some with `python -m bot sop import DIR`"]


async def load_folder(rt: "Runtime") -> ImportReport | None:
    """Import `[sop] folder` at serve start. Another process importing the same folder at the same
    moment wins the version numbers; this one then has nothing to do."""
    folder = rt.settings.sop.folder
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        log.error("[sop] folder %s is not a folder; no playbooks loaded", folder)
        return None
    try:
        async with rt.sessions() as session, session.begin():
            report = await import_playbooks(session, path, now=rt.clock.now())
    except IntegrityError:
        log.info("playbooks of %s were imported by another process at the same time", folder)
        return None
    for error in report.errors:
        log.error("playbook not loaded: %s", error)
    log.info("playbooks from %s: %s", folder, report.summary())
    service = rt.services.get("sop")
    if service is not None:
        service.invalidate()
    return report
