"""The time frame of a digest: its local day, the UTC bounds of the day it reports on, and the instant
it is "as of" (the configured send time), so that the numbers do not depend on when it really ran.

`day` is the digest's own date (the run key's day). The reps' to-do list covers `day` itself; the
managers' digest reports on the day before (`report_day`), in `[scheduler] timezone`. Local days are
23 or 25 hours long on DST-change days.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from bot.config import Settings
from bot.sop.calendar import day_bounds, local_datetime

WEEKDAYS = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
MARKDOWN_BYTES = 2048


@dataclass(frozen=True)
class DigestWindow:
    kind: str
    day: dt.date
    tz: ZoneInfo
    start: dt.datetime  # UTC bounds of the day covered (today for reps, yesterday for managers)
    end: dt.datetime
    as_of: dt.datetime  # the configured send time on `day`

    @property
    def report_day(self) -> dt.date:
        return self.start.astimezone(self.tz).date()


def window_for(kind: str, day: dt.date, settings: Settings) -> DigestWindow:
    tz = ZoneInfo(settings.scheduler.timezone)
    at = settings.digest.reps_at if kind == "reps" else settings.digest.managers_at
    hour, minute = (int(part) for part in at.split(":"))
    covered = day if kind == "reps" else day - dt.timedelta(days=1)
    start, end = day_bounds(covered, tz)
    return DigestWindow(kind, day, tz, start, end, local_datetime(day, dt.time(hour, minute), tz))


def today(settings: Settings, now: dt.datetime) -> dt.date:
    return now.astimezone(ZoneInfo(settings.scheduler.timezone)).date()


def weekday_label(day: dt.date) -> str:
    return WEEKDAYS[day.weekday()]


def md_text(value: str) -> str:
    """Text safe inside WeCom markdown link labels and lines (brackets would end a link early)."""
    return (value or "").replace("[", "【").replace("]", "】").replace("\n", " ").replace("<", "＜").replace(">", "＞")


def split_markdown(text: str, limit: int = MARKDOWN_BYTES) -> list[str]:
    """Split at line boundaries into messages of at most `limit` UTF-8 bytes (WeCom's markdown
    limit); a single overlong line is cut."""
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.split("\n"):
        raw = len(line.encode())
        if raw > limit:
            line = line.encode()[: limit - 3].decode("utf-8", "ignore") + "…"
            raw = len(line.encode())
        if current and size + 1 + raw > limit:
            parts.append("\n".join(current))
            current, size = [], 0
        size += raw + (1 if current else 0)
        current.append(line)
    if current:
        parts.append("\n".join(current))
    return parts
