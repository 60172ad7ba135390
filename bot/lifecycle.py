"""Lead stages and what crossing them sets off: owner assignment, follow-up task, alert, CRM webhook,
WeCom tag mirroring. Also payments (customer) and dormancy (沉睡) with urgent reactivation.

Stage moves by score go forward only (bot/scoring/stages.py); manual moves by a rep carry a reason.
Every move is a row in stage_history.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import Chunks
from bot.models import Alert, Contact, Event, Rep, StageChange, Task
from bot.scoring.engine import NOT_ENGAGEMENT
from bot.scoring.stages import STAGES, stage_for_score, temperature
from bot.tracker_batch import BATCH_KEY
from bot.tracking import add_event

if TYPE_CHECKING:
    from bot.runtime import Runtime

DORMANT_CHUNK = 500  # contacts per write transaction of the nightly dormancy job, at most
# In the first; then steered by time (bot.db.Chunks): 200 customers scattered over a million rows took 62 ms.
DORMANT_FIRST = 50

log = logging.getLogger("beacon.lifecycle")

STAGE_LABELS = {
    "new": "新线索", "nurturing": "可培养", "mql": "MQL", "sql": "有意向",
    "customer": "已合作", "invalid": "无效", "dormant": "沉睡",
}  # fmt: skip
TEMPERATURE_LABELS = {"cold": "冷", "warm": "温", "hot": "热"}


def shown_score(score: float | None) -> int:
    """A score as reps read it in messages and cards: whole points, half up (decay leaves fractions
    such as 275.82; the ledger and the contact page keep them exact)."""
    return int(math.floor((score or 0.0) + 0.5))
# Events that are not the contact doing something: they never wake a dormant contact.
PASSIVE_EVENTS = frozenset({"payment", "contact_deleted", "unsubscribe", "call"})


class StageError(ValueError):
    pass


async def move_stage(rt: "Runtime", session: AsyncSession, contact: Contact, to: str, *, by: str, reason: str, now: dt.datetime) -> bool:
    """Record and apply a stage move; returns False when the contact is already there."""
    if to not in STAGES:
        raise StageError(f"unknown stage {to!r}; stages: {', '.join(STAGES)}")
    if contact.stage == to:
        return False
    change = {"contact_id": contact.id, "from_stage": contact.stage, "to_stage": to, "by": by, "reason": reason[:255], "at": now}
    batch = session.info.get(BATCH_KEY)
    if batch is not None:
        await batch.record_stage_change(change)  # in the tracker's batch: written past the ORM
    else:
        session.add(StageChange(**change))
    previous, contact.stage = contact.stage, to
    contact.updated_at = now
    for url in rt.settings.lifecycle.webhook_urls:
        from bot.outbox import enqueue

        enqueue(
            session, f"webhook:{url}",
            {"event": "stage_changed", "contact": _contact_payload(contact), "from": previous, "to": to, "by": by,
             "reason": reason, "at": now.isoformat()},
            key=f"webhook:{url}:{contact.id}:{previous}:{to}:{now.isoformat()}", now=now,
        )
    if to == "mql":
        await hand_off(rt, session, contact, now=now)
    return True


def _contact_payload(contact: Contact) -> dict[str, Any]:
    return {"id": contact.id, "external_userid": contact.external_userid, "name": contact.name,
            "company": contact.company, "owner": contact.owner_userid, "score": contact.score,
            "stage": contact.stage, "temperature": contact.temperature}


OWNED_PER_REP = select(Contact.owner_userid, func.count()).where(Contact.owner_userid.is_not(None)).group_by(Contact.owner_userid)
ELIGIBLE_REPS = select(Rep.userid).where(Rep.role == "rep", Rep.active.is_(True))


class OwnerLoads:
    """How many contacts each rep owns, for handing an unowned contact to the least loaded rep.

    Counting every contact's owner took 60–100 ms at a million contacts, and a hand-off runs inside the
    tracker's write transaction (on SQLite, holding the lock link opens wait for). The counts are taken
    on a read session at most every `recount_s` and kept current by this process's own hand-offs in
    between; what other processes or reps changed meanwhile shows at the next count. Who may be picked
    (active reps) is read at every pick: the reps table is small."""

    def __init__(self, recount_s: float = 600.0) -> None:
        self.recount_s = recount_s
        self.counts: dict[str, int] = {}
        self.counted_at: dt.datetime | None = None

    async def pick(self, rt: "Runtime", session: AsyncSession) -> str | None:
        now = rt.clock.now()
        if self.counted_at is None or (now - self.counted_at).total_seconds() >= self.recount_s:
            async with rt.read_sessions() as reader:
                self.counts = dict((await reader.execute(OWNED_PER_REP)).all())  # type: ignore[arg-type]
            self.counted_at = now
        eligible = (await session.scalars(ELIGIBLE_REPS)).all()
        if not eligible:
            return None
        userid = min(eligible, key=lambda u: (self.counts.get(u, 0), u))
        self.counts[userid] = self.counts.get(userid, 0) + 1
        return userid


async def pick_owner(rt: "Runtime", session: AsyncSession, contact: Contact) -> str | None:
    """The rep who shared with the contact most recently, else the active rep owning the fewest
    contacts (ties by userid): a balanced round-robin over the configured team (OwnerLoads)."""
    shared_by = await session.scalar(
        select(Event.rep_userid).where(Event.contact_id == contact.id, Event.rep_userid.is_not(None)).order_by(Event.id.desc()).limit(1)
    )
    if shared_by and await session.get(Rep, shared_by) is not None:
        return shared_by
    loads: OwnerLoads = rt.services["owner_loads"]
    return await loads.pick(rt, session)


async def hand_off(rt: "Runtime", session: AsyncSession, contact: Contact, *, now: dt.datetime) -> None:
    """Crossing into MQL: an owner if none, a follow-up task and an alert for the owner at once."""
    if contact.owner_userid is None:
        contact.owner_userid = await pick_owner(rt, session, contact)
    if contact.owner_userid is None:
        log.warning("contact %s reached MQL but there is no rep to hand it to", contact.id)
        return
    name = contact.name or contact.external_userid or f"#{contact.id}"
    task = Task(kind="follow_up", title=f"跟进 MQL：{name}", owner_userid=contact.owner_userid, contact_id=contact.id,
                priority=1, due_at=now + dt.timedelta(hours=4), created_at=now)
    session.add(task)
    await session.flush()
    await raise_alert(rt, session, contact, kind="mql", task=task, urgent=False, now=now,
                      detail={"text": f"{name} 已达到 MQL（{shown_score(contact.score)} 分），请在 4 小时内跟进。"})


async def raise_alert(rt: "Runtime", session: AsyncSession, contact: Contact, *, kind: str, task: Task | None, urgent: bool,
                      now: dt.datetime, detail: dict[str, Any]) -> Alert | None:
    """Record an alert for the owner and hand it to the alerting service (which throttles and sends)."""
    if contact.owner_userid is None:
        return None
    alert = Alert(rep_userid=contact.owner_userid, contact_id=contact.id, task_id=task.id if task else None, kind=kind,
                  urgent=urgent, detail=detail, first_event_at=now, send_after=now, score_delta=0.0)
    session.add(alert)
    await session.flush()
    notifier = rt.services.get("alerts")
    if notifier is not None:
        await notifier.on_alert(session, alert, contact)
    else:
        from bot.outbox import enqueue

        enqueue(session, "/cgi-bin/message/send",
                {"touser": contact.owner_userid, "msgtype": "text", "text": {"content": detail.get("text", "")}},
                key=f"alert:{alert.id}", now=now)
        alert.status, alert.sent_at = "sent", now
    return alert


async def after_scoring(rt: "Runtime", session: AsyncSession, contact: Contact, event: Event, now: dt.datetime) -> None:
    """Apply what one scored event means for the contact: score, temperature, stage, dormancy, payment."""
    scoring = rt.services["scoring"]
    model = scoring.model(contact)
    contact.score = scoring.score(contact.id)
    if event.type == "payment":
        contact.last_payment_at = max(filter(None, [contact.last_payment_at, event.occurred_at]))
        if contact.stage in ("new", "nurturing", "mql", "sql", "dormant"):
            await move_stage(rt, session, contact, "customer", by="rule:payment", reason="收到付款", now=now)
    elif contact.stage == "dormant" and event.type not in PASSIVE_EVENTS:
        await wake_dormant(rt, session, contact, event, now)
    if event.type not in NOT_ENGAGEMENT:  # the scorer's quiet clock, so the nightly decay picks the same contacts
        contact.last_activity_at = max(filter(None, [contact.last_activity_at, event.occurred_at]))
    await _follow_score(rt, session, contact, model, now)


async def _follow_score(rt: "Runtime", session: AsyncSession, contact: Contact, model: Any, now: dt.datetime) -> None:
    """Temperature, stage (by the model's thresholds) and WeCom tags after the contact's score changed."""
    contact.temperature = "hot" if recently_reactivated(contact, now) else temperature(contact.score, model)
    target = stage_for_score(contact.stage, contact.score, model)
    if target is not None:
        threshold = {"nurturing": model.nurturing_at, "mql": model.mql_at, "sql": model.sql_at}.get(target, 0)
        await move_stage(rt, session, contact, target, by="rule:score", reason=f"评分 {contact.score:g} ≥ {threshold:g}", now=now)
    await mirror_tags(rt, session, contact)


async def rescore_after_merge(rt: "Runtime", session: AsyncSession, contact: Contact, now: dt.datetime) -> None:
    """`contact` took over another contact's history outside the tracker (its WeCom profile named a
    unionid or a mobile number a lead had): its log is replayed into a new ledger now, and its score,
    temperature and stage follow, as after a scored event. The tracker's process, if another, sees the
    new score and replays its cached state (ScoringService.check)."""
    from bot.scoring.service import rescore_contact

    scoring = rt.services["scoring"]
    await rescore_contact(scoring, session, contact, now)
    contact.score = scoring.score(contact.id)
    await _follow_score(rt, session, contact, scoring.model(contact), now)


REACTIVATION_HOT_DAYS = 7


def recently_reactivated(contact: Contact, now: dt.datetime) -> bool:
    """A woken dormant customer stays hot for a week, whatever the score says."""
    raw = (contact.profile or {}).get("reactivated_at")
    return bool(raw) and now - dt.datetime.fromisoformat(raw) < dt.timedelta(days=REACTIVATION_HOT_DAYS)


async def wake_dormant(rt: "Runtime", session: AsyncSession, contact: Contact, event: Event, now: dt.datetime) -> None:
    """A dormant customer doing anything at all: hot, back to sales, an urgent "call now" task."""
    profile = dict(contact.profile or {})
    profile["reactivated_at"] = now.isoformat()
    contact.profile = profile
    contact.temperature = "hot"
    await move_stage(rt, session, contact, "mql", by="rule:dormant_wakeup", reason=f"沉睡客户重新互动（{event.type}）", now=now)
    if contact.owner_userid is None:
        contact.owner_userid = await pick_owner(rt, session, contact)
    if contact.owner_userid is None:
        return
    name = contact.name or contact.external_userid or f"#{contact.id}"
    task = Task(kind="dormant", title=f"立即致电：沉睡客户 {name} 重新互动", owner_userid=contact.owner_userid,
                contact_id=contact.id, priority=1, due_at=now, source_event_id=event.id, created_at=now)
    session.add(task)
    await session.flush()
    await raise_alert(rt, session, contact, kind="dormant_wakeup", task=task, urgent=True, now=now,
                      detail={"text": f"沉睡客户 {name} 刚刚重新互动（{event.type}），请立即致电。", "event_id": event.id})


async def mark_dormant(rt: "Runtime", session: AsyncSession, now: dt.datetime, *, chunk: int | None = None) -> int:
    """Nightly, set-based: customers whose last payment is older than the window become dormant.

    The candidates are found in a read-only session (on SQLite no write lock while a million contacts
    are looked through), then moved in chunks of at most `chunk`, sized by time (bot.db.Chunks), each
    committed on `session` (the job's unit of work): the UPDATE checks the condition again, so a
    customer who paid meanwhile stays, and a history row is written for exactly the contacts it
    moved. A run stopped half-way leaves the rest for the next run."""
    cutoff = now - dt.timedelta(days=rt.settings.lifecycle.dormant_after_days)
    due = (Contact.stage == "customer", Contact.last_payment_at < cutoff, Contact.merged_into_id.is_(None))
    async with rt.background_reads() as reader:
        ids = list((await reader.scalars(select(Contact.id).where(*due).order_by(Contact.id))).all())
    reason = f"超过 {rt.settings.lifecycle.dormant_after_days} 天未付款"
    most = chunk or DORMANT_CHUNK
    size = Chunks(min(DORMANT_FIRST, most), least=1, most=most)
    moved = done = 0
    while done < len(ids):
        part = ids[done:done + size.size]
        done += len(part)
        began = time.perf_counter()
        result = await session.execute(
            update(Contact).where(Contact.id.in_(part), *due).values(stage="dormant", updated_at=now).returning(Contact.id)
        )
        changed = sorted(result.scalars().all())
        if changed:
            await session.execute(insert(StageChange), [
                {"contact_id": cid, "from_stage": "customer", "to_stage": "dormant", "by": "rule:dormancy", "reason": reason, "at": now}
                for cid in changed
            ])
        moved += len(changed)
        if done < len(ids):  # the job's unit of work commits the last chunk
            await session.commit()  # the next chunk in a transaction of its own
            size.took(time.perf_counter() - began, len(part))
    return moved


async def mirror_tags(rt: "Runtime", session: AsyncSession, contact: Contact) -> None:
    """Stage and temperature as WeCom customer tags on the owner's view of the contact."""
    if not rt.settings.lifecycle.mirror_tags or not contact.external_userid or not contact.owner_userid:
        return
    tags = rt.services.get("tags")
    if tags is not None:
        await tags.mirror(session, contact)


async def record_payment(session: AsyncSession, contact: Contact, *, at: dt.datetime, amount: Any, key: str | None) -> None:
    await add_event(session, "payment", contact_id=contact.id, at=at, props={"amount": amount}, key=key)
