"""The tracker replays a contact's score history before its write transaction, not inside it."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from sqlalchemy import event, func, select

from bot.db import READ_ONLY
from bot.models import Contact, ScoreEntry
from bot.scheduler import run_job
from bot.scoring.jobs import decay_scores
from bot.scoring.service import ScoringService
from tests.test_scoring_live import contact_json, new_contact, post_event, settle


class LedgerReads:
    """The score-history reads (the ledger aggregate a replay starts from), by whether they ran in a
    read-only session or in a write transaction."""

    def __init__(self) -> None:
        self.read_only = 0
        self.in_write = 0

    def __call__(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM score_ledger" in statement and "GROUP BY score_ledger.contact_id" in statement:
            if conn.get_execution_options().get(READ_ONLY):
                self.read_only += 1
            else:
                self.in_write += 1


@pytest.fixture
def ledger_reads(beacon: Any) -> Iterator[LedgerReads]:
    reads = LedgerReads()
    engine = beacon.rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", reads)
    yield reads
    event.remove(engine, "before_cursor_execute", reads)


async def stored(beacon: Any, contact_id: int) -> tuple[float, float]:
    """(contacts.score, the ledger's sum) as committed."""
    async with beacon.rt.read_sessions() as session:
        score = await session.scalar(select(Contact.score).where(Contact.id == contact_id))
        ledger = await session.scalar(select(func.sum(ScoreEntry.points)).where(ScoreEntry.contact_id == contact_id))
    return round(score, 2), round(ledger, 2)


def warmed(beacon: Any) -> float:
    return beacon.rt.metrics.tracker_warmed._value.get()


async def test_a_cold_contact_is_replayed_outside_the_write_transaction(beacon: Any, ledger_reads: LedgerReads) -> None:
    cid = await new_contact(beacon, "wmWarm", company="华东精密制造", title="采购总监")
    for kind in ("webinar_attended", "call", "message"):
        await post_event(beacon, "wmWarm", kind)
    await settle(beacon)
    before, _ = await stored(beacon, cid)
    assert before > 0
    # This process forgets every state, as when it takes the tracker over from another process.
    beacon.rt.services["scoring"].forget()
    ledger_reads.read_only = ledger_reads.in_write = 0
    start = warmed(beacon)

    await post_event(beacon, "wmWarm", "demo_request")
    await settle(beacon)

    assert ledger_reads.read_only >= 1 and ledger_reads.in_write == 0
    assert warmed(beacon) == start + 1
    score, ledger = await stored(beacon, cid)
    assert score == ledger > before  # the new event scored on top of the replayed history
    assert (await contact_json(beacon, "wmWarm"))["score"] == score


async def test_a_score_changed_elsewhere_is_replayed_outside_the_write_transaction(beacon: Any, ledger_reads: LedgerReads) -> None:
    cid = await new_contact(beacon, "wmElse", company="华南电子")
    await post_event(beacon, "wmElse", "webinar_attended")
    await post_event(beacon, "wmElse", "demo_request")
    await settle(beacon)
    service = beacon.rt.services["scoring"]
    assert cid in service.book
    # Forty quiet days later another process runs the nightly decay: its own book, not this one's.
    beacon.clock.advance(days=40)
    beacon.rt.services["scoring"] = ScoringService(beacon.rt.settings.scoring)
    try:
        assert await run_job(beacon.rt, "decay-scores", decay_scores, "decay-scores:elsewhere")
    finally:
        beacon.rt.services["scoring"] = service
    decayed, _ = await stored(beacon, cid)
    assert decayed != service.score(cid)  # this process's state is out of date
    ledger_reads.read_only = ledger_reads.in_write = 0

    await post_event(beacon, "wmElse", "call")
    await settle(beacon)

    assert ledger_reads.read_only >= 1 and ledger_reads.in_write == 0
    score, ledger = await stored(beacon, cid)
    assert score == ledger > decayed  # replayed with the ticks, the call scored on top


async def test_a_pass_with_nothing_to_do_takes_no_write_transaction(beacon: Any) -> None:
    """The tracker's read before its write transaction also tells it whether any event waits: with
    none, no transaction (on SQLite, no write lock) is taken for nothing."""
    await new_contact(beacon, "wmIdle")
    await post_event(beacon, "wmIdle", "webinar_attended")
    await settle(beacon)
    writes: list[str] = []

    def outside_read_only(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not conn.get_execution_options().get(READ_ONLY) and "leases" not in statement:
            writes.append(statement)

    engine = beacon.rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", outside_read_only)
    try:
        assert await beacon.rt.tracker.drain() == 0
        assert writes == []
        await post_event(beacon, "wmIdle", "demo_request")  # with an event waiting, the pass writes
        await settle(beacon)
    finally:
        event.remove(engine, "before_cursor_execute", outside_read_only)
    assert any("UPDATE events SET processed" in s for s in writes)
