"""Read and validate a content-library folder (no database): one Markdown file per item.

Each `*.md` file (except README.md and hidden files; subfolders are not read) starts with a YAML
front-matter block; the fields are listed in `content.vocab`, checked by `content.fields`. Problems are collected
per file as `FileError(path, field, why)` so that one run reports all of them and the valid files can
still be imported. Attachments are only measured and hashed here; their bytes are read when a new
version is actually stored (`Attachment.read`), so a large library is never held in memory at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from frontmatter.default_handlers import YAMLHandler

from content.errors import LibraryFolderError
from content.fields import FIELD_CHECKS, Attachment, FieldInvalid
from content.vocab import ALLOWED_KEYS, README_NAMES

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FileError:
    """One problem in one file; `str()` gives the `path: field: why` line the CLI prints."""

    path: Path
    field: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.why}"


@dataclass(frozen=True)
class ItemSource:
    """A validated library item as read from its file."""

    path: Path
    slug: str
    title: str
    kind: str
    stage: str
    summary: str
    personas: tuple[str, ...] = ()
    industries: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    gated: bool = False
    internal: bool = False
    variant_of: str | None = None
    cover: str | None = None
    body: str = ""
    attachment: Attachment | None = None

    @property
    def body_hash(self) -> str:
        return sha256_text(self.body)


@dataclass
class LibraryScan:
    """The result of reading a folder: valid items, errors, and which slugs the folder mentions."""

    items: list[ItemSource]
    errors: list[FileError]
    files: int
    # Slugs named by any file, valid or not: an item whose file is merely broken is not retired.
    present_slugs: set[str] = field(default_factory=set)
    # False when some file's slug could not be read: then absence proves nothing and nothing retires.
    complete: bool = True

    @property
    def error_files(self) -> list[Path]:
        return sorted({e.path for e in self.errors})


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def library_files(folder: Path) -> list[Path]:
    """The item files of `folder`, sorted by name. Raises LibraryFolderError if it is not a folder."""
    if not folder.is_dir():
        raise LibraryFolderError(f"{folder}: not a folder")
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() == ".md" and p.is_file() and not p.name.startswith(".") and p.name.lower() not in README_NAMES
    )


def scan_library(folder: Path, progress: Progress | None = None) -> LibraryScan:
    """Read and validate every item file in `folder`, then check slugs across files."""
    paths = library_files(folder)
    results: list[_FileResult] = []
    for done, path in enumerate(paths, 1):
        results.append(_read_file(path))
        if progress:
            progress(done, len(paths))
    scan = LibraryScan(items=[], errors=[], files=len(paths))
    for result in results:
        if result.slug is None:
            scan.complete = False
        else:
            scan.present_slugs.add(result.slug)
    _check_across_files(results, scan.present_slugs)
    for result in results:
        scan.errors.extend(result.errors)
        if result.item is not None and not result.errors:
            scan.items.append(result.item)
    return scan


# --- one file -----------------------------------------------------------------------------------


@dataclass
class _FileResult:
    path: Path
    slug: str | None = None
    variant_of: str | None = None
    item: ItemSource | None = None
    errors: list[FileError] = field(default_factory=list)


def _read_file(path: Path) -> _FileResult:
    result = _FileResult(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        result.errors.append(FileError(path, "file", "not valid UTF-8 text"))
        return result
    except OSError as exc:
        result.errors.append(FileError(path, "file", f"cannot be read ({exc.strerror or exc})"))
        return result
    # A byte-order mark or blank lines before the opening --- are editor noise, not a missing block.
    meta, body, problem = _split_front_matter(text.lstrip("\ufeff \t\r\n"))
    if problem:
        result.errors.append(FileError(path, "front matter", problem))
        return result
    values: dict[str, Any] = {}
    for key in sorted(set(meta) - ALLOWED_KEYS, key=str):
        result.errors.append(FileError(path, str(key), f"unknown field (allowed: {', '.join(sorted(ALLOWED_KEYS))})"))
    for key, check in FIELD_CHECKS.items():
        try:
            values[key] = check(meta.get(key), path)
        except FieldInvalid as exc:
            result.errors.append(FileError(path, key, exc.why))
    result.slug = values.get("slug")
    result.variant_of = values.get("variant_of")
    if not result.errors:
        result.item = ItemSource(path=path, body=body, **values)
    return result


def _split_front_matter(text: str) -> tuple[dict[Any, Any], str, str | None]:
    handler = YAMLHandler()
    if not handler.detect(text):
        return {}, text, "missing (the file must start with a '---' line opening a YAML block)"
    try:
        raw, body = handler.split(text)
    except ValueError:
        return {}, text, "not closed (add a '---' line after the fields)"
    try:
        meta = handler.load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""  # +1 for 0-based, +1 for the '---' line
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return {}, text, f"invalid YAML{where}: {reason}"
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        return {}, text, "must be a set of 'key: value' lines"
    return meta, body.strip(), None


# --- across files -------------------------------------------------------------------------------


def _check_across_files(results: list[_FileResult], present: set[str]) -> None:
    by_slug: dict[str, list[_FileResult]] = {}
    for result in results:
        if result.slug is not None:
            by_slug.setdefault(result.slug, []).append(result)
    for slug, owners in by_slug.items():
        if len(owners) > 1:
            # Neither file wins: the importer cannot tell which one the author meant.
            for result in owners:
                others = ", ".join(o.path.name for o in owners if o is not result)
                result.errors.append(FileError(result.path, "slug", f"{slug!r} is also used by {others}"))
    for result in results:
        variant_of = result.variant_of
        if variant_of is None:
            continue
        if variant_of == result.slug:
            result.errors.append(FileError(result.path, "variant_of", "an item cannot be a variant of itself"))
        elif variant_of not in present:
            result.errors.append(FileError(result.path, "variant_of", f"no item with slug {variant_of!r} in this folder"))
