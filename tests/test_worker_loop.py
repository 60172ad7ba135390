"""The background workers' loop (bot.worker.PollingWorker.run): when a pass starts after work arrives.

`settle_s` is the least time between the end of a pass that found work (or failed) and the start of
the next: work that arrives during a busy spell waits for it and joins the next pass together, while
work that wakes a worker with nothing to do for longer goes at once. Times here are lower bounds on waits the loop must make and
generous upper bounds on waits it must not (the settle time is long against scheduling noise).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.worker import PollingWorker

SETTLE_S = 0.4


class Counter(PollingWorker):
    """Handles whatever `pending` holds; records when each pass started and what it took."""

    name = "test-counter"
    settle_s = SETTLE_S
    poll_s = 30.0  # only a wake starts a pass here

    def __init__(self) -> None:
        super().__init__(runtime=None)
        self.pending: list[float] = []  # the loop time each unit of work arrived
        self.passes: list[tuple[float, list[float]]] = []  # (started, arrivals of what it handled)

    def arrive(self) -> None:
        self.pending.append(asyncio.get_running_loop().time())
        self.wake()

    async def drain(self) -> int:
        taken, self.pending = self.pending, []
        self.passes.append((asyncio.get_running_loop().time(), taken))
        return len(taken)


async def _running(worker: Counter) -> asyncio.Task[None]:
    task = asyncio.ensure_future(worker.run())
    while not worker.passes:  # the first pass, at start, finds nothing
        await asyncio.sleep(0.01)
    return task


async def _stop(worker: Counter, task: asyncio.Task[None]) -> None:
    worker.request_stop()
    await asyncio.wait_for(task, 5)


async def test_work_after_a_quiet_spell_goes_at_once() -> None:
    worker = Counter()
    task = await _running(worker)
    try:
        await asyncio.sleep(SETTLE_S * 1.5)  # idle for longer than the settling time
        worker.arrive()
        await asyncio.sleep(SETTLE_S / 2)
        assert [len(taken) for _, taken in worker.passes] == [0, 1], "handled before the settling time ran out"
        started, (arrived,) = worker.passes[1]
        assert started - arrived < SETTLE_S / 2
    finally:
        await _stop(worker, task)


async def test_work_arriving_right_after_a_pass_waits_and_joins_one_pass() -> None:
    worker = Counter()
    task = await _running(worker)
    try:
        await asyncio.sleep(SETTLE_S * 1.5)
        worker.arrive()  # after a quiet spell: at once
        await asyncio.sleep(0.05)
        for _ in range(3):  # a stream right after that pass: one pass for all, after the settling time
            worker.arrive()
            await asyncio.sleep(0.02)
        await asyncio.sleep(SETTLE_S * 1.5)
        sizes = [len(taken) for _, taken in worker.passes if taken]
        assert sizes == [1, 3]
        first, second = [started for started, taken in worker.passes if taken]
        assert second - first >= SETTLE_S, "the second pass waited out the settling time after the first"
    finally:
        await _stop(worker, task)


async def test_a_stop_cuts_the_settling_short() -> None:
    worker = Counter()
    worker.settle_s = 30.0
    task = await _running(worker)
    worker.arrive()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await _stop(worker, task)
    assert loop.time() - asked < 5


async def test_a_pass_that_found_nothing_does_not_restart_the_settling_time() -> None:
    worker = Counter()
    task = await _running(worker)
    try:
        await asyncio.sleep(SETTLE_S * 1.5)
        worker.arrive()  # a pass that finds work, then, a settling time later, one that finds nothing
        while len(worker.passes) < 3:
            await asyncio.sleep(0.01)
        assert [len(taken) for _, taken in worker.passes] == [0, 1, 0]
        worker.arrive()  # just after the empty pass, but a settling time after the busy one
        await asyncio.sleep(SETTLE_S / 2)
        assert [len(taken) for _, taken in worker.passes] == [0, 1, 0, 1]
    finally:
        await _stop(worker, task)


class LooksThenWorks(Counter):
    """A pass that looks for work first and then spends a while on other things (the tracker's pass
    after its read: the write transaction, the hooks)."""

    async def drain(self) -> int:
        handled = await super().drain()
        await asyncio.sleep(0.1)
        return handled


async def test_work_arriving_after_a_pass_looked_wakes_the_next_pass() -> None:
    worker = LooksThenWorks()
    task = await _running(worker)
    try:
        await asyncio.sleep(SETTLE_S * 1.5)  # quiet, then a pass begins on its own poll: force one
        worker.wake()
        while len(worker.passes) < 2:
            await asyncio.sleep(0.005)
        worker.arrive()  # the pass has looked and found nothing; it is still running
        await asyncio.sleep(0.1 + SETTLE_S)
        assert sum(len(taken) for _, taken in worker.passes) == 1, "handled by the next pass, not after poll_s"
    finally:
        await _stop(worker, task)


class Failing(Counter):
    """Every pass fails, as while the database is down."""

    async def drain(self) -> int:
        await super().drain()
        raise RuntimeError("database is down")


async def test_a_failing_pass_is_not_retried_on_every_wake_up(caplog: pytest.LogCaptureFixture) -> None:
    worker = Failing()
    caplog.set_level(logging.CRITICAL, logger="beacon.test-counter")  # the failures' tracebacks are expected
    task = asyncio.ensure_future(worker.run())
    try:
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        until = loop.time() + SETTLE_S * 2.5
        while loop.time() < until:  # work keeps arriving, each unit waking the worker
            worker.arrive()
            await asyncio.sleep(0.005)
        assert 2 <= len(worker.passes) <= 4, "failed passes are spaced by the settling time"
    finally:
        await _stop(worker, task)
