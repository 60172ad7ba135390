"""The scorer: a pure, deterministic function of a contact's profile, its events and the rules.

No database, no clock, no I/O. Every rule application is a ledger `Entry`; a contact's score is
exactly the sum of its entries. Points are kept internally in integer hundredths ("cents") so that
sums never drift; `Entry.points` is `cents / 100`.

Semantics (see also ScoringModel's fields):
- All matching behavior rules apply, in the model's order. Positive points count against the daily
  cap (`daily_cap` points per contact per local day; the last grant is trimmed to what is left),
  `cap_per_item_per_day` and `max_times`; negative points are never capped and never decay.
- Decay touches only positive behavior points. Ticks fall on local midnights of the model's time
  zone: at the midnight that starts day D+n, where D is the local day of the last engagement (any
  event but contact_deleted and unsubscribe), a tick is due when n > decay_after_days. A tick takes
  round(behavior × (1 − 0.5^(1/half_life))) cents, at least one, at most what is left.
- Because ticks are anchored to calendar days, not to when `decay()` is called, feeding events in
  time order with any `decay()` calls in between yields the same ledger as `rescore()`.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping
from zoneinfo import ZoneInfo

from bot.event_types import check_event_type
from bot.scoring.rules import DECAY_RULE, BehaviorRule, ProfileRule, ScoringModel, ScoringSettings

UTC = dt.timezone.utc
NOT_ENGAGEMENT = frozenset({"contact_deleted", "unsubscribe"})  # leaving is not interest: no quiet-clock reset


class ModelChanged(ValueError):
    """The profile's region now belongs to another model: the contact must be rescored."""


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """One behavior event as the scorer sees it (item fields copied from the content item)."""

    id: int
    contact_id: int
    type: str
    at: dt.datetime
    item_id: int | None = None
    item_kind: str | None = None
    item_stage: str | None = None
    item_tags: tuple[str, ...] = ()
    props: Mapping[str, Any] = field(default_factory=dict)
    item_title: str | None = None

    def __post_init__(self) -> None:
        check_event_type(self.type)
        if self.at.utcoffset() is None:
            raise ValueError("ScoredEvent.at must be an aware datetime")


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row: which rule gave how many points, for which event, and why (for reps).

    Decay entries carry `quiet_since`, the local day (ordinal) of the last engagement their quiet
    spell follows: the ledger keeps one row per spell, to which each later tick of the same spell
    adds its points (`merge_spells`; in the database, `bot.ledger.ledger_insert`).
    """

    contact_id: int
    model: str
    rule: str
    points: float
    event_id: int | None
    reason: str
    at: dt.datetime
    quiet_since: int | None = None


class DayCaps:
    """Cap counters of one local day; created only when a capped rule or the daily cap needs them."""

    __slots__ = ("day", "earned", "per_item")

    def __init__(self, day: int) -> None:
        self.day = day
        self.earned = 0  # positive cents granted today
        self.per_item: dict[tuple[int, int | None], int] | None = None  # (rule index, item) → times


class ContactScoreState:
    """A contact's scoring state: the points per bucket and what caps and decay need, nothing else.

    Points are integer cents. Days are proleptic ordinals of local dates in the model's time zone.
    `caps` holds today's counters only (None until needed, dropped when the day is over); `totals`
    counts `max_times` rules (None until one fires).
    """

    __slots__ = (
        "contact_id",
        "model",
        "profile_mask",
        "profile",
        "behavior",
        "penalty",
        "active_day",
        "clock_day",
        "caps",
        "totals",
    )

    def __init__(
        self,
        contact_id: int,
        model: str,
        *,
        profile_mask: int = 0,
        profile: int = 0,
        behavior: int = 0,
        penalty: int = 0,
        active_day: int | None = None,
        clock_day: int | None = None,
        caps: DayCaps | None = None,
        totals: dict[int, int] | None = None,
    ) -> None:
        self.contact_id = contact_id
        self.model = model
        self.profile_mask = profile_mask  # bit i: profile rule i holds
        self.profile = profile
        self.behavior = behavior  # positive behavior points, the only part that decays
        self.penalty = penalty  # negative behavior points
        self.active_day = active_day  # local day of the last engagement
        self.clock_day = clock_day  # local day up to whose start decay has been applied
        self.caps = caps
        self.totals = totals

    @property
    def cents(self) -> int:
        """The score in hundredths of a point (exact)."""
        return self.profile + self.behavior + self.penalty

    @property
    def score(self) -> float:
        """The score: profile + behavior − penalties, decay already deducted from behavior."""
        return self.cents / 100

    def __repr__(self) -> str:
        return (
            f"ContactScoreState(contact_id={self.contact_id}, model={self.model!r}, score={self.score:g}, "
            f"profile={self.profile}, behavior={self.behavior}, penalty={self.penalty}, "
            f"active_day={self.active_day}, clock_day={self.clock_day})"
        )


def _cents(points: float) -> int:
    return round(points * 100)


def _signed(cents: int) -> str:
    if cents % 100 == 0:
        return f"{cents // 100:+d}"
    return f"{cents / 100:+.2f}".rstrip("0")


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def local_day(tz: ZoneInfo, at: dt.datetime) -> int:
    """`at`'s local day in `tz`, as an ordinal: how the scorer counts days (an event's, a tick's)."""
    return at.astimezone(tz).date().toordinal()


# The same for a time many contacts share: a night's decay runs up to one `now`, and the last ticks
# of its quiet contacts fall on a handful of midnights.
shared_local_day = functools.lru_cache(maxsize=4096)(local_day)


@functools.lru_cache(maxsize=256)
def _midnight(tz: ZoneInfo, day: int) -> dt.datetime:
    """The UTC time of local midnight starting `day` (an ordinal) in `tz`; a night's decay ticks
    all fall on a handful of midnights."""
    local = dt.datetime.combine(dt.date.fromordinal(day), dt.time(), tzinfo=tz)
    return local.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class _Model:
    """A ScoringModel prepared for fast scoring: cents, rules indexed by event type, time zone."""

    index: int
    spec: ScoringModel
    tz: ZoneInfo
    profile: tuple[tuple[ProfileRule, int], ...]
    by_event: Mapping[str, tuple[tuple[int, BehaviorRule, int], ...]]
    daily_cap: int
    keep: float  # fraction of behavior points left after one decay tick

    @classmethod
    def build(cls, index: int, spec: ScoringModel) -> _Model:
        by_event: dict[str, list[tuple[int, BehaviorRule, int]]] = {}
        for i, rule in enumerate(spec.behavior):
            by_event.setdefault(rule.event, []).append((i, rule, _cents(rule.points)))
        half_life = spec.decay_half_life_days
        return cls(
            index=index,
            spec=spec,
            tz=ZoneInfo(spec.timezone),
            profile=tuple((rule, _cents(rule.points)) for rule in spec.profile),
            by_event={kind: tuple(rules) for kind, rules in by_event.items()},
            daily_cap=_cents(spec.daily_cap),
            keep=0.5 ** (1 / half_life) if half_life else 1.0,
        )

    def day(self, at: dt.datetime) -> int:
        return local_day(self.tz, at)

    def midnight(self, day: int) -> dt.datetime:
        return _midnight(self.tz, day)

    def profile_cents(self, mask: int) -> int:
        return sum(points for i, (_, points) in enumerate(self.profile) if mask >> i & 1)


class Scorer:
    """Scores contacts under ScoringSettings. Stateless itself: all state is in ContactScoreState."""

    def __init__(self, settings: ScoringSettings) -> None:
        self.settings = settings
        self._models = tuple(_Model.build(i, spec) for i, spec in enumerate(settings.models))
        self._by_name = {m.spec.name: m for m in self._models}

    def model_for(self, region: str | None) -> ScoringModel:
        """The model that scores contacts of `region` (the default model for unlisted regions)."""
        return self.settings.model_for(region)

    def new_state(self, contact_id: int, region: str | None = None) -> ContactScoreState:
        """An empty state for a contact, under the model its region picks."""
        return ContactScoreState(contact_id, self.model_for(region).name)

    def _model(self, state: ContactScoreState) -> _Model:
        return self._by_name[state.model]

    def _model_at(self, index: int) -> _Model:
        return self._models[index]

    def profile_entries(
        self, state: ContactScoreState, profile: Mapping[str, Any], at: dt.datetime
    ) -> list[Entry]:
        """Move the state's profile points to what `profile` earns now; one delta entry per rule
        that starts or stops holding. Raises ModelChanged if `profile["region"]` picks another model."""
        if "region" in profile and self.model_for(profile["region"]).name != state.model:
            raise ModelChanged(
                f"region {profile['region']!r} is scored by model {self.model_for(profile['region']).name!r}, "
                f"not {state.model!r}: rescore the contact"
            )
        model = self._model(state)
        at = at.astimezone(UTC)
        mask = 0
        for i, (rule, _) in enumerate(model.profile):
            if rule.holds(profile):
                mask |= 1 << i
        entries: list[Entry] = []
        for i, (rule, points) in enumerate(model.profile):
            now, before = mask >> i & 1, state.profile_mask >> i & 1
            if now == before:
                continue
            delta = points if now else -points
            label = rule.describe()
            reason = f"{label} {_signed(delta)}" if now else f"不再满足：{label} {_signed(delta)}"
            entries.append(Entry(state.contact_id, model.spec.name, rule.name, delta / 100, None, reason, at))
            state.profile += delta
        state.profile_mask = mask
        return entries

    def profile_delta(
        self, contact_id: int, profile: Mapping[str, Any], previous: Iterable[Entry], at: dt.datetime
    ) -> list[Entry]:
        """Entries that bring a stored ledger's profile points (`previous`) to what `profile` earns
        now, for each profile rule of the contact's model; also follows a rule whose points changed.
        Points of rules no longer in the config are not reversed here: a rule change is a rescore."""
        spec = self.model_for(profile.get("region"))
        held: dict[str, int] = {}
        for entry in previous:
            held[entry.rule] = held.get(entry.rule, 0) + _cents(entry.points)
        at = at.astimezone(UTC)
        entries: list[Entry] = []
        for rule in spec.profile:
            target = _cents(rule.points) if rule.holds(profile) else 0
            before = held.get(rule.name, 0)
            delta = target - before
            if delta == 0:
                continue
            label = rule.describe()
            if target == 0:
                reason = f"不再满足：{label} {_signed(delta)}"
            elif before == 0:
                reason = f"{label} {_signed(delta)}"
            else:
                reason = f"{label}（规则调整）{_signed(delta)}"
            entries.append(Entry(contact_id, spec.name, rule.name, delta / 100, None, reason, at))
        return entries

    def apply(self, state: ContactScoreState, event: ScoredEvent) -> list[Entry]:
        """Decay due up to `event.at`, then every matching behavior rule, within the caps.

        Events are expected in time order. One older than the state's clock (a late import) is
        counted against the current day's caps and never rewinds decay; rescore() orders by time.
        """
        if event.contact_id != state.contact_id:
            raise ValueError(f"event {event.id} is for contact {event.contact_id}, not {state.contact_id}")
        model = self._model(state)
        event_day = model.day(event.at)
        entries = self._decay(state, model, event_day)
        day = state.clock_day or event_day  # decay() set the clock; past event_day only for a late event
        caps = state.caps
        if caps is not None and caps.day != day:
            caps = state.caps = None
        at = event.at.astimezone(UTC)
        for index, rule, points in model.by_event.get(event.type, ()):
            if not rule.matches(event):
                continue
            if points < 0:
                state.penalty += points
                reason = f"{rule.describe(event)} {_signed(points)}"
                entries.append(Entry(state.contact_id, model.spec.name, rule.name, points / 100, event.id, reason, at))
                continue
            if rule.max_times and state.totals is not None and state.totals.get(index, 0) >= rule.max_times:
                continue
            item_key = (index, event.item_id)
            per_item = caps.per_item if caps is not None else None
            if rule.cap_per_item_per_day and per_item and per_item.get(item_key, 0) >= rule.cap_per_item_per_day:
                continue
            grant = points
            if model.daily_cap:
                grant = min(points, model.daily_cap - (caps.earned if caps is not None else 0))
                if grant <= 0:
                    continue
            if model.daily_cap or rule.cap_per_item_per_day:
                if caps is None:
                    caps = state.caps = DayCaps(day)
                caps.earned += grant
                if rule.cap_per_item_per_day:
                    if caps.per_item is None:
                        caps.per_item = {}
                    caps.per_item[item_key] = caps.per_item.get(item_key, 0) + 1
            if rule.max_times:
                if state.totals is None:
                    state.totals = {}
                state.totals[index] = state.totals.get(index, 0) + 1
            state.behavior += grant
            reason = f"{rule.describe(event)} {_signed(grant)}"
            if grant < points:
                reason += "（已达今日加分上限）"
            entries.append(Entry(state.contact_id, model.spec.name, rule.name, grant / 100, event.id, reason, at))
        if event.type not in NOT_ENGAGEMENT and (state.active_day is None or event_day > state.active_day):
            state.active_day = event_day
        return entries

    def decay(self, state: ContactScoreState, until: dt.datetime) -> list[Entry]:
        """Decay ticks for the local midnights after the state's clock up to `until`: at most one
        entry, their sum, dated at the last tick's midnight (see Entry.quiet_since).

        Idempotent: calling it again with the same or an earlier time adds nothing.
        """
        model = self._model(state)
        return self._decay(state, model, shared_local_day(model.tz, until))

    def _decay(self, state: ContactScoreState, model: _Model, target: int) -> list[Entry]:
        """`decay` up to the local day `target` (an ordinal in the model's time zone)."""
        if state.clock_day is None or target <= state.clock_day:
            if state.clock_day is None:
                state.clock_day = target
            return []
        entries: list[Entry] = []
        spec = model.spec
        if state.active_day is not None and model.keep < 1.0 and state.behavior > 0:
            start = max(state.clock_day + 1, state.active_day + spec.decay_after_days + 1)
            lost = 0
            last = start
            for day in range(start, target + 1):  # each day's tick rounds on what the day before left
                if state.behavior <= 0:
                    break
                tick = min(state.behavior, max(1, _round_half_up(state.behavior * (1.0 - model.keep))))
                state.behavior -= tick
                lost += tick
                last = day
            if lost:
                reason = f"连续{last - state.active_day}天无互动，行为分逐日衰减"
                entries.append(Entry(state.contact_id, spec.name, DECAY_RULE, -lost / 100, None, reason,
                                     model.midnight(last), state.active_day))
        state.clock_day = target
        if state.caps is not None and state.caps.day < target:
            state.caps = None  # yesterday's counters are never needed again
        return entries

    def rescore(
        self,
        contact_id: int,
        profile: Mapping[str, Any],
        events: Iterable[ScoredEvent],
        until: dt.datetime,
        *,
        profile_at: dt.datetime | None = None,
    ) -> tuple[ContactScoreState, list[Entry]]:
        """Replay a contact from scratch: profile entries (at `profile_at`, default the first event
        or `until`), then the events up to `until` in time order (ties keep their given order),
        then decay up to `until`. Deterministic: same inputs, same ledger."""
        state = self.new_state(contact_id, profile.get("region"))
        ordered = sorted((e for e in events if e.at <= until), key=lambda e: e.at)
        first = profile_at or (ordered[0].at if ordered else until)
        entries = self.profile_entries(state, profile, first)
        for event in ordered:
            entries += self.apply(state, event)
        entries += self.decay(state, until)
        return state, merge_spells(entries)


def merge_spells(entries: list[Entry]) -> list[Entry]:
    """`entries` with the decay entries of one quiet spell (contact, model, quiet_since) summed into
    one, in the place of the spell's first and with its last entry's reason and time: what the
    ledger holds after writing them one by one."""
    if sum(1 for e in entries if e.quiet_since is not None) < 2:
        return entries
    merged: list[Entry] = []
    spells: dict[tuple[int, str, int], int] = {}
    for entry in entries:
        if entry.quiet_since is None:
            merged.append(entry)
            continue
        key = (entry.contact_id, entry.model, entry.quiet_since)
        at = spells.get(key)
        if at is None:
            spells[key] = len(merged)
            merged.append(entry)
        else:
            first = merged[at]
            merged[at] = Entry(entry.contact_id, entry.model, entry.rule, round(first.points + entry.points, 2), None,
                               entry.reason, entry.at, entry.quiet_since)
    return merged


_DAY0 = dt.date(1970, 1, 1).toordinal() - 1  # stored day 0 means "none"; 1 is 1970-01-01


def _pack_day(day: int | None) -> int:
    return 0 if day is None else day - _DAY0


def _unpack_day(value: int) -> int | None:
    return None if value == 0 else value + _DAY0


_UNPACKED = (1 << 64) - 1  # in the packed column: this contact's totals are in the side dict


def pack_totals(totals: Mapping[int, int] | None) -> int:
    """`max_times` totals (rule index → times fired) in one 64-bit word: up to four (index, count)
    pairs of 16 bits, each (index + 1) << 8 | count, so an empty slot is 0 and no totals at all is 0.
    Returns _UNPACKED when they do not fit (more than four rules, an index past 254, a count past 255)."""
    if not totals:
        return 0
    if len(totals) > 4:
        return _UNPACKED
    word = 0
    for slot, (index, count) in enumerate(sorted(totals.items())):
        if not (0 <= index < 255 and 0 <= count < 256):
            return _UNPACKED
        word |= ((index + 1) << 8 | count) << (16 * slot)
    return word


def unpack_totals(word: int) -> dict[int, int] | None:
    """pack_totals, reversed (None for no totals, as ContactScoreState has it)."""
    if not word:
        return None
    totals: dict[int, int] = {}
    while word:
        pair = word & 0xFFFF
        if pair:
            totals[(pair >> 8) - 1] = pair & 0xFF
        word >>= 16
    return totals


class RowIndex:
    """Contact id → row of the ScoreBook's arrays: 4 bytes per id while the ids held are dense.

    Contact ids come from a sequence, so the contacts a book holds are spread over 1 … the largest
    id. An `array('I')` indexed by id (row + 1; 0 for none) costs 4 bytes per id up to the largest
    held, where a dict costs about 100 bytes per contact (its slot and two int objects): the array
    is used while the largest id is under DENSE_SPREAD times the number held (plus DENSE_FLOOR), a
    dict otherwise (a book holding a few contacts of large ids); the index moves back to the array
    once the ids held are dense enough again. Iteration is in id order in the array, in insertion
    order in the dict."""

    DENSE_SPREAD = 16
    DENSE_FLOOR = 1 << 16

    __slots__ = ("_dense", "_count", "_dict", "_next_check")

    def __init__(self) -> None:
        self._dense = array("I")
        self._count = 0
        self._dict: dict[int, int] | None = None
        self._next_check = 0  # as a dict: how many ids it holds when it next looks whether they are dense

    @property
    def dense(self) -> bool:
        return self._dict is None

    def _fits(self, largest: int, count: int, spread: int) -> bool:
        return largest < spread * count + self.DENSE_FLOOR

    def __len__(self) -> int:
        return self._count if self._dict is None else len(self._dict)

    def __contains__(self, contact_id: object) -> bool:
        if self._dict is not None:
            return contact_id in self._dict
        return type(contact_id) is int and 0 <= contact_id < len(self._dense) and self._dense[contact_id] != 0

    def get(self, contact_id: int, default: int | None = None) -> int | None:
        if self._dict is not None:
            return self._dict.get(contact_id, default)
        if 0 <= contact_id < len(self._dense):
            slot = self._dense[contact_id]
            if slot:
                return slot - 1
        return default

    def __getitem__(self, contact_id: int) -> int:
        row = self.get(contact_id)
        if row is None:
            raise KeyError(contact_id)
        return row

    def __setitem__(self, contact_id: int, row: int) -> None:
        if self._dict is not None:
            self._dict[contact_id] = row
            if len(self._dict) >= self._next_check:  # each time the count doubles past the last look
                self._next_check = 2 * len(self._dict)
                if min(self._dict) >= 0 and self._fits(max(self._dict), len(self._dict), self.DENSE_SPREAD // 2):
                    self._to_dense()  # dense enough again, with a margin against moving back and forth
            return
        size = len(self._dense)
        if contact_id >= size or contact_id < 0:
            if contact_id < 0 or not self._fits(contact_id, self._count + 1, self.DENSE_SPREAD):
                self._to_dict()
                self[contact_id] = row
                return
            grown = max(contact_id + 1, size + size // 4)  # geometric, within what the rule allows
            if not self._fits(grown - 1, self._count + 1, self.DENSE_SPREAD):
                grown = contact_id + 1
            self._dense.frombytes(bytes(4 * (grown - size)))
        if self._dense[contact_id] == 0:
            self._count += 1
        self._dense[contact_id] = row + 1

    def pop(self, contact_id: int) -> int:
        if self._dict is not None:
            return self._dict.pop(contact_id)
        row = self[contact_id]
        self._dense[contact_id] = 0
        self._count -= 1
        return row

    def __iter__(self) -> Iterator[int]:
        if self._dict is not None:
            return iter(self._dict)
        return (contact_id for contact_id, slot in enumerate(self._dense) if slot)

    def nbytes(self) -> int:
        """Memory the index takes (the array's buffer, or the dict with its int objects)."""
        if self._dict is None:
            return self._dense.buffer_info()[1] * self._dense.itemsize
        return sys.getsizeof(self._dict) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self._dict.items())

    def _to_dict(self) -> None:
        self._dict = {contact_id: slot - 1 for contact_id, slot in enumerate(self._dense) if slot}
        self._next_check = 2 * (len(self._dict) + 1)
        self._dense, self._count = array("I"), 0

    def _to_dense(self) -> None:
        held, self._dict = self._dict or {}, None
        self._dense = array("I", bytes(4 * (max(held, default=0) + 1)))
        for contact_id, row in held.items():
            self._dense[contact_id] = row + 1
        self._count = len(held)


class ScoreBook:
    """Scoring states of many contacts, packed into parallel typed arrays.

    Per contact: model index (1 byte), profile-rule mask (4), behavior cents (8), penalty cents (4),
    last-engagement day and clock day (2 each, days since 1970 — good until 2149) and the `max_times`
    totals (8, see `pack_totals`): 29 bytes, plus the id → row index (`RowIndex`: 4 bytes per id
    while the ids held are dense), against ~24 for a float in a dict id → score (plus the dict's
    own ~75 per entry). Profile points come from the mask. Totals that do not pack (more than four rules,
    or a count past 255) and today's cap counters live in side dicts, only for contacts that have
    them; `decay_all` drops counters of days that are over. `get` hands out a working
    ContactScoreState; `put` packs it back.
    """

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self._rows = RowIndex()
        self._free: list[int] = []  # rows of removed contacts, reused by the next new one
        self._model = array("B")
        self._mask = array("I")
        self._behavior = array("q")
        self._penalty = array("i")
        self._active = array("H")
        self._clock = array("H")
        self._packed_totals = array("Q")
        self._caps: dict[int, DayCaps] = {}
        self._totals: dict[int, dict[int, int]] = {}  # totals that do not pack

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, contact_id: object) -> bool:
        return contact_id in self._rows

    def __iter__(self) -> Iterator[int]:
        return iter(self._rows)

    def get(self, contact_id: int) -> ContactScoreState:
        """The contact's state (KeyError if the book does not hold it)."""
        row = self._rows[contact_id]
        model = self.scorer._model_at(self._model[row])
        mask = self._mask[row]
        return ContactScoreState(
            contact_id,
            model.spec.name,
            profile_mask=mask,
            profile=model.profile_cents(mask),
            behavior=self._behavior[row],
            penalty=self._penalty[row],
            active_day=_unpack_day(self._active[row]),
            clock_day=_unpack_day(self._clock[row]),
            caps=self._caps.get(contact_id),
            totals=unpack_totals(self._packed_totals[row]) if self._packed_totals[row] != _UNPACKED else self._totals.get(contact_id),
        )

    def put(self, state: ContactScoreState) -> None:
        """Store (or replace) a contact's state."""
        cid = state.contact_id
        row = self._rows.get(cid)
        values = (
            self.scorer._model(state).index,
            state.profile_mask,
            state.behavior,
            state.penalty,
            _pack_day(state.active_day),
            _pack_day(state.clock_day),
            pack_totals(state.totals),
        )
        columns = (self._model, self._mask, self._behavior, self._penalty, self._active, self._clock, self._packed_totals)
        if row is None and not self._free:
            self._rows[cid] = len(self._model)
            for column, value in zip(columns, values):
                column.append(value)
        else:
            if row is None:
                row = self._rows[cid] = self._free.pop()
            for column, value in zip(columns, values):
                column[row] = value
        self._side(self._caps, cid, state.caps)
        self._side(self._totals, cid, state.totals if values[-1] == _UNPACKED else None)

    @staticmethod
    def _side(table: dict[int, Any], contact_id: int, value: Any) -> None:
        if value is None:
            table.pop(contact_id, None)
        else:
            table[contact_id] = value

    def remove(self, contact_id: int) -> None:
        """Forget a contact (its row is reused by the next new contact)."""
        self._free.append(self._rows.pop(contact_id))
        self._caps.pop(contact_id, None)
        self._totals.pop(contact_id, None)

    def score(self, contact_id: int) -> float:
        """The contact's current score."""
        row = self._rows[contact_id]
        profile = self.scorer._model_at(self._model[row]).profile_cents(self._mask[row])
        return (profile + self._behavior[row] + self._penalty[row]) / 100

    def scores(self) -> Iterator[tuple[int, float]]:
        """(contact id, score) for every contact held."""
        for contact_id in self._rows:
            yield contact_id, self.score(contact_id)

    def add(self, contact_id: int, profile: Mapping[str, Any], at: dt.datetime) -> list[Entry]:
        """Start scoring a new contact: its model from `profile["region"]`, its profile entries."""
        if contact_id in self._rows:
            raise ValueError(f"contact {contact_id} is already in the book")
        state = self.scorer.new_state(contact_id, profile.get("region"))
        entries = self.scorer.profile_entries(state, profile, at)
        self.put(state)
        return entries

    def update_profile(self, contact_id: int, profile: Mapping[str, Any], at: dt.datetime) -> list[Entry]:
        """Profile delta entries (Scorer.profile_entries) for a contact the book holds."""
        state = self.get(contact_id)
        entries = self.scorer.profile_entries(state, profile, at)
        self.put(state)
        return entries

    def apply(self, event: ScoredEvent) -> list[Entry]:
        """Scorer.apply for the event's contact, which the book must hold."""
        state = self.get(event.contact_id)
        entries = self.scorer.apply(state, event)
        self.put(state)
        return entries

    def decay(self, contact_id: int, until: dt.datetime) -> list[Entry]:
        """Scorer.decay for one contact."""
        state = self.get(contact_id)
        entries = self.scorer.decay(state, until)
        self.put(state)
        return entries

    def decay_all(self, until: dt.datetime) -> list[Entry]:
        """Scorer.decay for every contact (the nightly run); frees cap counters of past days."""
        entries: list[Entry] = []
        for contact_id in list(self._rows):
            entries += self.decay(contact_id, until)
        return entries
