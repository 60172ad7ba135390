"""Apply a library folder to the database: create, update, version, retire and restore items.

Rules (see the CONTRACT's "Content library folder"):
- an unchanged file changes nothing: no new version, no `updated_at` bump;
- a changed body or attachment makes a new version (number + 1) and moves `current_version_id`;
  the version snapshots the title and summary of that moment;
- a metadata-only change (title, tags, summary, stage, ...) updates the item in place;
- an item whose file is gone is retired (`retired_at` set), never deleted; if it comes back it is
  restored. Files with errors keep their item as it was (neither updated nor retired).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import ContentItem, ContentVersion
from content.errors import LibraryFolderError
from content.library import FileError, ItemSource, LibraryScan, scan_library

# (phase, done, total): phase is "check" while reading files, "import" while writing items.
ImportProgress = Callable[[str, int, int], None]

# Item columns that come from front matter and are updated in place (no new version).
_ITEM_FIELDS = ("title", "kind", "stage", "summary", "personas", "industries", "tags", "gated", "internal", "variant_of", "cover")


@dataclass
class ImportReport:
    """What an import did, slug by slug. Each imported slug is in exactly one of
    created / updated / restored / unchanged; `new_versions` lists those that got a new version."""

    files: int = 0
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    new_versions: list[str] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    retire_skipped: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line for people: the counts of what happened."""
        bad = len({e.path for e in self.errors})
        line = (
            f"{self.files} files: created {len(self.created)}, updated {len(self.updated)}"
            f" ({len(self.new_versions)} new versions), unchanged {len(self.unchanged)},"
            f" retired {len(self.retired)}, restored {len(self.restored)}, files with errors {bad}"
        )
        if self.retire_skipped:
            line += " (retiring skipped: some files could not be read)"
        return line


async def import_library(
    session: AsyncSession,
    folder: Path | str,
    *,
    now: dt.datetime | None = None,
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Import `folder` into the database inside the caller's transaction (the caller commits).

    Raises LibraryFolderError when `folder` is not a folder or holds no item files (importing an
    empty folder would retire the whole library, which is never what a typo in the path meant).
    Per-file problems do not raise: they are in `report.errors` and the valid files are imported.
    """
    folder = Path(folder)
    now = now or dt.datetime.now(dt.timezone.utc)
    check = (lambda done, total: progress("check", done, total)) if progress else None
    scan = await asyncio.to_thread(scan_library, folder, check)
    if scan.files == 0:
        raise LibraryFolderError(f"{folder}: no item files (*.md other than README.md)")
    return await apply_scan(session, scan, now=now, progress=progress)


async def apply_scan(
    session: AsyncSession, scan: LibraryScan, *, now: dt.datetime, progress: ImportProgress | None = None
) -> ImportReport:
    """Write a scanned folder to the database (see the module docstring for the rules)."""
    report = ImportReport(files=scan.files, errors=list(scan.errors))
    existing = {item.slug: item for item in await session.scalars(select(ContentItem))}
    current_ids = [i.current_version_id for i in existing.values() if i.current_version_id is not None]
    current: dict[int, ContentVersion] = {}
    if current_ids:
        rows = await session.scalars(select(ContentVersion).where(ContentVersion.id.in_(current_ids)))
        current = {v.item_id: v for v in rows}

    for done, source in enumerate(scan.items, 1):
        item = existing.get(source.slug)
        if item is None:
            await _create(session, source, now)
            report.created.append(source.slug)
        else:
            was_retired = item.retired_at is not None
            changed = _update_fields(item, source)
            if was_retired:
                item.retired_at = None
            version = current.get(item.id)
            if version is None or _content_changed(version, source):
                await _add_version(session, item, source, now)
                report.new_versions.append(source.slug)
                changed = True
            if changed or was_retired:
                item.updated_at = now
            if was_retired:
                report.restored.append(source.slug)
            elif changed:
                report.updated.append(source.slug)
            else:
                report.unchanged.append(source.slug)
        if progress:
            progress("import", done, len(scan.items))

    if scan.complete:
        for slug, item in sorted(existing.items()):
            if item.retired_at is None and slug not in scan.present_slugs:
                item.retired_at = now
                item.updated_at = now
                report.retired.append(slug)
    else:
        report.retire_skipped = True
    await session.flush()
    return report


def _item_values(source: ItemSource) -> dict[str, Any]:
    return {
        "title": source.title,
        "kind": source.kind,
        "stage": source.stage,
        "summary": source.summary,
        "personas": list(source.personas),
        "industries": list(source.industries),
        "tags": list(source.tags),
        "gated": source.gated,
        "internal": source.internal,
        "variant_of": source.variant_of,
        "cover": source.cover,
    }


def _update_fields(item: ContentItem, source: ItemSource) -> bool:
    changed = False
    for name, value in _item_values(source).items():
        if getattr(item, name) != value:
            setattr(item, name, value)
            changed = True
    return changed


def _content_changed(version: ContentVersion, source: ItemSource) -> bool:
    attachment = source.attachment
    return (
        version.body_hash != source.body_hash
        or version.attachment_hash != (attachment.sha256 if attachment else None)
        or version.attachment_name != (attachment.name if attachment else None)
    )


async def _create(session: AsyncSession, source: ItemSource, now: dt.datetime) -> None:
    item = ContentItem(slug=source.slug, created_at=now, updated_at=now, **_item_values(source))
    session.add(item)
    await session.flush()  # the version needs the item's id
    await _add_version(session, item, source, now)


async def _add_version(session: AsyncSession, item: ContentItem, source: ItemSource, now: dt.datetime) -> None:
    last = await session.scalar(select(func.max(ContentVersion.version)).where(ContentVersion.item_id == item.id))
    attachment = source.attachment
    data = await asyncio.to_thread(attachment.read) if attachment else None
    if attachment and data is not None and (len(data), sha256_bytes(data)) != (attachment.size, attachment.sha256):
        # The file changed between checking and storing: describe the bytes actually stored.
        attachment = replace(attachment, size=len(data), sha256=sha256_bytes(data))
    version = ContentVersion(
        item_id=item.id,
        version=(last or 0) + 1,
        title=source.title,
        summary=source.summary,
        body_md=source.body,
        body_hash=source.body_hash,
        attachment_name=attachment.name if attachment else None,
        attachment_hash=attachment.sha256 if attachment else None,
        attachment_size=attachment.size if attachment else None,
        attachment_data=data,
        created_at=now,
    )
    session.add(version)
    await session.flush()  # current_version_id needs the version's id
    item.current_version_id = version.id


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
