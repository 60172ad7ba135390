"""Time as a dependency: handlers and jobs ask the clock, so tests control time instead of waiting."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


class SystemClock:
    """The real clock (aware UTC)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)


class FrozenClock:
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self._now = start

    def now(self) -> dt.datetime:
        return self._now

    def advance(self, **delta: float) -> dt.datetime:
        self._now += dt.timedelta(**delta)
        return self._now

    def set(self, when: dt.datetime) -> None:
        self._now = when


async def sleep_unless(event: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` of real time, or less if `event` is set meanwhile (a stop, a wake-up); returns
    whether it is set. The loops of the background workers, the checkpointer, the wake-up connections
    and the supervisor sleep this way."""
    if seconds > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
