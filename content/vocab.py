"""The content library's vocabulary: kinds, journey stages, front-matter keys and limits.

Every other module (import validation, search filters, the API's 400 messages) reads these
constants, so a new kind or stage is added here and nowhere else.
"""

from __future__ import annotations

import re

KINDS: tuple[str, ...] = (
    "whitepaper",
    "case_study",
    "solution",
    "product_manual",
    "pitch_deck",
    "faq",
    "talk_track",
    "competitor_brief",
    "report",
    "webinar",
    "blog",
)

# Buying-journey stages in order; recommendations move a contact one step along this list.
STAGES: tuple[str, ...] = ("awareness", "consideration", "decision", "retention")

REQUIRED_KEYS: tuple[str, ...] = ("slug", "title", "kind", "stage", "summary")
OPTIONAL_KEYS: tuple[str, ...] = (
    "personas",
    "industries",
    "tags",
    "gated",
    "internal",
    "variant_of",
    "attachment",
    "cover",
)
ALLOWED_KEYS: frozenset[str] = frozenset(REQUIRED_KEYS + OPTIONAL_KEYS)

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
MAX_TITLE_CHARS = 255  # ContentItem.title / ContentVersion.title column size
MAX_NAME_CHARS = 255  # attachment and cover file names

README_NAMES = frozenset({"readme.md"})  # folder documentation, never an item


def next_stage(stage: str | None) -> str:
    """The journey stage after `stage` (retention stays retention; unknown or None starts at awareness)."""
    if stage not in STAGES:
        return STAGES[0]
    index = STAGES.index(stage)
    return STAGES[min(index + 1, len(STAGES) - 1)]
