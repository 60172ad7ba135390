"""`python -m bot content import DIR`: the CLI edge of the importer.

Exit status: 0 when every file imported; 1 when some files had errors (the valid ones are imported
anyway; each problem is printed to stderr as `path: field: why`) or the database failed; 2 when
DIR cannot be used (not a folder, no item files). The summary goes to stdout. For folders with more
than PROGRESS_THRESHOLD files a counter is written to stderr while working.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

import click
from sqlalchemy.exc import SQLAlchemyError

from bot.clock import SystemClock
from bot.config import Settings
from bot.db import create_engine, session_factory
from content.errors import LibraryFolderError
from content.importer import ImportProgress, ImportReport, import_library

PROGRESS_THRESHOLD = 50
_LABELS = {"check": "checking", "import": "importing"}


def run_import(settings: Settings, folder: Path) -> int:
    """Import `folder` into the configured database, print what happened, return the exit status."""
    try:
        report = asyncio.run(_import(settings, folder, _counter(sys.stderr)))
    except LibraryFolderError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        click.echo(f"database error: {first} (has `python -m bot migrate` been run?)", err=True)
        return 1
    except OSError as exc:  # e.g. an attachment removed between checking and storing; nothing was saved
        click.echo(f"error: {exc}; nothing was imported", err=True)
        return 1
    for error in report.errors:
        click.echo(str(error), err=True)
    click.echo(f"content import {folder}: {report.summary()}")
    return 0 if report.ok else 1


async def _import(settings: Settings, folder: Path, progress: ImportProgress) -> ImportReport:
    engine = create_engine(settings.database)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await import_library(session, folder, now=SystemClock().now(), progress=progress)
    finally:
        await engine.dispose()


def _counter(stream: TextIO) -> ImportProgress:
    """A progress callback that draws `checking 37/120` on one line, only for large folders."""

    def show(phase: str, done: int, total: int) -> None:
        if total <= PROGRESS_THRESHOLD:
            return
        end = "\n" if done == total else ""
        stream.write(f"\r{_LABELS.get(phase, phase)} {done}/{total}{end}")
        stream.flush()

    return show
