"""Next-best content for a contact: move one step along the buying journey.

`rank_next` is the pure ranking (no I/O, tested directly); `recommend_next` loads the candidates.
Rules, in order of weight:
1. never internal, never retired, never already sent;
2. the journey stage after the stage of what the contact read last (awareness when nothing yet),
   then later stages, then the stage just read, then earlier ones;
3. more matches with the contact's persona and industry first (items for everyone — no personas
   or industries listed — count as a half match);
4. newest first; one item per variant family (an item and its variants), the best-fitting one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import ContentItem
from content.vocab import STAGES, next_stage

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Profile:
    """What recommendations need to know about a contact."""

    persona: str | None = None
    industry: str | None = None
    last_read_stage: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Profile":
        """From a `contact_profile` dict: keys `persona`, `industry`, `last_read_stage` (all optional)."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return (value.strip().lower() or None) if isinstance(value, str) else None

        return cls(persona=text("persona"), industry=text("industry"), last_read_stage=text("last_read_stage"))


def stage_distance(stage: str, profile: Profile) -> int:
    """0 for the target stage, growing for later stages, then the stage just read, then earlier ones."""
    if stage not in STAGES:
        return 2 * len(STAGES)
    target = STAGES.index(next_stage(profile.last_read_stage))
    index = STAGES.index(stage)
    if index >= target:
        return index - target
    return len(STAGES) + (target - index)


def fit(item: ContentItem, profile: Profile) -> float:
    """How well the item's audience matches the contact: 1 per matching persona/industry, 0.5 if open."""
    score = 0.0
    for wanted, offered in ((profile.persona, item.personas), (profile.industry, item.industries)):
        if not offered:
            score += 0.5
        elif wanted and wanted in offered:
            score += 1.0
    return score


def rank_next(
    items: Iterable[ContentItem], profile: Profile, already_sent: set[int], limit: int = 3
) -> list[ContentItem]:
    """The best `limit` items for this contact by the module's rules (pure: no I/O)."""
    eligible = [
        item
        for item in items
        if not item.internal and item.retired_at is None and item.id not in already_sent
    ]
    eligible.sort(
        key=lambda item: (
            stage_distance(item.stage, profile),
            -fit(item, profile),
            -(item.updated_at or _EPOCH).timestamp(),
            item.slug,
        )
    )
    picked: list[ContentItem] = []
    families: set[str] = set()
    for item in eligible:
        family = item.variant_of or item.slug
        if family in families:
            continue
        families.add(family)
        picked.append(item)
        if len(picked) == limit:
            break
    return picked


async def recommend_next(
    session: AsyncSession, *, contact_profile: Mapping[str, Any], already_sent: set[int], limit: int = 3
) -> list[ContentItem]:
    """Up to `limit` items to send this contact next (never internal, retired or already sent).

    `contact_profile` keys (all optional): `persona`, `industry`, and `last_read_stage` — the
    journey stage of the item the contact read last.
    """
    profile = Profile.from_mapping(contact_profile)
    rows = await session.scalars(
        select(ContentItem).where(ContentItem.internal.is_(False), ContentItem.retired_at.is_(None))
    )
    return rank_next(rows, profile, already_sent, limit)
