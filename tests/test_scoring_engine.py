"""The scoring engine: profile deltas, behavior rules with caps, decay over simulated time, the ledger,
regional models, stages and temperature, and the compact ScoreBook. No database, no clock."""

from __future__ import annotations

import datetime as dt
import random
import tracemalloc
from typing import Any, Iterable

import pytest

from bot.scoring import (
    Entry,
    ModelChanged,
    ScoreBook,
    ScoredEvent,
    Scorer,
    ScoringModel,
    ScoringSettings,
    stage_for_score,
    temperature,
)
from bot.scoring.engine import merge_spells, pack_totals, unpack_totals

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai
SCORER = Scorer(ScoringSettings())
PROFILE = {"phone": "13800000000", "title": "采购总监", "company_size": "500-999", "email": ""}


def ev(type_: str, at: dt.datetime = T0, *, id: int = 1, contact: int = 1, **kw: Any) -> ScoredEvent:
    return ScoredEvent(id=id, contact_id=contact, type=type_, at=at, **kw)


def cents(entries: Iterable[Entry]) -> int:
    return sum(round(e.points * 100) for e in entries)


def by_rule(entries: Iterable[Entry]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in entries:
        out[e.rule] = round(out.get(e.rule, 0) + e.points, 2)
    return out


def model(**kw: Any) -> ScoringSettings:
    return ScoringSettings.model_validate({"models": [{"name": "default", **kw}]})


# --- profile ----------------------------------------------------------------------------------


def test_profile_entries_one_per_rule_with_reasons() -> None:
    state = SCORER.new_state(1)
    entries = SCORER.profile_entries(state, PROFILE, T0)
    assert [(e.rule, e.points, e.reason) for e in entries] == [
        ("has_phone", 10.0, "电话已填写 +10"),
        ("executive_title", 10.0, "职位为决策层 +10"),
        ("company_100_plus", 10.0, "公司规模100人以上 +10"),
    ]
    assert all(e.event_id is None and e.model == "default" and e.at == T0 for e in entries)
    assert state.score == 30.0


def test_profile_change_gives_delta_entries_only() -> None:
    state = SCORER.new_state(1)
    ledger = SCORER.profile_entries(state, PROFILE, T0)
    assert SCORER.profile_entries(state, PROFILE, T0) == []  # nothing changed, nothing written
    changed = {**PROFILE, "phone": "", "email": "a@b.cn"}
    delta = SCORER.profile_entries(state, changed, T0 + dt.timedelta(days=1))
    assert [(e.rule, e.points, e.reason) for e in delta] == [
        ("has_phone", -10.0, "不再满足：电话已填写 -10"),
        ("has_email", 5.0, "邮箱已填写 +5"),
    ]
    ledger += delta
    assert state.score == 25.0 == cents(ledger) / 100


def test_invalid_phone_cancels_has_phone() -> None:
    state = SCORER.new_state(1)
    entries = SCORER.profile_entries(state, {"phone": "12"}, T0)
    assert by_rule(entries) == {"has_phone": 10.0, "invalid_phone": -10.0}
    assert state.score == 0


def test_profile_delta_from_a_stored_ledger_follows_rule_changes() -> None:
    old = SCORER.rescore(1, PROFILE, [], T0)[1]
    raised = Scorer(model(profile=[{"name": "has_phone", "field": "phone", "points": 15, "label": "电话已填写"}]))
    delta = raised.profile_delta(1, PROFILE, old, T0)
    # Only the current model's rules are compared; a rule dropped from the config is a rescore.
    assert [(e.rule, e.points, e.reason) for e in delta] == [("has_phone", 5.0, "电话已填写（规则调整）+5")]
    assert raised.profile_delta(1, PROFILE, old + delta, T0) == []
    gone = raised.profile_delta(1, {}, old + delta, T0)
    assert [(e.rule, e.points, e.reason) for e in gone] == [("has_phone", -15.0, "不再满足：电话已填写 -15")]


def test_region_change_needs_a_rescore() -> None:
    scorer = Scorer(
        ScoringSettings.model_validate({"models": [{"name": "default"}, {"name": "east", "regions": ["上海"]}]})
    )
    state = scorer.new_state(1, "北京")
    assert state.model == "default"
    with pytest.raises(ModelChanged, match="rescore"):
        scorer.profile_entries(state, {"region": "上海"}, T0)
    assert scorer.rescore(1, {"region": "上海", "phone": "13800000000"}, [], T0)[0].model == "east"


# --- behavior ---------------------------------------------------------------------------------


def test_all_matching_rules_apply_in_model_order() -> None:
    state = SCORER.new_state(1)
    entries = SCORER.apply(state, ev("open", item_id=7, item_stage="decision", item_title="报价方案"))
    assert [(e.rule, e.points, e.reason, e.event_id) for e in entries] == [
        ("open", 3.0, "打开《报价方案》 +3", 1),
        ("open_decision_item", 5.0, "打开《报价方案》 +5", 1),
    ]


def test_read_rules_by_depth_and_kind() -> None:
    state = SCORER.new_state(1)
    half = SCORER.apply(state, ev("read", item_id=1, item_kind="solution", props={"depth": 50}))
    assert by_rule(half) == {"read_50": 5.0}
    deep = SCORER.apply(state, ev("read", item_id=2, item_kind="case_study", item_title="某车企案例", props={"depth": 75}))
    assert by_rule(deep) == {"read_50": 5.0, "read_75_solution": 12.0}
    assert deep[1].reason == "阅读《某车企案例》至75% +12"
    other = SCORER.apply(state, ev("read", item_id=3, item_kind="whitepaper", props={"depth": 100}))
    assert by_rule(other) == {"read_50": 5.0}


def test_props_pick_the_cta_rule_and_unscored_types_give_nothing() -> None:
    state = SCORER.new_state(1)
    assert by_rule(SCORER.apply(state, ev("cta", item_id=1, props={"cta": "demo"}))) == {"cta_demo": 30.0}
    assert by_rule(SCORER.apply(state, ev("cta", item_id=1, props={"cta": "contact"}))) == {"cta_contact": 20.0}
    assert SCORER.apply(state, ev("cta", item_id=1, props={"cta": "pricing"})) == []
    assert SCORER.apply(state, ev("payment")) == []


def test_tag_rule() -> None:
    scorer = Scorer(model(behavior=[{"name": "erp", "event": "open", "item_tag": ["erp"], "points": 4}]))
    state = scorer.new_state(1)
    assert by_rule(scorer.apply(state, ev("open", item_tags=("mes", "erp")))) == {"erp": 4.0}
    assert scorer.apply(state, ev("open", item_tags=("mes",))) == []


def test_ten_reloads_are_one_open() -> None:
    state = SCORER.new_state(1)
    entries: list[Entry] = []
    for i in range(10):
        entries += SCORER.apply(state, ev("open", T0 + dt.timedelta(minutes=i), id=i, item_id=7))
    assert by_rule(entries) == {"open": 3.0}
    # another item the same day still counts
    assert by_rule(SCORER.apply(state, ev("open", T0 + dt.timedelta(hours=1), item_id=8))) == {"open": 3.0}


def test_per_item_cap_resets_at_local_midnight() -> None:
    # Asia/Shanghai midnight is 16:00 UTC: 15:59 and 16:01 UTC are one UTC day but two local days.
    state = SCORER.new_state(1)
    before = dt.datetime(2026, 3, 2, 15, 59, tzinfo=UTC)
    after = dt.datetime(2026, 3, 2, 16, 1, tzinfo=UTC)
    assert by_rule(SCORER.apply(state, ev("open", before, item_id=7))) == {"open": 3.0}
    assert SCORER.apply(state, ev("open", before + dt.timedelta(seconds=30), item_id=7)) == []
    assert by_rule(SCORER.apply(state, ev("open", after, item_id=7))) == {"open": 3.0}


def test_events_without_an_item_share_one_per_item_cap() -> None:
    state = SCORER.new_state(1)
    entries: list[Entry] = []
    for i in range(5):
        entries += SCORER.apply(state, ev("message", T0 + dt.timedelta(minutes=i), id=i))
    assert by_rule(entries) == {"message": 6.0}  # cap_per_item_per_day = 3


def test_max_times_is_for_ever() -> None:
    state = SCORER.new_state(1)
    first = SCORER.apply(state, ev("contact_added"))
    again = SCORER.apply(state, ev("contact_added", T0 + dt.timedelta(days=400)))
    assert by_rule(first) == {"contact_added": 5.0}
    assert "contact_added" not in by_rule(again)
    assert {e.rule for e in again} == {"decay"}


def test_daily_cap_trims_then_stops_and_resets_next_day() -> None:
    state = SCORER.new_state(1)
    entries: list[Entry] = []
    for i in range(3):  # 3 × 30 demo CTAs on different items; daily cap 60
        entries += SCORER.apply(state, ev("cta", T0 + dt.timedelta(minutes=i), id=i, item_id=i, props={"cta": "demo"}))
    assert [e.points for e in entries] == [30.0, 30.0]
    entries += SCORER.apply(state, ev("open", T0 + dt.timedelta(minutes=5), item_id=9))
    assert cents(entries) == 6000
    nxt = SCORER.apply(state, ev("cta", T0 + dt.timedelta(days=1), item_id=1, props={"cta": "demo"}))
    assert by_rule(nxt) == {"cta_demo": 30.0}


def test_daily_cap_grants_the_remainder_with_a_note() -> None:
    state = SCORER.new_state(1)
    SCORER.apply(state, ev("cta", item_id=1, props={"cta": "demo"}))
    SCORER.apply(state, ev("cta", item_id=2, props={"cta": "contact"}))
    last = SCORER.apply(state, ev("download", item_id=3))
    assert [(e.points, e.reason) for e in last] == [(8.0, "下载 +8")]
    trimmed = SCORER.apply(state, ev("download", item_id=4, item_title="报价单"))
    assert [(e.points, e.reason) for e in trimmed] == [(2.0, "下载《报价单》 +2（已达今日加分上限）")]
    assert state.score == 60.0


def test_negative_rules_are_never_capped() -> None:
    state = SCORER.new_state(1)
    for i in range(3):
        SCORER.apply(state, ev("cta", T0, item_id=i, props={"cta": "demo"}))  # daily cap reached
    entries: list[Entry] = []
    for i in range(3):
        entries += SCORER.apply(state, ev("contact_deleted", T0 + dt.timedelta(minutes=i), id=10 + i))
    assert [e.points for e in entries] == [-30.0, -30.0, -30.0]
    assert entries[0].reason == "删除企业微信好友 -30"
    assert state.score == 60 - 90


# --- decay ------------------------------------------------------------------------------------


def engaged_state() -> tuple[Any, list[Entry]]:
    state = SCORER.new_state(1)
    ledger = SCORER.profile_entries(state, PROFILE, T0)
    ledger += SCORER.apply(state, ev("cta", item_id=1, props={"cta": "demo"}))
    ledger += SCORER.apply(state, ev("form_submit", item_id=1))
    ledger += SCORER.apply(state, ev("contact_deleted"))
    return state, ledger  # profile 30, behavior 45, penalty −30


def test_thirty_quiet_days_change_nothing() -> None:
    state, ledger = engaged_state()
    assert SCORER.decay(state, T0 + dt.timedelta(days=30, hours=12)) == []
    assert state.score == 45.0


LOCAL = dt.timezone(dt.timedelta(hours=8))
ENGAGED_DAY = dt.date(2026, 3, 2).toordinal()  # engaged_state's events, in local time


def test_sixty_quiet_days_halve_behavior_only() -> None:
    state, ledger = engaged_state()
    ticks = SCORER.decay(state, T0 + dt.timedelta(days=60))
    assert [(e.rule, e.event_id, e.quiet_since, e.reason) for e in ticks] == [("decay", None, ENGAGED_DAY, "连续60天无互动，行为分逐日衰减")]
    assert state.behavior / 100 == pytest.approx(22.5, abs=0.2)
    assert ticks[0].points == (state.behavior - 4500) / 100  # the 30 daily ticks in one entry
    assert state.profile == 3000 and state.penalty == -3000  # profile and penalties never decay
    ledger += ticks
    assert cents(ledger) == state.cents


def test_decay_ticks_fall_on_local_midnights() -> None:
    state, _ = engaged_state()
    first = SCORER.decay(state, T0 + dt.timedelta(days=31))
    assert first[0].at.astimezone(LOCAL) == dt.datetime(2026, 4, 2, tzinfo=LOCAL)  # last engaged 2 March: the 31st midnight after
    assert first[0].reason == "连续31天无互动，行为分逐日衰减"
    later = SCORER.decay(state, T0 + dt.timedelta(days=35))
    assert later[0].at.astimezone(LOCAL) == dt.datetime(2026, 4, 6, tzinfo=LOCAL)  # dated at the last tick's midnight
    assert later[0].quiet_since == first[0].quiet_since == ENGAGED_DAY


def test_decay_is_idempotent_and_independent_of_when_it_is_called() -> None:
    """However the ticks are cut into calls (real time decays at each event, the nightly job once a
    day), the spell sums to the same points: the daily rounding is the same."""
    once, _ = engaged_state()
    all_at_once = SCORER.decay(once, T0 + dt.timedelta(days=90))
    piecewise, _ = engaged_state()
    parts: list[Entry] = []
    for hours in (24 * 31, 24 * 31 + 1, 24 * 40 + 7, 24 * 40 + 7, 24 * 55, 24 * 90):
        parts += SCORER.decay(piecewise, T0 + dt.timedelta(hours=hours))
    assert len(parts) == 4 and len(all_at_once) == 1
    assert merge_spells(parts) == all_at_once
    assert piecewise.behavior == once.behavior
    assert SCORER.decay(piecewise, T0 + dt.timedelta(days=90)) == []
    assert SCORER.decay(piecewise, T0 + dt.timedelta(days=10)) == []


def test_engagement_restarts_the_quiet_clock_but_leaving_does_not() -> None:
    state, _ = engaged_state()
    SCORER.apply(state, ev("open", T0 + dt.timedelta(days=29), item_id=5))
    assert SCORER.decay(state, T0 + dt.timedelta(days=59)) == []
    SCORER.apply(state, ev("unsubscribe", T0 + dt.timedelta(days=59)))  # not engagement: the spell goes on
    before = state.behavior
    ticks = SCORER.decay(state, T0 + dt.timedelta(days=61))
    assert [(e.quiet_since, e.reason) for e in ticks] == [(ENGAGED_DAY + 29, "连续32天无互动，行为分逐日衰减")]
    first = round(before * (1 - 0.5 ** (1 / 30)))
    second = round((before - first) * (1 - 0.5 ** (1 / 30)))  # each day's tick on what the day before left
    assert before - state.behavior == first + second == -round(ticks[0].points * 100)


def test_each_quiet_spell_is_one_entry() -> None:
    """A replay keeps one decay entry per spell: ticks before and after a non-engagement event merge,
    an engagement starts a new spell."""
    state = SCORER.new_state(1)
    events = [ev("download", T0, id=1, item_id=1), ev("unsubscribe", T0 + dt.timedelta(days=40), id=2),
              ev("download", T0 + dt.timedelta(days=70), id=3, item_id=2)]
    state, entries = SCORER.rescore(1, {}, events, T0 + dt.timedelta(days=120))
    spells = [e for e in entries if e.rule == "decay"]
    assert [e.quiet_since for e in spells] == [ENGAGED_DAY, ENGAGED_DAY + 70]
    assert [e.reason for e in spells] == ["连续70天无互动，行为分逐日衰减", "连续50天无互动，行为分逐日衰减"]
    assert cents(entries) == state.cents
    split = SCORER.new_state(1)
    pieces = SCORER.apply(split, events[0]) + SCORER.apply(split, events[1]) + SCORER.apply(split, events[2])
    pieces += SCORER.decay(split, T0 + dt.timedelta(days=120))
    assert len([e for e in pieces if e.rule == "decay"]) == 3  # the first spell in two calls
    assert merge_spells(pieces) == entries


def test_no_decay_when_half_life_is_zero() -> None:
    scorer = Scorer(model(decay_half_life_days=0))
    state = scorer.new_state(1)
    scorer.apply(state, ev("download", item_id=1))
    assert scorer.decay(state, T0 + dt.timedelta(days=400)) == []
    assert state.score == 8.0


def test_behavior_decays_to_exactly_zero() -> None:
    scorer = Scorer(model(decay_after_days=0, decay_half_life_days=1))
    state = scorer.new_state(1)
    ledger = scorer.apply(state, ev("download", item_id=1))
    ledger += scorer.decay(state, T0 + dt.timedelta(days=60))
    assert state.behavior == 0
    assert cents(ledger) == 0


# --- ledger, models, stages -------------------------------------------------------------------


def test_ledger_sum_is_the_score_through_a_mixed_history() -> None:
    rng = random.Random(7)
    state = SCORER.new_state(1)
    ledger = SCORER.profile_entries(state, PROFILE, T0)
    types = ["open", "read", "dwell", "download", "cta", "message", "forward", "contact_deleted", "call"]
    for i in range(300):
        at = T0 + dt.timedelta(hours=i * 7 + rng.randrange(5))
        props = {"depth": rng.choice([25, 50, 75, 100]), "seconds": rng.randrange(200), "cta": rng.choice(["demo", "contact"])}
        ledger += SCORER.apply(state, ev(rng.choice(types), at, id=i, item_id=rng.randrange(4), item_kind="solution", props=props))
        if i % 50 == 0:
            ledger += SCORER.profile_entries(state, {**PROFILE, "phone": rng.choice(["", "13900000000"])}, at)
        assert cents(ledger) == state.cents
    ledger += SCORER.decay(state, T0 + dt.timedelta(days=200))
    assert cents(ledger) == state.cents
    assert round(sum(e.points for e in ledger), 2) == state.score


def test_each_region_is_scored_by_its_model() -> None:
    scorer = Scorer(
        ScoringSettings.model_validate(
            {
                "models": [
                    {"name": "default"},
                    {
                        "name": "south",
                        "regions": ["华南"],
                        "timezone": "Asia/Hong_Kong",
                        "profile": [],
                        "behavior": [{"name": "webinar", "event": "webinar_attended", "points": 40}],
                    },
                ]
            }
        )
    )
    events = [ev("webinar_attended", item_id=1), ev("open", item_id=2, id=2)]
    south, south_ledger = scorer.rescore(1, {**PROFILE, "region": "华南"}, events, T0)
    north, north_ledger = scorer.rescore(1, {**PROFILE, "region": "华北"}, events, T0)
    assert (south.model, south.score, {e.model for e in south_ledger}) == ("south", 40.0, {"south"})
    assert (north.model, north.score) == ("default", 30 + 20 + 3)
    assert by_rule(north_ledger)["webinar_attended"] == 20.0


def test_temperature_thresholds() -> None:
    m = ScoringModel(name="m")
    scores = (-10, 0, 19.99, 20, 49.99, 50, 500)
    assert [temperature(s, m) for s in scores] == ["cold", "cold", "cold", "warm", "warm", "hot", "hot"]
    assert temperature(30, ScoringModel(name="m", warm_at=40, hot_at=60)) == "cold"


def test_stage_moves_forward_by_thresholds_only() -> None:
    m = ScoringModel(name="m")
    assert stage_for_score("new", 5, m) is None
    assert stage_for_score("new", 10, m) == "nurturing"
    assert stage_for_score("new", 45, m) == "mql"
    assert stage_for_score("nurturing", 39.99, m) is None
    assert stage_for_score("nurturing", 40, m) == "mql"
    assert stage_for_score("mql", 500, m) is None  # sql_at = 0: SQL is a rep's call
    assert stage_for_score("mql", 0, m) is None  # never backwards
    for side in ("customer", "invalid", "dormant", "something-else"):
        assert stage_for_score(side, 500, m) is None
    auto_sql = ScoringModel(name="m", sql_at=80)
    assert stage_for_score("mql", 80, auto_sql) == "sql"
    assert stage_for_score("new", 79, auto_sql) == "mql"


def test_late_event_is_scored_without_rewinding_decay() -> None:
    state, ledger = engaged_state()
    ledger += SCORER.decay(state, T0 + dt.timedelta(days=45))
    late = SCORER.apply(state, ev("call", T0 + dt.timedelta(days=2), id=99))
    assert by_rule(late) == {"call": 10.0}
    assert late[0].at == T0 + dt.timedelta(days=2)
    ledger += late
    assert cents(ledger) == state.cents


def test_event_for_another_contact_is_refused() -> None:
    with pytest.raises(ValueError, match="contact 2"):
        SCORER.apply(SCORER.new_state(1), ev("open", contact=2))


# --- ScoreBook --------------------------------------------------------------------------------


def test_book_round_trips_states() -> None:
    book = ScoreBook(SCORER)
    state, _ = engaged_state()
    SCORER.apply(state, ev("contact_added", T0 + dt.timedelta(hours=1)))
    book.put(state)
    back = book.get(1)
    assert repr(back) == repr(state)
    assert (back.profile_mask, back.caps, back.totals) == (state.profile_mask, state.caps, state.totals)
    assert book.score(1) == state.score
    assert SCORER.apply(back, ev("contact_added", T0 + dt.timedelta(hours=2))) == []  # max_times survives


def test_book_scores_events_and_frees_old_counters() -> None:
    book = ScoreBook(SCORER)
    book.add(1, PROFILE, T0)
    book.add(2, {}, T0)
    with pytest.raises(ValueError):
        book.add(1, {}, T0)
    assert by_rule(book.apply(ev("open", item_id=1))) == {"open": 3.0}
    assert book.apply(ev("open", item_id=1)) == []
    assert book.get(1).caps is not None
    book.decay_all(T0 + dt.timedelta(days=1))
    assert book.get(1).caps is None
    assert dict(book.scores()) == {1: 33.0, 2: 0.0}
    ticks = book.decay_all(T0 + dt.timedelta(days=61))
    assert {e.contact_id for e in ticks} == {1}
    assert book.score(1) == pytest.approx(31.5, abs=0.1)


def test_book_remove_reuses_the_row() -> None:
    book = ScoreBook(SCORER)
    for cid in (1, 2, 3):
        book.add(cid, {"phone": "13800000000"} if cid != 2 else {}, T0)
    book.remove(1)
    assert 1 not in book and len(book) == 2
    book.add(4, PROFILE, T0)
    assert sorted(book) == [2, 3, 4]
    assert (book.score(2), book.score(3), book.score(4)) == (0.0, 10.0, 30.0)


def test_book_memory_is_within_one_and_a_half_of_a_score_dict() -> None:
    n = 50_000
    ids = [10_000_000 + 13 * i for i in range(n)]
    rng = random.Random(1)
    tracemalloc.start()
    plain = {cid: rng.random() * 100 for cid in ids}
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tracemalloc.start()
    book = ScoreBook(SCORER)
    for cid in ids:
        state = SCORER.new_state(cid)
        state.profile_mask, state.profile = 1, 1000
        state.behavior, state.active_day, state.clock_day = rng.randrange(9000), 739700, 739720
        state.totals = {0: 1, 7: rng.randrange(1, 4)}  # contact_added once, and another `max_times` rule
        book.put(state)
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(plain) == len(book) == n
    assert used <= 1.5 * baseline, used / baseline
    assert not book._totals  # every contact's totals packed into its row


def test_book_with_dense_ids_is_a_fraction_of_a_score_dict() -> None:
    """Ids from a sequence, as contacts have: the book's index is 4 bytes per id."""
    n = 50_000
    rng = random.Random(2)
    tracemalloc.start()
    plain = {cid: rng.random() * 100 for cid in range(1, n + 1)}
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tracemalloc.start()
    book = ScoreBook(SCORER)
    for cid in range(1, n + 1):
        state = SCORER.new_state(cid)
        state.behavior, state.active_day, state.clock_day = rng.randrange(9000), 739700, 739720
        book.put(state)
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(plain) == len(book) == n and book._rows.dense
    assert used <= 0.5 * baseline, used / baseline


@pytest.mark.parametrize("seed", range(6))
def test_row_index_behaves_as_a_dict_through_its_moves(seed: int) -> None:
    """The index against a dict: ids dense, then a few far ones (it becomes a dict), then dense again
    as the book fills up (it moves back to the array); removals and re-insertions throughout."""
    from bot.scoring.engine import RowIndex

    rng = random.Random(seed)
    index, model = RowIndex(), {}
    modes = []

    def check() -> None:
        assert len(index) == len(model)
        assert sorted(index) == sorted(model)
        for cid in rng.sample(sorted(model), min(20, len(model))) if model else []:
            assert cid in index and index[cid] == model[cid] and index.get(cid) == model[cid]
        for missing in (0, -1, 10**12, "x", max(model, default=0) + 1):
            assert missing not in index and (not isinstance(missing, int) or index.get(missing) is None)
        with pytest.raises(KeyError):
            index[10**12 + 1]

    far = [rng.randrange(10**9, 2 * 10**9) for _ in range(5)]
    phases = [
        [rng.randrange(1, 5_000) for _ in range(3_000)],
        far,
        [rng.randrange(1, 5_000) for _ in range(3_000)] + [rng.randrange(1, 300_000) for _ in range(30_000)],
        [rng.randrange(1, 300_000) for _ in range(40_000)],
    ]
    for n, ids in enumerate(phases):
        if n == 3:
            for cid in far:  # the far contacts forgotten (merged, or a lease taken over)
                if cid in model:
                    assert index.pop(cid) == model.pop(cid)
        for cid in ids:
            if cid in model and rng.random() < 0.3:
                assert index.pop(cid) == model.pop(cid)
            else:
                row = rng.randrange(2**31)
                index[cid] = model[cid] = row
        check()
        modes.append(index.dense)
    # dense; a dict once far ids came in, and while they are held; dense again once they are gone
    # and more ids fill 1..300k
    assert modes == [True, False, False, True], modes
    index[-5] = model[-5] = 7  # no sequence makes one, but the index still answers as a dict would
    check()
    assert not index.dense


@pytest.mark.parametrize("totals", [None, {0: 1}, {3: 2, 0: 1, 254: 255, 9: 0}, {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, {0: 256}, {255: 1}])
def test_book_keeps_max_times_totals_packed_or_beside(totals: dict[int, int] | None) -> None:
    book = ScoreBook(SCORER)
    state = SCORER.new_state(7)
    state.totals = None if totals is None else dict(totals)
    book.put(state)
    fits = totals is None or (len(totals) <= 4 and all(i < 255 and c < 256 for i, c in totals.items()))
    if fits:
        assert unpack_totals(pack_totals(totals)) == (totals or None)
    assert (book.get(7).totals or None) == (totals or None)
    assert (7 in book._totals) == (not fits)
    state.totals = {0: 1}  # back to a packable one: the side entry goes
    book.put(state)
    assert book.get(7).totals == {0: 1} and 7 not in book._totals
    book.remove(7)
    assert not book._totals


def test_decay_chunks_follow_the_write_transaction_time() -> None:
    """The nightly decay sizes its chunks by how long the last one held the write lock (issue 9: at a
    million contacts, 500 of them took 120 ms)."""
    from bot.db import Chunks

    chunks = Chunks(500, target_s=0.02, least=20, most=2000)
    chunks.took(0.12, 500)  # six times too slow: halfway towards the 83 that would have fit
    assert chunks.size == 292
    for _ in range(10):
        chunks.took(0.12 * chunks.size / 500, chunks.size)  # the same cost per contact
    assert 83 <= chunks.size <= 90
    chunks.took(0.001, 10)  # a short last chunk teaches nothing
    assert 83 <= chunks.size <= 90
    for _ in range(20):
        chunks.took(0.002, chunks.size)  # quick: grows, up to its bound
    assert chunks.size == 2000
    for _ in range(20):
        chunks.took(5.0, chunks.size)  # a stalled disk: down to the floor, never to nothing
    assert chunks.size == 20
