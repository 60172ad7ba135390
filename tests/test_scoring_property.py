"""Determinism: scoring events as they come, with decay() called whenever, equals rescore()."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.scoring import Entry, ScoreBook, ScoredEvent, Scorer, ScoringSettings
from bot.scoring.engine import merge_spells

UTC = dt.timezone.utc
START = dt.datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
DAY = 86_400
CONTACT = 42

SCORER = Scorer(
    ScoringSettings.model_validate(
        {
            "models": [
                {"name": "default"},
                {
                    # fast decay, a tight cap and a time zone with daylight saving (March, November)
                    "name": "fast",
                    "regions": ["华南"],
                    "timezone": "America/New_York",
                    "decay_after_days": 2,
                    "decay_half_life_days": 3,
                    "daily_cap": 25,
                    "profile": [{"name": "has_phone", "field": "phone", "points": 10}],
                    "behavior": [
                        {"name": "open", "event": "open", "points": 3, "cap_per_item_per_day": 2},
                        {"name": "tagged", "event": "open", "item_tag": ["erp"], "points": 4.5},
                        {"name": "read", "event": "read", "min_depth": 50, "points": 7.25, "cap_per_item_per_day": 1},
                        {"name": "demo", "event": "cta", "props": {"cta": "demo"}, "points": 20, "max_times": 2},
                        {"name": "msg", "event": "message", "points": 1.33},
                        {"name": "deleted", "event": "contact_deleted", "points": -12.5},
                    ],
                },
            ]
        }
    )
)
TYPES = ["open", "read", "dwell", "download", "cta", "message", "forward", "form_submit", "contact_added",
         "contact_deleted", "unsubscribe", "call", "webinar_attended", "payment"]


@dataclass
class Step:
    event: ScoredEvent
    decay_before: list[dt.datetime]  # decay() calls between the previous event and this one
    via_book: bool  # round-trip the state through a ScoreBook before this step


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, str], list[Step], list[dt.datetime], dt.datetime]:
    profile = {"region": draw(st.sampled_from(["", "华南", "华北"])), "phone": draw(st.sampled_from(["", "13800000000"]))}
    offsets = sorted(draw(st.lists(st.integers(0, 200 * DAY), max_size=40)))
    steps: list[Step] = []
    previous = START
    for i, offset in enumerate(offsets):
        at = START + dt.timedelta(seconds=offset)
        kind = draw(st.sampled_from(TYPES))
        event = ScoredEvent(
            id=i + 1,
            contact_id=CONTACT,
            type=kind,
            at=at,
            item_id=draw(st.sampled_from([None, 1, 2, 3])),
            item_kind=draw(st.sampled_from([None, "solution", "case_study", "whitepaper"])),
            item_stage=draw(st.sampled_from([None, "awareness", "decision"])),
            item_tags=tuple(draw(st.lists(st.sampled_from(["erp", "mes"]), max_size=2))),
            props={
                "depth": draw(st.sampled_from([25, 50, 75, 100])),
                "seconds": draw(st.integers(0, 300)),
                "cta": draw(st.sampled_from(["demo", "contact"])),
            },
            item_title=draw(st.sampled_from([None, "白皮书"])),
        )
        steps.append(Step(event, _between(draw, previous, at), draw(st.booleans())))
        previous = at
    until = previous + dt.timedelta(seconds=draw(st.integers(0, 120 * DAY)))
    return profile, steps, _between(draw, previous, until), until


def _between(draw: st.DrawFn, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    fractions = sorted(draw(st.lists(st.floats(0, 1), max_size=3)))
    return [start + (end - start) * f for f in fractions]


def _cents(entries: list[Entry]) -> int:
    return sum(round(e.points * 100) for e in entries)


@settings(max_examples=300, deadline=None)
@given(histories())
def test_real_time_scoring_equals_rescore(history: tuple[dict[str, str], list[Step], list[dt.datetime], dt.datetime]) -> None:
    profile, steps, final_decays, until = history
    book = ScoreBook(SCORER)
    state = SCORER.new_state(CONTACT, profile["region"])
    ledger = SCORER.profile_entries(state, profile, START)
    for step in steps:
        for when in step.decay_before:
            ledger += SCORER.decay(state, when)
        if step.via_book:
            book.put(state)
            state = book.get(CONTACT)
        ledger += SCORER.apply(state, step.event)
        assert _cents(ledger) == state.cents
    for when in final_decays:
        ledger += SCORER.decay(state, when)
    ledger += SCORER.decay(state, until)

    replayed, expected = SCORER.rescore(CONTACT, profile, [s.event for s in steps], until, profile_at=START)
    assert merge_spells(ledger) == expected  # what the ledger holds: one row per quiet spell (bot/ledger.py)
    assert repr(state) == repr(replayed)
    assert _cents(expected) == replayed.cents
    assert round(sum(e.points for e in expected), 2) == replayed.score


@settings(max_examples=100, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_rescore_does_not_depend_on_input_order(
    history: tuple[dict[str, str], list[Step], list[dt.datetime], dt.datetime], rng: random.Random
) -> None:
    profile, steps, _, until = history
    events = [s.event for s in steps]
    distinct = list({e.at: e for e in events}.values())  # ties keep input order, so use distinct times
    shuffled = distinct[:]
    rng.shuffle(shuffled)
    assert SCORER.rescore(CONTACT, profile, shuffled, until)[1] == SCORER.rescore(CONTACT, profile, distinct, until)[1]
