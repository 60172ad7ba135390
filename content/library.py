"""Read and validate a content-library folder (no database): one Markdown file per item.

Each `*.md` file (except README.md and hidden files; subfolders are not read) starts with a YAML
front-matter block; the fields are listed in `content.vocab` and the CONTRACT. Problems are collected
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
from content.vocab import (
    ALLOWED_KEYS,
    KINDS,
    MAX_ATTACHMENT_BYTES,
    MAX_NAME_CHARS,
    MAX_TITLE_CHARS,
    README_NAMES,
    SLUG_RE,
    STAGES,
)

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
class Attachment:
    path: Path
    name: str
    size: int
    sha256: str

    def read(self) -> bytes:
        """The file's bytes (read only when a new version needs them)."""
        return self.path.read_bytes()


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


class _Invalid(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


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
    meta, body, problem = _split_front_matter(text.lstrip("\ufeff"))
    if problem:
        result.errors.append(FileError(path, "front matter", problem))
        return result
    values: dict[str, Any] = {}
    for key in sorted(set(meta) - ALLOWED_KEYS, key=str):
        result.errors.append(FileError(path, str(key), f"unknown field (allowed: {', '.join(sorted(ALLOWED_KEYS))})"))
    for key, check in _CHECKS.items():
        try:
            values[key] = check(meta.get(key), path)
        except _Invalid as exc:
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


# --- field checks: each returns the clean value or raises _Invalid(why) -------------------------


def _required_text(value: Any, max_chars: int | None = None) -> str:
    if value is None or value == "":
        raise _Invalid("required")
    if not isinstance(value, str):
        raise _Invalid(f"must be text, got {type(value).__name__} {value!r} (quote it)")
    value = value.strip()
    if not value:
        raise _Invalid("required")
    if max_chars is not None and len(value) > max_chars:
        raise _Invalid(f"too long ({len(value)} characters, at most {max_chars})")
    return value


def _slug(value: Any, _path: Path) -> str:
    slug = _required_text(value)
    if not SLUG_RE.fullmatch(slug):
        raise _Invalid(f"{slug!r} is not a valid slug (lower-case letters, digits and '-', starting with a letter or digit, at most 128)")
    return slug


def _one_of(allowed: tuple[str, ...]) -> Callable[[Any, Path], str]:
    def check(value: Any, _path: Path) -> str:
        text = _required_text(value)
        if text not in allowed:
            raise _Invalid(f"{text!r} is not one of: {', '.join(allowed)}")
        return text

    return check


def _text_list(lower: bool) -> Callable[[Any, Path], tuple[str, ...]]:
    # Personas and industries are identifiers matched by filters, so they are stored lower-case.
    def check(value: Any, _path: Path) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise _Invalid(f"must be a list like [a, b], got {type(value).__name__} {value!r}")
        out: list[str] = []
        for entry in value:
            if not isinstance(entry, str) or not entry.strip():
                raise _Invalid(f"entries must be non-empty text, got {entry!r} (quote it)")
            entry = entry.strip().lower() if lower else entry.strip()
            if entry not in out:
                out.append(entry)
        return tuple(out)

    return check


def _flag(value: Any, _path: Path) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {value!r}")
    return value


def _optional_slug(value: Any, path: Path) -> str | None:
    return None if value is None else _slug(value, path)


def _optional_name(value: Any, _path: Path) -> str | None:
    if value is None:
        return None
    return _required_text(value, MAX_NAME_CHARS)


def _attachment(value: Any, path: Path) -> Attachment | None:
    if value is None:
        return None
    name = _required_text(value, MAX_NAME_CHARS)
    folder = path.parent
    target = folder / name
    # Only a file right beside the .md: no sub-paths, no '..', no symlink leading out of the folder.
    if "/" in name or "\\" in name or name in {".", ".."} or target.resolve().parent != folder.resolve():
        raise _Invalid(f"{name!r} must be the name of a file in the same folder")
    if not target.is_file():
        raise _Invalid(f"file {name!r} not found beside {path.name}")
    size = target.stat().st_size
    if size > MAX_ATTACHMENT_BYTES:
        raise _Invalid(f"file {name!r} is {size / 1048576:.1f} MB, larger than the {MAX_ATTACHMENT_BYTES // 1048576} MB limit")
    digest = hashlib.sha256()
    with target.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return Attachment(path=target, name=name, size=size, sha256=digest.hexdigest())


_CHECKS: dict[str, Callable[[Any, Path], Any]] = {
    "slug": _slug,
    "title": lambda v, _p: _required_text(v, MAX_TITLE_CHARS),
    "kind": _one_of(KINDS),
    "stage": _one_of(STAGES),
    "summary": lambda v, _p: _required_text(v),
    "personas": _text_list(lower=True),
    "industries": _text_list(lower=True),
    "tags": _text_list(lower=False),
    "gated": _flag,
    "internal": _flag,
    "variant_of": _optional_slug,
    "cover": _optional_name,
    "attachment": _attachment,
}


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
