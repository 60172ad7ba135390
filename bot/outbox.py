"""The durable outbox: outbound WeCom calls decided in a transaction and sent after it commits.

A crash between "decided" and "sent" loses nothing (the row is there); a crash between "sent" and
"marked sent" must not double-send, so every message carries WeCom's own dedupe: message/send gets
`enable_duplicate_check`, kf/send_msg a stable `msgid` derived from the idempotency key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import delete_in_chunks
from bot.leases import backoff_s
from bot.models import OutboxItem
from bot.worker import PollingWorker

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.outbox")

DUPLICATE_CHECK_S = 4 * 3600  # WeCom's longest dedupe window: it covers every retry of a row (below)
RETRY_BACKOFF_CAP_S = 900.0
# Transient failures (WeCom down, busy, rate-limited, timeouts) are retried while the row is younger than
# this: a WeCom outage of hours is survived, and every retry still falls inside the dedupe window, so a
# send that reached WeCom but whose answer was lost is never delivered twice. Older rows are failed
# (logged, counted in /healthz and /metrics) for an operator to look at.
RETRY_FOR = dt.timedelta(seconds=DUPLICATE_CHECK_S - 2 * RETRY_BACKOFF_CAP_S)
TRANSIENT_ERRCODES = (-1, 45009, 45033, 42001, 40014)
_OUTBOX = OutboxItem.__table__


def _with_dedupe(path: str, payload: dict[str, Any], key: str, agent_id: int) -> dict[str, Any]:
    payload = dict(payload)
    if path == "/cgi-bin/message/send":
        payload.setdefault("agentid", agent_id)
        payload.setdefault("enable_duplicate_check", 1)
        payload.setdefault("duplicate_check_interval", DUPLICATE_CHECK_S)
    elif path in ("/cgi-bin/kf/send_msg",):
        payload.setdefault("msgid", hashlib.sha1(key.encode()).hexdigest()[:32])
    elif path == "/cgi-bin/message/update_template_card":
        payload.setdefault("agentid", agent_id)
    return payload


def outbox_row(path: str, payload: dict[str, Any], *, key: str, now: dt.datetime) -> dict[str, Any]:
    """A new outbox row's columns, every default filled in (for writers that bypass the ORM)."""
    return {"idempotency_key": key[:160], "path": path, "payload": payload, "status": "pending", "attempts": 0,
            "next_attempt_at": now, "created_at": now}


def enqueue(session: AsyncSession, path: str, payload: dict[str, Any], *, key: str, now: dt.datetime) -> OutboxItem:
    """Add an outbox row to the caller's transaction."""
    item = OutboxItem(**outbox_row(path, payload, key=key, now=now))
    session.add(item)
    return item


class OutboxWorker(PollingWorker):
    """Sends due outbox rows; retries transient failures with backoff; marks permanent ones failed."""

    name = "outbox"

    def __init__(self, runtime: "Runtime", *, batch: int = 20, lease_s: float = 60.0) -> None:
        super().__init__(runtime)
        self.batch = batch
        self.lease_s = lease_s

    async def drain(self) -> int:
        """Send everything due now; returns how many rows were handled. A send in progress when a stop
        is asked for is given up and its row handed back with the rest (see drain_claimed)."""
        return await self.drain_claimed(OutboxItem, lease_s=self.lease_s, limit=self.batch,
                                        handle=lambda ids: self.one_by_one(ids, self._send_one))

    async def _send_one(self, item_id: int) -> bool:
        """Send one leased row. No transaction is open during the call: on SQLite a transaction holds
        the write lock, and a slow or retrying WeCom must never stall the rest of Beacon. Returns False
        when a stop was requested during the call: the call is given up, the row left as it was (its
        attempt not counted), for the caller to hand back."""
        from bot.wecom.client import WeComError, WeComUnavailable

        async with self.rt.read_sessions() as session:
            item = await session.get(OutboxItem, item_id)
            if item is None or item.status != "pending":
                return True
            path, key, attempts, created_at = item.path, item.idempotency_key, item.attempts, item.created_at
            payload = _with_dedupe(path, item.payload, key, self.rt.settings.wecom.agent_id)
        outcome: dict[str, Any]
        try:
            finished, result = await self.unless_stopping(self._call(path, key, payload))
            if not finished:
                log.info("outbox %s %s: send given up on stop; it is sent after the restart", item_id, path)
                return False
        except (WeComUnavailable, WeComError) as exc:
            transient = isinstance(exc, WeComUnavailable) or exc.errcode in TRANSIENT_ERRCODES
            outcome = self._failed(item_id, path, attempts, created_at, exc, transient)
        except Exception as exc:
            # Our side, not WeCom's answer (a database error in a handler, a bad payload): retried like a
            # transient failure. Escaping here would end the pass and leave this row and the rest of the
            # batch leased (untouched until the lease ran out), with no attempt ever counted.
            log.exception("outbox %s %s: error while sending", item_id, path)
            outcome = self._failed(item_id, path, attempts, created_at, exc, True)
        else:
            outcome = {"status": "sent", "result": result, "sent_at": self.rt.clock.now()}
        async with self.rt.sessions() as session, session.begin():
            row = await session.get(OutboxItem, item_id)
            if row is not None:
                row.attempts = attempts + 1
                row.locked_until = None
                for name, value in outcome.items():
                    setattr(row, name, value)
        return True

    def _failed(self, item_id: int, path: str, attempts: int, created_at: dt.datetime, exc: Exception,
                transient: bool) -> dict[str, Any]:
        """The row's new state after a failed attempt: retried with backoff, or failed for good."""
        error = f"{type(exc).__name__}: {exc}"
        if transient and self.rt.clock.now() - created_at < RETRY_FOR:
            delay = backoff_s(attempts + 1, 2.0, RETRY_BACKOFF_CAP_S)
            log.warning("outbox %s %s failed (attempt %d), will retry", item_id, path, attempts + 1)
            return {"last_error": error, "next_attempt_at": self.rt.clock.now() + dt.timedelta(seconds=delay)}
        log.error("outbox %s %s failed for good: %s", item_id, path, error)
        return {"last_error": error, "status": "failed"}

    async def _call(self, path: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        if path == "tags:mark":
            return await self.rt.services["tags"].send(payload)
        if path.startswith("webhook:"):
            return await self._post_webhook(path.removeprefix("webhook:"), key, payload)
        if path == "digest:image":
            from bot.digest.send import send_image

            return await send_image(self.rt, payload)
        return await self.rt.wecom.post(path, payload)

    async def _post_webhook(self, url: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST to a CRM: body signed as HMAC-SHA256 of "<timestamp>.<body>" (X-Beacon-Signature),
        with a delivery id for the receiver's own dedupe. Non-2xx answers are retried."""
        import hmac
        import json

        import aiohttp

        from bot.wecom.client import WeComUnavailable

        body = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()
        timestamp = str(int(self.rt.clock.now().timestamp()))
        secret = self.rt.settings.lifecycle.webhook_secret.encode()
        signature = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Beacon-Timestamp": timestamp,
            "X-Beacon-Signature": f"sha256={signature}",
            "X-Beacon-Delivery": hashlib.sha1(key.encode()).hexdigest(),
        }
        assert self.rt.http is not None
        try:
            async with self.rt.http.post(url, data=body, headers=headers) as resp:
                if resp.status >= 300:
                    raise WeComUnavailable(f"webhook answered HTTP {resp.status}", url)
                return {"status": resp.status}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WeComUnavailable(f"webhook unreachable: {type(exc).__name__}", url) from None


async def deliver_now(rt: "Runtime", key_prefix: str) -> int:
    """For a command that queued sends: work the outbox through now, then count the rows under
    `key_prefix` that WeCom refused for good (the caller warns and exits 1)."""
    await rt.outbox.drain()
    async with rt.read_sessions() as session:
        failed = await session.scalar(select(func.count()).where(
            OutboxItem.idempotency_key.like(f"{key_prefix}%"), OutboxItem.status == "failed"))  # fmt: skip
    return int(failed or 0)


async def outbox_counts(session: AsyncSession) -> dict[str, int]:
    """Outbox rows waiting to be sent and failed for good (/healthz, /metrics)."""
    rows = await session.execute(
        select(OutboxItem.status, func.count()).where(OutboxItem.status.in_(["pending", "failed"])).group_by(OutboxItem.status)
    )
    return {"pending": 0, "failed": 0} | {status: count for status, count in rows.all()}


async def purge_finished(rt: "Runtime", older_than: dt.datetime) -> int:
    """Housekeeping: rows sent (or skipped) whose last attempt was before `older_than` go; pending and
    failed rows stay. Without it the outbox keeps every reply, card, tag change and webhook Beacon ever
    sent, with what the cards said about contacts since erased, and its key index grows with them.
    What still reads sent rows looks back hours (a card's one update, the 48-hour budget of a Customer
    Service chat), not days. In short transactions (`delete_in_chunks`), found by the (status,
    next_attempt_at) index. Returns how many rows were removed."""
    finished = (_OUTBOX.c.status.in_(("sent", "skipped")), _OUTBOX.c.next_attempt_at < older_than)
    return await delete_in_chunks(rt.sessions, _OUTBOX, *finished)
