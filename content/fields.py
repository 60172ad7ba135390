"""Front-matter field checks: each turns a raw YAML value into a clean one or raises FieldInvalid.

`FIELD_CHECKS` maps every allowed key to its check; `content.library` runs them per file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from content.vocab import KINDS, MAX_ATTACHMENT_BYTES, MAX_NAME_CHARS, MAX_TITLE_CHARS, SLUG_RE, STAGES

Check = Callable[[Any, Path], Any]


class FieldInvalid(Exception):
    """A field's value is wrong; `why` says how, for the `path: field: why` line."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class Attachment:
    """An attachment file beside the item, measured and hashed (SHA-256)."""

    path: Path
    name: str
    size: int
    sha256: str

    def read(self) -> bytes:
        """The file's bytes (read only when a new version needs them)."""
        return self.path.read_bytes()


def _required_text(value: Any, max_chars: int | None = None) -> str:
    if value is None or value == "":
        raise FieldInvalid("required")
    if not isinstance(value, str):
        raise FieldInvalid(f"must be text, got {type(value).__name__} {value!r} (quote it)")
    value = value.strip()
    if not value:
        raise FieldInvalid("required")
    if max_chars is not None and len(value) > max_chars:
        raise FieldInvalid(f"too long ({len(value)} characters, at most {max_chars})")
    return value


def _slug(value: Any, _path: Path) -> str:
    slug = _required_text(value)
    if not SLUG_RE.fullmatch(slug):
        raise FieldInvalid(f"{slug!r} is not a valid slug (lower-case letters, digits and '-', starting with a letter or digit, at most 128)")
    return slug


def _one_of(allowed: tuple[str, ...]) -> Callable[[Any, Path], str]:
    def check(value: Any, _path: Path) -> str:
        text = _required_text(value)
        if text not in allowed:
            raise FieldInvalid(f"{text!r} is not one of: {', '.join(allowed)}")
        return text

    return check


def _text_list(lower: bool) -> Callable[[Any, Path], tuple[str, ...]]:
    # Personas and industries are identifiers matched by filters, so they are stored lower-case.
    def check(value: Any, _path: Path) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise FieldInvalid(f"must be a list like [a, b], got {type(value).__name__} {value!r}")
        out: list[str] = []
        for entry in value:
            if not isinstance(entry, str) or not entry.strip():
                raise FieldInvalid(f"entries must be non-empty text, got {entry!r} (quote it)")
            entry = entry.strip().lower() if lower else entry.strip()
            if entry not in out:
                out.append(entry)
        return tuple(out)

    return check


def _flag(value: Any, _path: Path) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FieldInvalid(f"must be true or false, got {value!r}")
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
        raise FieldInvalid(f"{name!r} must be the name of a file in the same folder")
    if not target.is_file():
        raise FieldInvalid(f"file {name!r} not found beside {path.name}")
    size = target.stat().st_size
    if size > MAX_ATTACHMENT_BYTES:
        raise FieldInvalid(f"file {name!r} is {size / 1048576:.1f} MB, larger than the {MAX_ATTACHMENT_BYTES // 1048576} MB limit")
    digest = hashlib.sha256()
    with target.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return Attachment(path=target, name=name, size=size, sha256=digest.hexdigest())


FIELD_CHECKS: dict[str, Check] = {
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
