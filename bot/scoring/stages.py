"""Stage and temperature from a score, by a model's thresholds.

Score moves a contact forward along the funnel new → nurturing → mql → sql, never back: a contact
whose score later decays keeps its stage (reps and SOPs decide what happens to cooling leads).
`sql` is reached by score only when the model sets `sql_at` (0 = SQL is a rep's call). The side
stages customer, invalid and dormant are never entered or left by score.
"""

from __future__ import annotations

from typing import Literal

from bot.scoring.rules import ScoringModel

FUNNEL: tuple[str, ...] = ("new", "nurturing", "mql", "sql")
SIDE_STAGES: tuple[str, ...] = ("customer", "invalid", "dormant")
STAGES: tuple[str, ...] = FUNNEL + SIDE_STAGES
# The way forward, by rank: how far a contact has got (`Contact.reach`, the dashboards' funnels).
JOURNEY: tuple[str, ...] = FUNNEL + ("customer",)
_RANK = {stage: rank for rank, stage in enumerate(JOURNEY)}
Temperature = Literal["cold", "warm", "hot"]


def reach_of(stage: str) -> int:
    """How far along JOURNEY `stage` is (`Contact.reach`): its rank there; 0 for invalid and dormant,
    which are no step forward. (bot.reports.journey_rank, in SQL, ranks them -1 to tell moves apart.)"""
    return _RANK.get(stage, 0)


def temperature(score: float, model: ScoringModel) -> Temperature:
    """cold below `warm_at`, warm from `warm_at`, hot from `hot_at`."""
    if score >= model.hot_at:
        return "hot"
    if score >= model.warm_at:
        return "warm"
    return "cold"


def stage_by_score(score: float, model: ScoringModel) -> str:
    """The furthest funnel stage the score alone reaches."""
    if model.sql_at and score >= model.sql_at:
        return "sql"
    if score >= model.mql_at:
        return "mql"
    if score >= model.nurturing_at:
        return "nurturing"
    return "new"


def stage_for_score(current: str, score: float, model: ScoringModel) -> str | None:
    """The stage to move to, or None to stay: only forward along the funnel; a contact in a side
    stage (customer, invalid, dormant) or an unknown stage is left alone."""
    if current not in FUNNEL:
        return None
    target = stage_by_score(score, model)
    return target if FUNNEL.index(target) > FUNNEL.index(current) else None
