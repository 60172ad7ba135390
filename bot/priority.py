"""CPU priority for work that can wait: the digests' chart process, the nightly jobs' reads, and
background loops on the event loop's thread.

On one busy core the server's event loop (link opens, callbacks) shares the CPU with whatever else of
the process is runnable: a thread running a long SQLite read releases the GIL while SQLite works, and
the kernel then gives it an equal share of the core, so a link open answered meanwhile takes about
twice as long. Work lowered here runs when nothing else wants the core (Linux's SCHED_IDLE), and
still gets a sliver of it under saturation, so it is slowed but never starved.

Only what holds no lock others wait for is lowered. A write transaction at low priority would keep
SQLite's write lock while the link path's writers, queued behind it, leave the CPU to the very
requests that wait for them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

T = TypeVar("T")

NICEST = 19  # where SCHED_IDLE is missing: the lowest nice value


def background_priority(pid: int = 0) -> str | None:
    """Lower process `pid` (on Linux also a thread id; 0: the calling thread) to background priority:
    SCHED_IDLE where the system has it, else the lowest nice value. Returns which was set, or None
    when neither could be (the work then runs at normal priority)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, pid, NICEST)
        return "nice"
    except OSError:
        return None


async def in_turns(items: Iterable[T], every: int = 100) -> AsyncIterator[T]:
    """`items`, letting the event loop run what is ready after every `every` of them. For background
    loops on the event loop's thread (a digest for each of 2,000 reps, the rows of their tasks) that
    would otherwise hold it, and the link opens and callbacks waiting on it, for 50–100 ms at a time."""
    for n, item in enumerate(items, 1):
        yield item
        if n % every == 0:
            await asyncio.sleep(0)
