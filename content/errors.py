"""Domain errors of the content library; the CLI and HTTP edges translate them (exit codes, 400/404)."""

from __future__ import annotations

from typing import Sequence


class ContentError(Exception):
    """Base class for content-library errors."""


class LibraryFolderError(ContentError):
    """The import folder cannot be used at all (missing, not a folder, no item files)."""


class InvalidFilter(ContentError):
    """A search filter has a value outside its vocabulary (unknown kind or stage)."""

    def __init__(self, field: str, value: str, allowed: Sequence[str]) -> None:
        self.field = field
        self.value = value
        self.allowed = tuple(allowed)
        super().__init__(f"unknown {field} {value!r}; allowed: {', '.join(self.allowed)}")


class MissingVersion(ContentError):
    """An item has no current version (never imported completely)."""

    def __init__(self, slug: str) -> None:
        self.slug = slug
        super().__init__(f"content item {slug!r} has no current version")
