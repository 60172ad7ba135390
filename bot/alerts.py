"""Follow-up alerts: the alert service (`rt.services["alerts"]`) and its tracker hook.

The hook runs after scoring on every attributed event. Engagement by a contact with an owner (opens,
reading to the end, downloads, CTA clicks, gate forms, forwards, a stage crossed) becomes an alert for
the owner: one alert per burst. The first event opens a pending alert due `delay_s` later; more
activity within `merge_window_s` joins it (a pending alert absorbs everything until it is sent), and
activity after it was sent updates the same card once. `lifecycle.raise_alert` (MQL hand-off, dormant
wake-up) lands in `on_alert` and joins the contact's open alert the same way. Urgent activity (a demo
request, a dormant customer waking up) is sent at once. Sending itself is bot/alert_delivery.py; the
scheduled pass over due alerts is bot/alert_jobs.py.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.alert_delivery import can_update, decide, deliver, is_loud, refresh, suppress, unsent_card
from bot.lifecycle import raise_alert
from bot.models import Alert, Contact, Event, Rep, ScoreEntry, StageChange
from bot.tracker_batch import BATCH_KEY, MadeStageChange, TrackerBatch

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.alerts")

TRIGGERS = frozenset({"open", "download", "cta", "form_submit", "forward", "demo_request", "webinar_attended"})
FOLLOWERS = frozenset({"read", "dwell", "menu_click", "message"})  # join an open alert; start one only at 100 % read
KIND_RANK = {"dormant_wakeup": 3, "mql": 2, "reminder": 1}
MAX_ACTIVITIES = 30
MAX_EVENT_IDS = 200


def is_urgent(event: Event) -> bool:
    props = event.props or {}
    return event.type == "demo_request" or (event.type == "cta" and props.get("cta") == "demo")


def is_trigger(event: Event) -> bool:
    return event.type in TRIGGERS or (event.type == "read" and int((event.props or {}).get("depth") or 0) >= 100)


OPEN_STATUSES = ("pending", "sent")


class BatchPreload:
    """What the hook reads for every event, read once per tracker batch for the batch's contacts with
    an owner: their open alerts (newest first, locked as `open_alert` locks them) and their latest
    stage change. Kept current through the batch: alerts raised in it are added, status changes are
    seen on the objects themselves, and a stage change the batch makes is the batch's own
    (`TrackerBatch.stage_changes`), with its id."""

    __slots__ = ("open", "latest_stage")

    def __init__(self) -> None:
        self.open: dict[tuple[str, int], list[Alert]] = {}
        self.latest_stage: dict[int, StageChange | None] = {}


# The newest open alerts of a contact that `open_alert` may look at: only the newest can grow (the
# one just raised may be skipped), and a contact's sent cards stay open, hundreds of them after a
# year of bursts, each with its activity in `detail`.
NEWEST_OPEN = 5
# Built once and given their values with `.params()` (about 2 µs; building one was about 90 µs, as
# long as SQLite takes to run it, once per rep and tracker batch).
_NEWEST_OPEN_IDS = (
    select(Alert.id, func.row_number().over(partition_by=Alert.contact_id, order_by=Alert.id.desc()).label("newness"))
    .where(Alert.rep_userid == bindparam("rep"), Alert.contact_id.in_(bindparam("contacts", expanding=True)),
           Alert.status.in_(OPEN_STATUSES), Alert.clicked_at.is_(None))
    .subquery("open_ids")
)
_OPEN_ALERTS = (
    select(Alert)
    .where(Alert.id.in_(select(_NEWEST_OPEN_IDS.c.id).where(_NEWEST_OPEN_IDS.c.newness <= NEWEST_OPEN)))
    .order_by(Alert.id.desc())
    .with_for_update()
    .execution_options(populate_existing=True)
)
_LATEST_STAGE_CHANGES = select(StageChange).where(StageChange.id.in_(
    select(func.max(StageChange.id)).where(StageChange.contact_id.in_(bindparam("contacts", expanding=True)))
    .group_by(StageChange.contact_id)
))


def open_alerts_of(rep: str, contact_ids: set[int]) -> Any:
    """A rep's newest `NEWEST_OPEN` open alerts on each of some contacts, newest first, locked (their
    ids by the rep/contact/status index, then the rows by id; one query per rep, since with several
    reps OR-ed SQLite prefers the status index and reads every open alert)."""
    return _OPEN_ALERTS.params(rep=rep, contacts=sorted(contact_ids))


def latest_stage_changes_of(contact_ids: set[int]) -> Any:
    """Each contact's newest stage change (by the contact_id index)."""
    return _LATEST_STAGE_CHANGES.params(contacts=sorted(contact_ids))


class AlertService:
    """Turns contact activity and lifecycle alerts into throttled WeCom cards for the owning rep."""

    def __init__(self, runtime: "Runtime") -> None:
        self.rt = runtime

    def tracker_hook(self) -> Any:
        """`on_event` as the tracker's hook, with the batch preload it uses."""

        async def hook(session: AsyncSession, event: Event) -> None:
            await self.on_event(session, event)

        hook.batch_aware = True  # type: ignore[attr-defined]  # see on_event
        hook.prepare = self.prepare  # type: ignore[attr-defined]
        return hook

    async def prepare(self, session: AsyncSession, batch: TrackerBatch) -> None:
        """The batch's preload (`BatchPreload`) for its live contacts with an owner."""
        keys: dict[str, set[int]] = {}
        for contact in batch.contacts.values():
            if contact is not None and contact.owner_userid is not None and contact.merged_into_id is None \
                    and contact.erased_at is None:
                keys.setdefault(contact.owner_userid, set()).add(contact.id)
        preload = batch.prepared["alerts"] = BatchPreload()
        for rep, ids in keys.items():
            preload.open.update({(rep, cid): [] for cid in ids})
            for alert in (await session.scalars(open_alerts_of(rep, ids))).all():
                preload.open[(rep, alert.contact_id)].append(alert)
        if keys:
            owned = set().union(*keys.values())
            preload.latest_stage = dict.fromkeys(owned)
            for change in (await session.scalars(latest_stage_changes_of(owned))).all():
                preload.latest_stage[change.contact_id] = change

    @staticmethod
    def _preload(session: AsyncSession) -> tuple[TrackerBatch | None, BatchPreload | None]:
        batch: TrackerBatch | None = session.info.get(BATCH_KEY)
        return batch, (batch.prepared.get("alerts") if batch is not None else None)

    # ---- entry points ------------------------------------------------------------------------

    async def on_alert(self, session: AsyncSession, alert: Alert, contact: Contact) -> None:
        """A new alert row (from lifecycle.raise_alert or this service): join the contact's open alert
        or stand alone; loud ones are due at once, the rest after `delay_s`."""
        _, preload = self._preload(session)
        if preload is not None and (alert.rep_userid, alert.contact_id) in preload.open:
            preload.open[(alert.rep_userid, alert.contact_id)].insert(0, alert)  # the newest
        now = alert.first_event_at
        alert.detail = {**(alert.detail or {})}
        target = await self.open_alert(session, alert.rep_userid, contact.id, now, exclude=alert.id)
        if target is not None and (await self._fresh(session, target) or not is_loud(alert)):
            self._absorb(target, alert, now)
            alert.status = "merged"
            alert.detail = {**alert.detail, "merged_into": target.id}
            await self.settle(session, target, contact, now)
            return
        alert.send_after = now if is_loud(alert) else now + dt.timedelta(seconds=self.rt.settings.alerts.delay_s)
        await self.settle(session, alert, contact, now)

    async def on_event(self, session: AsyncSession, event: Event) -> None:
        """Tracker hook (after scoring): fold one behavior event into the owner's alert for the contact.

        In a tracker batch it reads the contact's open alerts and latest stage change from the batch's
        preload (`prepare`) and the event's ledger rows from the scoring hook; whatever else it reads
        sees the batch's queued writes (the batch flushes a queued table before any statement touching
        it). It runs without a savepoint of its own there: if it fails, the tracker rolls the batch
        back and does it again one event at a time, where the savepoint below keeps the event scored."""
        if event.contact_id is None or event.type not in TRIGGERS | FOLLOWERS:
            return
        batch, _ = self._preload(session)
        contact = await (batch.contact(event.contact_id) if batch is not None else session.get(Contact, event.contact_id))
        if contact is None or contact.owner_userid is None or contact.erased_at is not None:
            return
        if batch is not None:
            await self._track(session, contact, event, batch.prepared.get("ledger"))
        else:
            await self._track_safely(session, contact, event)

    async def _track_safely(self, session: AsyncSession, contact: Contact, event: Event) -> None:
        try:
            async with session.begin_nested():
                await self._track(session, contact, event)
        except Exception:  # an alert must never cost the event its score: the tracker's savepoint covers both
            log.exception("alerting on event %s failed; the event stays scored", event.id)

    # ---- the alert a contact's activity belongs to -------------------------------------------

    async def open_alert(
        self, session: AsyncSession, rep: str, contact_id: int, now: dt.datetime, *, exclude: int | None = None
    ) -> Alert | None:
        """The newest alert that can still take activity: pending (always), or sent within the merge
        window with its one card update still unused (or its card still unsent in this transaction)."""
        window = now - dt.timedelta(seconds=self.rt.settings.alerts.merge_window_s)
        _, preload = self._preload(session)
        known = preload.open.get((rep, contact_id)) if preload is not None else None
        if known is not None:
            rows = [a for a in known if a.status in OPEN_STATUSES and a.clicked_at is None]
        else:
            # Locked and re-read: the send job may be sending this very alert in another process.
            rows = list((await session.scalars(open_alerts_of(rep, {contact_id}))).all())
            if preload is not None:
                preload.open[(rep, contact_id)] = rows
        for alert in rows:
            if alert.id == exclude:
                continue
            if alert.status == "pending" or await self._fresh(session, alert):
                return alert
            if alert.first_event_at >= window and can_update(alert):
                return alert
            return None  # only the newest alert may grow; older cards are history
        return None

    async def _fresh(self, session: AsyncSession, alert: Alert) -> bool:
        """Not seen by the rep yet: pending, or its card is still in this transaction's outbox."""
        return alert.status == "pending" or await unsent_card(session, alert) is not None

    async def _track(self, session: AsyncSession, contact: Contact, event: Event,
                     scored: dict[tuple[int, int], list[Any]] | None = None) -> None:
        now = self.rt.clock.now()
        alert = await self.open_alert(session, contact.owner_userid or "", contact.id, now)
        if alert is not None and event.id in (alert.detail.get("events") or []):
            return  # the tracker re-processes events when a browser is identified
        stage = await self._stage_change(session, contact, event)
        urgent = is_urgent(event)
        if alert is None or (urgent and not alert.urgent and not await self._fresh(session, alert)):
            if not (is_trigger(event) or stage is not None):
                return
            created = await raise_alert(self.rt, session, contact, kind="engagement", task=None, urgent=urgent, now=now, detail={})
            if created is None:
                return
            alert = await self._resolve(session, created)
        elif urgent and not alert.urgent:
            alert.urgent = True
            if alert.status == "pending":
                alert.send_after = now
        await self._add_event(session, alert, contact, event, stage, scored)
        await self.settle(session, alert, contact, now)

    async def _resolve(self, session: AsyncSession, alert: Alert) -> Alert:
        into = (alert.detail or {}).get("merged_into")
        return (await session.get(Alert, into) or alert) if into else alert

    async def _stage_change(self, session: AsyncSession, contact: Contact, event: Event) -> StageChange | MadeStageChange | None:
        """The stage move (by rule) that processing this event caused, if any."""
        batch, preload = self._preload(session)
        if batch is not None and contact.id in batch.stage_changes:
            change = batch.stage_changes[contact.id]  # moved by this batch (so newer than the preload's)
        elif preload is not None and contact.id in preload.latest_stage:
            change = preload.latest_stage[contact.id]
        else:
            change = await session.scalar(
                select(StageChange).where(StageChange.contact_id == contact.id).order_by(StageChange.id.desc()).limit(1)
            )
        if change is None or not change.by.startswith("rule:") or change.at < event.received_at:
            return None
        return change

    # ---- merging -----------------------------------------------------------------------------

    def _absorb(self, target: Alert, alert: Alert, now: dt.datetime) -> None:
        """Fold a new alert (e.g. MQL hand-off) into the open one: its task, its note, its urgency."""
        detail = dict(target.detail or {})
        if alert.detail.get("text"):
            detail["notes"] = [*(detail.get("notes") or []), alert.detail["text"]][-5:]
        detail["merged"] = [*(detail.get("merged") or []), alert.id]
        target.detail = detail
        if KIND_RANK.get(alert.kind, 0) > KIND_RANK.get(target.kind, 0):
            target.kind = alert.kind
        if alert.task_id is not None:
            target.task_id = alert.task_id
        target.urgent = bool(target.urgent or alert.urgent)
        target.score_delta = (target.score_delta or 0.0) + (alert.score_delta or 0.0)
        if target.status == "pending" and is_loud(target):
            target.send_after = min(target.send_after, now)

    async def _add_event(
        self, session: AsyncSession, alert: Alert, contact: Contact, event: Event, stage: StageChange | MadeStageChange | None,
        scored: dict[tuple[int, int], list[Any]] | None = None,
    ) -> None:
        # The event's ledger rows: as the scoring hook just wrote them in this tracker batch, else read.
        rows = (scored or {}).get((contact.id, event.id))
        if rows is None:
            rows = (await session.execute(
                select(ScoreEntry.reason, ScoreEntry.points).where(ScoreEntry.contact_id == contact.id, ScoreEntry.event_id == event.id)
            )).all()
        _, _, _, title = await self.rt.services["scoring"].facts.get(session, event.item_id)
        props = event.props or {}
        activity: dict[str, Any] = {"event": event.id, "type": event.type, "item": event.item_id, "title": title,
                                    "at": event.occurred_at.isoformat()}
        for key in ("depth", "seconds", "cta"):
            if key in props:
                activity[key] = props[key]
        detail = dict(alert.detail or {})
        detail["events"] = [*(detail.get("events") or []), event.id][-MAX_EVENT_IDS:]
        detail["activities"] = [*(detail.get("activities") or []), activity][-MAX_ACTIVITIES:]
        reasons = [r for r in detail.get("reasons") or []]
        reasons += [{"reason": reason, "points": points} for reason, points in rows if points]
        detail["reasons"] = reasons[-10:]
        if stage is not None and stage.id not in {s["id"] for s in detail.get("stages") or []}:
            detail["stages"] = [*(detail.get("stages") or []), {"id": stage.id, "from": stage.from_stage, "to": stage.to_stage}]
        alert.detail = detail
        alert.score_delta = round((alert.score_delta or 0.0) + sum(points for _, points in rows), 2)

    # ---- sending -----------------------------------------------------------------------------

    async def settle(self, session: AsyncSession, alert: Alert, contact: Contact, now: dt.datetime) -> None:
        """After a change: send a due pending alert now if the rules allow, or refresh a sent card."""
        if alert.status == "sent":
            await refresh(session, self.rt, alert, contact, now)
            return
        if alert.status != "pending" or alert.send_after > now:
            return
        rep = await session.get(Rep, alert.rep_userid)
        if rep is None or not rep.active:
            await suppress(session, self.rt, alert, contact, now, "rep inactive")
            return
        decision = await decide(session, self.rt, alert, rep, now)
        if decision.action == "send":
            await deliver(session, self.rt, alert, contact, now)
        elif decision.action == "suppress":
            await suppress(session, self.rt, alert, contact, now, "daily cap")
        elif decision.until is not None:
            alert.send_after = decision.until
