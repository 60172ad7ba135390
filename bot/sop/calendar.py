"""The business calendar SOP steps keep to: workdays, holidays, the working day, one time zone.

All inputs and outputs are aware datetimes; local arithmetic happens in `[scheduler] timezone`, so
"day 3 at 10:00" is 10:00 local on the third day even across a DST change (wall-clock days).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from bot.config import Settings

MAX_SEARCH_DAYS = 400  # a calendar with no business day in a year is a configuration error


def _time(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


def local_datetime(day: dt.date, at: dt.time, tz: ZoneInfo) -> dt.datetime:
    """`day` at wall-clock `at` in `tz`, as aware UTC. A time skipped by a DST change (02:30 on the
    spring-forward night) lands on the same instant as its pre-change reading (03:30 new time)."""
    return dt.datetime.combine(day, at, tzinfo=tz).astimezone(dt.timezone.utc)


def day_bounds(day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a local day in UTC; 23 or 25 hours long on DST-change days."""
    return local_datetime(day, dt.time(0), tz), local_datetime(day + dt.timedelta(days=1), dt.time(0), tz)


@dataclass(frozen=True)
class BusinessCalendar:
    tz: ZoneInfo
    workdays: frozenset[int]
    holidays: frozenset[dt.date]
    extra_workdays: frozenset[dt.date]
    day_start: dt.time
    day_end: dt.time

    @classmethod
    def from_settings(cls, settings: Settings) -> "BusinessCalendar":
        sop = settings.sop
        return cls(
            tz=ZoneInfo(settings.scheduler.timezone),
            workdays=frozenset(sop.workdays),
            holidays=frozenset(dt.date.fromisoformat(d) for d in sop.holidays),
            extra_workdays=frozenset(dt.date.fromisoformat(d) for d in sop.extra_workdays),
            day_start=_time(sop.day_start),
            day_end=_time(sop.day_end),
        )

    def local(self, when: dt.datetime) -> dt.datetime:
        return when.astimezone(self.tz)

    def local_day(self, when: dt.datetime) -> dt.date:
        return self.local(when).date()

    def is_business_day(self, day: dt.date) -> bool:
        if day in self.extra_workdays:
            return True
        return day.isoweekday() in self.workdays and day not in self.holidays

    def is_business_time(self, when: dt.datetime) -> bool:
        """On a business day, within [day_start, day_end) local time."""
        local = self.local(when)
        return self.is_business_day(local.date()) and self.day_start <= local.time() < self.day_end

    def next_business_day(self, day: dt.date) -> dt.date:
        """The first business day after `day`."""
        for offset in range(1, MAX_SEARCH_DAYS):
            candidate = day + dt.timedelta(days=offset)
            if self.is_business_day(candidate):
                return candidate
        raise ValueError("no business day within a year: check [sop] workdays and holidays")

    def next_business_time(self, when: dt.datetime) -> dt.datetime:
        """`when` itself if it is business time, else the next business morning (day_start)."""
        if self.is_business_time(when):
            return when
        local = self.local(when)
        if self.is_business_day(local.date()) and local.time() < self.day_start:
            return local_datetime(local.date(), self.day_start, self.tz)
        return local_datetime(self.next_business_day(local.date()), self.day_start, self.tz)

    def step_due(self, started: dt.datetime, day: int, at: str | None) -> dt.datetime:
        """When a step `day` days after `started` (at local `at`, else the enrollment's time of day)
        is due, moved to business time. Always counted from the start, so moves never accumulate."""
        local = self.local(started)
        target_day = local.date() + dt.timedelta(days=day)
        if at is None:
            if day == 0:
                return self.next_business_time(started)
            wall = local.time().replace(tzinfo=None)
        else:
            wall = _time(at)
        return self.next_business_time(local_datetime(target_day, wall, self.tz))
