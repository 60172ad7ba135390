"""Lead scoring: rules from `[scoring]`, a pure engine with an explainable ledger, stages.

Nothing here touches the database or the clock; callers feed events and times in and store the
entries that come out.
"""

from bot.scoring.engine import (
    ContactScoreState,
    DayCaps,
    Entry,
    ModelChanged,
    ScoreBook,
    ScoredEvent,
    Scorer,
)
from bot.scoring.rules import BehaviorRule, ProfileRule, ScoringModel, ScoringSettings
from bot.scoring.stages import FUNNEL, SIDE_STAGES, STAGES, stage_by_score, stage_for_score, temperature

__all__ = [
    "FUNNEL",
    "SIDE_STAGES",
    "STAGES",
    "BehaviorRule",
    "ContactScoreState",
    "DayCaps",
    "Entry",
    "ModelChanged",
    "ProfileRule",
    "ScoreBook",
    "ScoredEvent",
    "Scorer",
    "ScoringModel",
    "ScoringSettings",
    "stage_by_score",
    "stage_for_score",
    "temperature",
]
