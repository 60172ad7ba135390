"""Domain errors, raised at the bottom and translated at the edge (HTTP status, bot reply)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors a person can be told about."""


class NotFound(DomainError):
    def __init__(self, what: str, key: str) -> None:
        super().__init__(f"unknown {what}: {key}")
        self.what = what
        self.key = key


class NotShareable(DomainError):
    """Internal (rep-only) or retired material cannot go to a customer by any path."""


class InvalidInput(DomainError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
