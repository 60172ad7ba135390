"""The inbox worker shares a transaction between the callbacks it claimed (issue 9): fewer commits, and
no savepoints until a handler fails, while each callback's effects and its "done" still commit together,
a failing handler loses only its own work, and a handler that commits part-way runs alone, in order."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select

from bot.models import Event, InboxItem, OutboxItem
from bot.router import Command, Router
from tests.test_callback import Poster, text_xml


@pytest.fixture
def poster(beacon: Any) -> Poster:
    return Poster(beacon.client, beacon.clock.now().timestamp())


class Commits:
    """Counts the database transactions committed on the app's engine (savepoint releases are not),
    and the savepoints begun."""

    def __init__(self, engine: Any) -> None:
        self.n = 0
        self.savepoints = 0
        self.engine = engine.sync_engine
        event.listen(self.engine, "commit", self._commit)
        event.listen(self.engine, "before_cursor_execute", self._savepoint)

    def _commit(self, _conn: Any) -> None:
        self.n += 1

    def _savepoint(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.savepoints += statement.startswith("SAVEPOINT")

    def close(self) -> None:
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine, "before_cursor_execute", self._savepoint)


async def rows(rt: Any) -> tuple[list[InboxItem], list[OutboxItem]]:
    async with rt.sessions() as session:
        inbox = list((await session.scalars(select(InboxItem).order_by(InboxItem.id))).all())
        outbox = list((await session.scalars(select(OutboxItem).order_by(OutboxItem.id))).all())
    return inbox, outbox


def text(item: OutboxItem) -> str:
    return item.payload["text"]["content"]


def origins(outbox: list[OutboxItem]) -> list[int]:
    """The inbox row each queued reply came from (its idempotency key starts with inbox:<id>)."""
    return [int(item.idempotency_key.split(":")[1]) for item in outbox]


async def test_a_claimed_batch_commits_once(beacon: Any, poster: Poster) -> None:
    for n in range(6):
        assert (await poster.post(text_xml("rep1", "帮助", f"61{n:02d}"))).status == 200
    beacon.rt.inbox.budget_s = 60.0  # one shared transaction, however slow this machine is today
    commits = Commits(beacon.rt.engine)
    try:
        assert await beacon.rt.inbox.drain() == 6
    finally:
        commits.close()
    # the claim, all six callbacks with their "done" (one transaction each before), the claim that finds none
    assert commits.n == 3
    assert commits.savepoints == 0  # a savepoint each made the worker three times slower
    inbox, outbox = await rows(beacon.rt)
    assert [(i.status, i.attempts, i.locked_until) for i in inbox] == [("done", 1, None)] * 6
    assert all(i.processed_at is not None for i in inbox)
    assert origins(outbox) == [i.id for i in inbox]  # every reply queued, in the callbacks' order
    metrics = await (await beacon.client.get("/metrics")).text()
    assert 'beacon_callbacks_processed_total{kind="text"} 6.0' in metrics


async def test_the_time_budget_splits_a_batch_into_transactions(beacon: Any, poster: Poster) -> None:
    for n in range(4):
        await poster.post(text_xml("rep1", "帮助", f"62{n:02d}"))
    beacon.rt.inbox.budget_s = 0.0  # every callback over budget: one shared transaction each
    commits = Commits(beacon.rt.engine)
    try:
        assert await beacon.rt.inbox.drain() == 4
    finally:
        commits.close()
    assert commits.n == 1 + 4 + 1
    inbox, outbox = await rows(beacon.rt)
    assert {i.status for i in inbox} == {"done"} and origins(outbox) == [i.id for i in inbox]


async def test_a_failing_handler_loses_only_its_own_work(beacon: Any, poster: Poster) -> None:
    boom = Router("boom")

    calls: list[str] = []

    @boom.message(Command("boom"))
    async def explode(msg: Any, ctx: Any) -> None:
        calls.append(msg.get("MsgId"))
        ctx.send_text("rep1", "half done")  # queued in the shared transaction, rolled back with it
        raise RuntimeError("handler bug")

    beacon.rt.dispatcher.routers.insert(0, boom)
    for content, msg_id in (("帮助", "6301"), ("boom", "6302"), ("帮助", "6303"), ("帮助", "6304")):
        await poster.post(text_xml("rep1", content, msg_id))
    beacon.rt.inbox.budget_s = 60.0
    commits = Commits(beacon.rt.engine)
    try:
        assert await beacon.rt.inbox.drain() == 4
    finally:
        commits.close()
    # The transaction is rolled back at the failure and done again without the failing handler: the
    # claim, the shared transaction, the failure's attempt count, the empty claim. No savepoints.
    assert commits.savepoints == 0 and commits.n == 4
    assert calls == ["6302"]  # the failing handler ran once
    inbox, outbox = await rows(beacon.rt)
    assert [(i.status, i.attempts) for i in inbox] == [("done", 1), ("pending", 1), ("done", 1), ("done", 1)]
    assert "handler bug" in inbox[1].last_error and inbox[1].next_attempt_at > beacon.clock.now()
    assert origins(outbox) == [inbox[0].id, inbox[2].id, inbox[3].id]  # one reply each, none twice
    assert [text(item) for item in outbox] == [text(outbox[0])] * 3 and "half done" not in text(outbox[0])


@pytest.mark.parametrize("swallow", [False, True], ids=["commits", "commits-and-swallows-the-refusal"])
async def test_a_handler_that_commits_part_way_runs_alone_in_order(beacon: Any, poster: Poster, swallow: bool) -> None:
    """kf and contact changes commit before they call WeCom; such a handler cannot share the batch's
    transaction. It is refused there (even if it swallows the refusal), and runs on its own after the
    callbacks before it have committed and before those after it."""
    calls: list[tuple[str, str, bool]] = []
    own = Router("own")

    @own.message(Command("own"))
    async def commits(msg: Any, ctx: Any) -> None:
        try:
            await ctx.session.commit()  # as before a WeCom call
            committed = True
        except Exception:
            if not swallow:
                raise
            committed = False
        calls.append(("own", msg.get("MsgId"), committed))
        ctx.send_text("rep1", "own reply")

    @own.message(Command("note"))
    async def note(msg: Any, ctx: Any) -> None:
        calls.append(("note", msg.get("MsgId"), False))
        ctx.send_text("rep1", "note reply")

    beacon.rt.dispatcher.routers.insert(0, own)
    for content, msg_id in (("note", "6401"), ("own", "6402"), ("note", "6403")):
        await poster.post(text_xml("rep1", content, msg_id))
    beacon.rt.inbox.budget_s = 60.0
    assert await beacon.rt.inbox.drain() == 3
    # The refused attempt (only a swallowing handler gets past its commit) leaves nothing behind. It was
    # made without savepoints, so the callback before it, rolled back with it, runs again.
    refused = [("own", "6402", False)] if swallow else []
    expected = [("note", "6401", False), *refused, ("note", "6401", False), ("own", "6402", True), ("note", "6403", False)]
    assert calls == expected
    inbox, outbox = await rows(beacon.rt)
    assert [(i.status, i.attempts) for i in inbox] == [("done", 1)] * 3
    assert origins(outbox) == [i.id for i in inbox]  # one reply each, in order
    assert [text(item) for item in outbox] == ["note reply", "own reply", "note reply"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the write gate is SQLite's
async def test_a_shared_transaction_makes_way_for_a_queued_writer(beacon: Any, poster: Poster) -> None:
    """On SQLite the shared transaction holds the one write lock; when the hot path's group commit (a
    link open, a callback) queues for it, the batch commits after the callback in hand instead of
    running out its time budget, and goes on in a new transaction."""
    import asyncio

    seen: list[tuple[str, bool]] = []
    writes: list[asyncio.Task[None]] = []
    own = Router("queued")

    @own.message(Command("note"))
    async def note(msg: Any, ctx: Any) -> None:
        if not writes:  # the first one: an event is recorded meanwhile, through the group commit
            now = ctx.clock.now()
            writes.append(asyncio.ensure_future(beacon.rt.events.contact_event("call", 1, occurred_at=now, received_at=now)))
            for _ in range(500):  # until it waits for the lock this batch holds
                if beacon.rt.inbox.gate.contended:
                    break
                await asyncio.sleep(0.01)
        seen.append((msg.get("MsgId"), writes[0].done()))
        ctx.send_text("rep1", "noted")

    beacon.rt.dispatcher.routers.insert(0, own)
    async with beacon.rt.sessions() as session, session.begin():
        from bot.models import Contact

        session.add(Contact(id=1, external_userid="wmQueued", created_at=beacon.clock.now(), updated_at=beacon.clock.now()))
    for msg_id in ("6501", "6502", "6503"):
        await poster.post(text_xml("rep1", "note", msg_id))
    beacon.rt.inbox.budget_s = 60.0
    commits = Commits(beacon.rt.engine)
    try:
        assert await beacon.rt.inbox.drain() == 3
    finally:
        commits.close()
    assert seen[0] == ("6501", False)  # the write was queued behind the batch's transaction
    # ... which committed after that callback, not at the end of its budget: the claim, the first
    # callback, the others (in one or two transactions, by when the write went), the empty claim
    assert commits.n in (4, 5)
    await writes[0]
    async with beacon.rt.read_sessions() as reader:
        assert await reader.scalar(select(func.count()).select_from(Event).where(Event.type == "call")) == 1
    inbox, outbox = await rows(beacon.rt)
    assert {i.status for i in inbox} == {"done"} and origins(outbox) == [i.id for i in inbox]


async def test_a_handler_that_swallows_a_database_error_fails_alone(beacon: Any, poster: Poster) -> None:
    """Without savepoints, a database error a handler catches leaves the shared transaction failed: that
    callback counts as failed, and the others of the batch are done and committed."""
    from sqlalchemy.exc import IntegrityError

    from bot.models import Contact

    swallow = Router("swallow")

    @swallow.message(Command("dup"))
    async def duplicate(msg: Any, ctx: Any) -> None:
        ctx.session.add(Contact(id=1, external_userid="wmDup", created_at=ctx.clock.now(), updated_at=ctx.clock.now()))
        try:
            await ctx.session.flush()
        except IntegrityError:
            pass  # a handler's own business, but the transaction is gone

    beacon.rt.dispatcher.routers.insert(0, swallow)
    async with beacon.rt.sessions() as session, session.begin():
        session.add(Contact(id=1, external_userid="wmFirst", created_at=beacon.clock.now(), updated_at=beacon.clock.now()))
    for content, msg_id in (("帮助", "6601"), ("dup", "6602"), ("帮助", "6603")):
        await poster.post(text_xml("rep1", content, msg_id))
    beacon.rt.inbox.budget_s = 60.0
    assert await beacon.rt.inbox.drain() == 3
    inbox, outbox = await rows(beacon.rt)
    assert [(i.status, i.attempts) for i in inbox] == [("done", 1), ("pending", 1), ("done", 1)]
    assert "caught a database error" in inbox[1].last_error
    assert origins(outbox) == [inbox[0].id, inbox[2].id]



async def gave_way_s(beacon: Any) -> float:
    """How long the inbox worker has left the core to the edge, from /metrics."""
    metrics = await (await beacon.client.get("/metrics")).text()
    return float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("beacon_inbox_gave_way_seconds_total")))


async def test_the_worker_gives_way_while_callbacks_stream_in(beacon: Any, poster: Poster) -> None:
    """Acknowledging comes first: while callbacks stream in, the worker gives way after each transaction
    (bot.edge) and the edge keeps answering; once they
    stop, it catches up with all of them."""
    import asyncio

    rt = beacon.rt
    rt.inbox.budget_s = 0.005  # short transactions: many chances to give way
    for n in range(30):
        assert (await poster.post(text_xml("rep1", "帮助", f"71{n:03d}"))).status == 200
    streaming = True
    sent = 30

    async def edge() -> None:
        nonlocal sent
        while streaming:
            sent += 1
            assert (await poster.post(text_xml("rep1", "帮助", f"72{sent:05d}"))).status == 200

    worker = asyncio.create_task(rt.inbox.run())
    posters = [asyncio.create_task(edge()) for _ in range(8)]
    await asyncio.sleep(1.0)
    streaming = False
    await asyncio.gather(*posters)
    during = await gave_way_s(beacon)
    try:
        for _ in range(200):
            inbox, _ = await rows(rt)
            if all(i.status == "done" for i in inbox):
                break
            await asyncio.sleep(0.05)
    finally:
        rt.inbox.request_stop()
        await worker
    inbox, outbox = await rows(rt)
    assert len(inbox) == sent and all(i.status == "done" for i in inbox)  # none lost, all processed after the burst
    assert origins(outbox) == [i.id for i in inbox]
    assert during > 0, "the worker never gave way while callbacks streamed in"
    assert await gave_way_s(beacon) == during  # with nothing arriving, it caught up without waiting


async def test_a_trickle_of_callbacks_never_makes_the_worker_wait(beacon: Any, poster: Poster) -> None:
    import asyncio

    rt = beacon.rt
    worker = asyncio.create_task(rt.inbox.run())
    try:
        for n in range(15):
            assert (await poster.post(text_xml("rep1", "帮助", f"73{n:03d}"))).status == 200
            await asyncio.sleep(0.03)  # about 30 a second
        for _ in range(100):
            inbox, _ = await rows(rt)
            if len(inbox) == 15 and all(i.status == "done" for i in inbox):
                break
            await asyncio.sleep(0.05)
    finally:
        rt.inbox.request_stop()
        await worker
    assert [i.status for i in (await rows(rt))[0]] == ["done"] * 15
    # Barely at all: now and then a callback arrives while the worker's transaction ends, and it waits
    # for that one answer (a few ms; on a loaded machine with PostgreSQL this was 4 ms once).
    assert await gave_way_s(beacon) < 0.05
