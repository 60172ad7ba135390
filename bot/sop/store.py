"""Playbook versions in `sop_playbooks`: importing a folder, and the cache of what is in force.

A key's newest row is the only one that may be `active` (new enrollments use it). A changed file
(different definition hash) becomes a new version; the rows of older versions stay, because running
enrollments point at them and keep their steps.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import Playbook
from bot.sop.definition import PlaybookDef, PlaybookError, definition_hash, load_definition, parse_file, playbook_files

log = logging.getLogger("beacon.sop")
CACHE_S = 30.0


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)  # "key v1"
    updated: list[str] = field(default_factory=list)  # "key v2"
    unchanged: list[str] = field(default_factory=list)
    errors: list[PlaybookError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        return (f"{len(self.created)} new, {len(self.updated)} new version(s), {len(self.unchanged)} unchanged, "
                f"{len(self.errors)} error(s)")


async def import_playbooks(session: AsyncSession, folder: Path, *, now: dt.datetime) -> ImportReport:
    """Import every playbook file of `folder` (valid ones even when others have errors)."""
    report = ImportReport()
    seen: dict[str, Path] = {}
    for path in playbook_files(folder):
        try:
            definition = parse_file(path)
            if definition.key in seen:
                raise PlaybookError(path, "key", f"{definition.key!r} is also used by {seen[definition.key].name}")
        except PlaybookError as exc:
            report.errors.append(exc)
            continue
        seen[definition.key] = path
        outcome = await store_definition(session, definition, now=now)
        getattr(report, outcome[0]).append(outcome[1])
    return report


async def store_definition(session: AsyncSession, definition: PlaybookDef, *, now: dt.datetime) -> tuple[str, str]:
    """Store a definition as the key's newest version unless it is unchanged. Returns (outcome, label)."""
    digest = definition_hash(definition)
    latest = await session.scalar(
        select(Playbook).where(Playbook.key == definition.key).order_by(Playbook.version.desc()).limit(1)
    )
    if latest is not None and latest.definition_hash == digest:
        return "unchanged", f"{definition.key} v{latest.version}"
    await session.execute(update(Playbook).where(Playbook.key == definition.key).values(active=False))
    version = 1 if latest is None else latest.version + 1
    session.add(Playbook(key=definition.key, version=version, definition=definition.model_dump(mode="json"),
                         definition_hash=digest, active=definition.active, created_at=now))
    await session.flush()
    return ("created" if latest is None else "updated"), f"{definition.key} v{version}"


@dataclass(frozen=True)
class LoadedPlaybook:
    """A playbook version in force, with when its key first appeared (triggers look no further back)."""

    id: int
    key: str
    version: int
    definition: PlaybookDef
    first_seen: dt.datetime


class SopService:
    """Per-process cache of active playbooks (refreshed every CACHE_S, or at once by `invalidate`)
    and of definitions by row id (a row never changes, so those are cached for good)."""

    def __init__(self) -> None:
        self._active: list[LoadedPlaybook] = []
        self._loaded_at: float | None = None
        self._by_id: dict[int, PlaybookDef] = {}

    def invalidate(self) -> None:
        self._loaded_at = None

    async def active(self, session: AsyncSession, *, refresh: bool = False) -> list[LoadedPlaybook]:
        if refresh or self._loaded_at is None or time.monotonic() - self._loaded_at > CACHE_S:
            rows = (await session.scalars(select(Playbook).where(Playbook.active.is_(True)).order_by(Playbook.key))).all()
            firsts = dict(
                (await session.execute(
                    select(Playbook.key, func.min(Playbook.created_at)).where(Playbook.key.in_([r.key for r in rows])).group_by(Playbook.key)
                )).all()
            ) if rows else {}
            loaded: list[LoadedPlaybook] = []
            for row in rows:
                definition = self._remember(row)
                if definition is not None:
                    first = firsts.get(row.key) or row.created_at
                    loaded.append(LoadedPlaybook(row.id, row.key, row.version, definition, _aware(first)))
            self._active, self._loaded_at = loaded, time.monotonic()
        return self._active

    async def definition(self, session: AsyncSession, playbook_id: int) -> PlaybookDef | None:
        if playbook_id not in self._by_id:
            row = await session.get(Playbook, playbook_id)
            if row is None or self._remember(row) is None:
                return None
        return self._by_id[playbook_id]

    def _remember(self, row: Playbook) -> PlaybookDef | None:
        if row.id not in self._by_id:
            try:
                self._by_id[row.id] = load_definition(row.definition, f"sop_playbooks#{row.id}")
            except PlaybookError:
                log.exception("stored playbook %s v%s no longer validates; skipped", row.key, row.version)
                return None
        return self._by_id[row.id]


def _aware(value: dt.datetime) -> dt.datetime:
    # func.min() comes back without the column type's result processing on some drivers.
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
