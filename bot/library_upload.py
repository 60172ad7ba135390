"""Content uploads from the admin page: one zip, or .md files with their attachments.

The upload is unpacked into a temporary folder and checked by the library scanner exactly like a
folder given to `content import`; only then does the importer apply it. Unlike `content import`
an upload is partial: items it does not mention are left alone (never retired). All or nothing:
any file with an error and nothing is imported.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import re
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import ContentItem
from content.importer import ImportReport, apply_scan
from content.library import FileError, scan_library

MAX_FILES = 500
_NAME_RE = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")
_IGNORED = ("__MACOSX/", ".DS_Store")


class UploadError(Exception):
    """The upload cannot be used as it is; the message says why, for the person uploading."""


def human_size(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB" if n >= 1024 * 1024 else f"{n / 1024:g} KB"


def safe_name(raw: str) -> str:
    """A plain file name (no folders, no hidden files), or UploadError."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not _NAME_RE.match(name) or name.startswith("."):
        raise UploadError(f"文件名不可用：{raw[:80]!r}")
    return name


def _zip_names(infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Flat names for the zip's files; one wrapping folder is allowed (a zipped library folder)."""
    files = [i for i in infos if not i.is_dir() and not i.filename.startswith(_IGNORED) and not i.filename.endswith(_IGNORED)]
    paths = []
    for info in files:
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            raise UploadError(f"压缩包中的路径不安全：{info.filename[:80]!r}")
        paths.append(path)
    tops = {p.parts[0] for p in paths if len(p.parts) > 1}
    strip = len(tops) == 1 and all(len(p.parts) > 1 for p in paths)
    out: dict[str, zipfile.ZipInfo] = {}
    for info, path in zip(files, paths):
        parts = path.parts[1:] if strip else path.parts
        if len(parts) != 1:
            raise UploadError(f"压缩包中的条目应在同一层文件夹：{info.filename[:80]!r}")
        name = safe_name(parts[0])
        if name in out:
            raise UploadError(f"压缩包中有重名文件：{name}")
        out[name] = info
    return out


def unpack(files: list[tuple[str, bytes]], folder: Path, *, max_bytes: int) -> int:
    """Write the uploaded files (a zip is extracted) into `folder`; returns how many files.
    Raises UploadError for unsafe names, too many files or a zip that unpacks too big."""
    written: dict[str, bytes] = {}
    unpacked = 0
    too_big = UploadError(f"解压后超过 {human_size(max_bytes)}")
    for raw_name, data in files:
        if raw_name.lower().endswith(".zip"):
            try:
                archive = zipfile.ZipFile(io.BytesIO(data))
            except zipfile.BadZipFile:
                raise UploadError(f"{raw_name[:80]} 不是有效的 zip 文件") from None
            entries = _zip_names(archive.infolist())
            if sum(i.file_size for i in entries.values()) > max_bytes:
                raise too_big
            for name, info in entries.items():
                room = max_bytes - unpacked
                try:
                    with archive.open(info) as member:
                        content = member.read(room + 1)  # declared sizes may lie: never inflate past the limit
                except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError):
                    raise UploadError(f"{raw_name[:80]} 已损坏、已加密或压缩方式不受支持") from None
                unpacked += len(content)
                if unpacked > max_bytes:
                    raise too_big
                written[name] = content
        else:
            written[safe_name(raw_name)] = data
        if len(written) > MAX_FILES:
            raise UploadError(f"一次最多上传 {MAX_FILES} 个文件")
    for name, content in written.items():
        (folder / name).write_bytes(content)
    return len(written)


async def import_folder(session: AsyncSession, folder: Path, *, now: dt.datetime) -> ImportReport | list[FileError]:
    """Scan `folder` and, if every file is valid, apply it inside the caller's transaction; the
    scanner's errors otherwise. Items the upload does not mention are not retired."""
    scan = await asyncio.to_thread(scan_library, folder)
    if scan.files == 0:
        raise UploadError("没有找到内容条目（.md 文件，README.md 除外）")
    if scan.errors:
        return scan.errors
    existing = set((await session.scalars(select(ContentItem.slug))).all())
    scan.present_slugs |= existing
    return await apply_scan(session, scan, now=now)
