"""Customers' WeCom profiles for the contacts Beacon first saw by their external_userid alone.

The contact-added callback fetches the customer's profile (`externalcontact/get`: name, company,
title, unionid) before it stores the contact. Every other way Beacon meets a customer first (a share
made through the API, the sidebar or a chat command, a kf conversation, a link opened after OAuth, a
deletion of a customer added before Beacon ran) knows only the id: `contact_for_external_userid`
marks such a contact due (`profile_due_at`), and this worker fetches the profile shortly after, so
alerts, to-do lists and digests name 陈总 rather than his external_userid. Migration 0015 marked the contacts
already known by their id alone, so the worker names those too.

One process works at a time (the `profiles` lease), oldest due contact first, one WeCom call at a
time, outside any transaction; each answer is written in a short transaction of its own:
- a profile: empty fields filled (never overwriting what a rep or a form set), a unionid already
  known for another contact merges that one in (`apply_profile`, as for the callback), no longer due;
- WeCom has no such customer for the corp (84061, or an id it calls invalid): a WeChat user who
  only talked to the kf account (the contact has a kf identity) is named by their WeChat nickname
  (`kf/customer/batchget`); otherwise no longer due;
- anything else (WeCom down or busy, rate-limited, the app not allowed to read customer contacts):
  the contact stays due and the worker pauses, growing from PAUSE_MIN_S to PAUSE_MAX_S, so a corp
  whose app lacks the permission gets its customers named once an administrator grants it, without
  a call a second meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from bot.contact_changes import GET_CONTACT, WeComProfile, apply_profile, one_line, profile_from
from bot.leases import hold_lease
from bot.lifecycle import rescore_after_merge
from bot.models import Contact, Identity
from bot.outbox import TRANSIENT_ERRCODES
from bot.wecom.client import WeComError, WeComUnavailable
from bot.worker import PollingWorker

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.profiles")

LEASE = "profiles"
KF_CUSTOMERS = "/cgi-bin/kf/customer/batchget"
NO_SUCH_CUSTOMER = (84061, 40096)  # not a customer of the corp's members; not a valid external_userid
PAUSE_MIN_S = 5.0
PAUSE_MAX_S = 900.0


def due_contacts(limit: int) -> Any:
    """The `limit` contacts due longest, by the partial index that holds only due contacts."""
    c = Contact.__table__.c
    kf = select(Identity.id).where(Identity.kind == "kf", Identity.value == c.external_userid).exists()
    return (select(c.id, c.external_userid, c.profile_due_at, kf.label("kf")).where(c.profile_due_at.is_not(None))
            .order_by(c.profile_due_at, c.id).limit(limit))


DUE_COUNT_CAP = 10_000  # /healthz and /metrics count due contacts up to this many (a read of the partial index)


async def due_count(session: Any, cap: int | None = DUE_COUNT_CAP) -> int:
    """How many contacts wait for their WeCom profile, counted up to `cap` (None: all): many more than
    a few dozen for long means WeCom does not answer (see the warning in the log; often a permission)."""
    c = Contact.__table__.c
    due = select(c.id).where(c.profile_due_at.is_not(None))
    counted = (due if cap is None else due.limit(cap)).subquery()
    return int(await session.scalar(select(func.count()).select_from(counted)) or 0)


class ProfileWorker(PollingWorker):
    """Fetches the WeCom profiles of due contacts (see the module docstring)."""

    name = "profiles"
    poll_s = 2.0

    def __init__(self, runtime: "Runtime", *, batch: int = 20, lease_s: float = 60.0) -> None:
        super().__init__(runtime)
        self.batch = batch
        self.lease_s = lease_s
        self.pause_s = 0.0  # the current pause after a failed call; 0 when the last call answered
        self.resume_at = 0.0  # loop time before which no call is made
        self.fetched = 0  # profiles written by this process (for tests and logs)

    async def drain(self) -> int:
        loop = asyncio.get_running_loop()
        rt = self.rt
        if not rt.settings.wecom.corp_id or loop.time() < self.resume_at:
            return 0
        if not await hold_lease(rt, LEASE, self.lease_s):
            return 0
        async with rt.read_sessions() as session:
            due = (await session.execute(due_contacts(self.batch))).all()
        handled = 0
        for contact_id, external_userid, due_at, kf in due:
            if self.stopping:
                break
            answer: WeComProfile | bool | None = False  # no id left to ask about (merged away): no longer due
            if external_userid:
                ok, answer = await self.unless_stopping(self._fetch(external_userid, kf=bool(kf)))
                if not ok or answer is None:
                    break  # stopping, or paused: the contact stays due
            await self._write(contact_id, external_userid, due_at, answer)
            handled += 1
        return handled

    async def _fetch(self, external_userid: str, *, kf: bool = False) -> WeComProfile | bool | None:
        """The profile; False when WeCom has no such customer; None when it could not say (paused)."""
        try:
            answer = await self.rt.wecom.get(GET_CONTACT, {"external_userid": external_userid})
        except WeComError as exc:
            if not isinstance(exc, WeComUnavailable) and exc.errcode in NO_SUCH_CUSTOMER:
                self.pause_s = 0.0
                return await self._kf_customer(external_userid) if kf else False
            self._pause(exc)
            return None
        self.pause_s = 0.0
        return profile_from(answer)

    async def _kf_customer(self, external_userid: str) -> WeComProfile | bool | None:
        """A WeChat user who talked to the corp's kf account without adding a rep: their WeChat nickname
        (and unionid) from kf/customer/batchget. False when kf does not know them either, or refuses
        (the app not allowed to call kf: not worth pausing customer profiles)."""
        try:
            answer = await self.rt.wecom.post(KF_CUSTOMERS, {"external_userid_list": [external_userid], "need_enter_session_context": 0})
        except WeComError as exc:
            if isinstance(exc, WeComUnavailable) or exc.errcode in TRANSIENT_ERRCODES:
                self._pause(exc)
                return None
            log.info("kf customer %s: %s", external_userid, exc)
            return False
        for item in answer.get("customer_list") or []:
            if isinstance(item, dict) and item.get("external_userid") == external_userid:
                return WeComProfile(name=one_line(item.get("nickname")), unionid=str(item.get("unionid") or ""))
        return False

    def _pause(self, exc: WeComError) -> None:
        transient = isinstance(exc, WeComUnavailable) or exc.errcode in TRANSIENT_ERRCODES
        first = self.pause_s == 0.0
        self.pause_s = min(PAUSE_MAX_S, self.pause_s * 2 if self.pause_s else PAUSE_MIN_S)
        if not transient:
            self.pause_s = PAUSE_MAX_S  # the app may lack the permission: not worth asking every few seconds
        self.resume_at = asyncio.get_running_loop().time() + self.pause_s
        if first or not transient:
            log.warning("customer profiles paused %.0f s: %s", self.pause_s, exc)

    async def _write(self, contact_id: int, external_userid: str, due_at: dt.datetime, answer: WeComProfile | bool) -> None:
        """The answer into the contact; it stays due if it was marked again after `due_at` (a rep's
        edit while WeCom was asked: the answer may predate it)."""
        rt = self.rt
        now = rt.clock.now()
        async with rt.sessions() as session, session.begin():
            contact = await session.get(Contact, contact_id, with_for_update=True)
            if contact is None or contact.profile_due_at is None:
                return  # erased, or the callback named it meanwhile
            if isinstance(answer, WeComProfile) and contact.merged_into_id is None and contact.erased_at is None:
                if await apply_profile(session, contact, answer, now=now):
                    await rescore_after_merge(rt, session, contact, now)
                contact.updated_at = now
                self.fetched += 1
            if contact.profile_due_at <= due_at:
                contact.profile_due_at = None
        if answer is False:
            log.info("contact %s: WeCom has no customer %s for the corp; left unnamed", contact_id, external_userid)
