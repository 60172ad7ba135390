"""Sending a digest exactly once: a `digests` row per (kind, recipient, day) claimed in the same
transaction as the outbox rows that carry the messages.

The claim is `INSERT … ON CONFLICT DO NOTHING RETURNING id`. If two processes (or the scheduler and
someone running `digest managers` by hand) build the same digest, only the one whose row went in
queues messages. On PostgreSQL the second insert waits for the first transaction and then does nothing.

The chart travels as an outbox row of its own (`digest:image`). The outbox worker uploads the PNG
(`media/upload?type=image`, multipart) and sends the returned media_id as an image message. A crash
between that send and marking the row sent can repeat the image, since a new upload gets a new
media_id and WeCom's duplicate check does not see it. The markdown messages cannot repeat.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.models import Digest
from bot.outbox import enqueue

if TYPE_CHECKING:
    from bot.runtime import Runtime

IMAGE_PATH = "digest:image"
UPLOAD_PATH = "/cgi-bin/media/upload"
SEND_PATH = "/cgi-bin/message/send"


@dataclass
class Outgoing:
    """One recipient's digest: markdown bodies (each ≤ 2048 bytes), an optional chart, the numbers."""

    kind: str
    recipient: str
    day: dt.date
    bodies: list[str]
    chart: bytes | None = None
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def chart_name(self) -> str:
        return f"beacon-{self.kind}-{self.recipient}-{self.day.isoformat()}.png"


def digest_row(out: Outgoing, now: dt.datetime) -> dict[str, Any]:
    """The `digests` row that claims `out`."""
    content = {"bodies": out.bodies, "numbers": out.numbers, "chart": out.chart is not None, "empty": not out.bodies}
    return {"kind": out.kind, "recipient": out.recipient, "day": out.day, "content": content, "created_at": now}


@functools.lru_cache(maxsize=None)
def claim_statement(dialect_name: str) -> Any:
    """INSERT of a `digests` row (`digest_row`'s keys) that does nothing if the digest was claimed
    before, RETURNING its id only if this one claimed it."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(Digest).on_conflict_do_nothing(index_elements=["kind", "recipient", "day"]).returning(Digest.id)


def messages(out: Outgoing) -> list[tuple[str, dict[str, Any], str]]:
    """The outbox rows (path, payload, idempotency key) that carry `out`: its markdown bodies, then its chart."""
    base = f"digest:{out.kind}:{out.day.isoformat()}:{out.recipient}"
    queued = [(SEND_PATH, {"touser": out.recipient, "msgtype": "markdown", "markdown": {"content": body}}, f"{base}:{n}")
              for n, body in enumerate(out.bodies)]
    if out.chart is not None and out.bodies:
        payload = {"touser": out.recipient, "filename": out.chart_name, "png_b64": base64.b64encode(out.chart).decode()}
        queued.append((IMAGE_PATH, payload, f"{base}:chart"))
    return queued


async def claim_and_queue(session: AsyncSession, out: Outgoing, *, now: dt.datetime) -> bool:
    """Record the digest and queue its messages; False (and nothing queued) if it was sent before."""
    claimed = await session.execute(claim_statement(session.bind.dialect.name), digest_row(out, now))
    if claimed.scalar() is None:
        return False
    for path, payload, key in messages(out):
        enqueue(session, path, payload, key=key, now=now)
    return True


async def send_image(rt: "Runtime", payload: dict[str, Any]) -> dict[str, Any]:
    """The outbox's handler for IMAGE_PATH: upload the PNG as temporary media, send it as an image."""
    data = base64.b64decode(payload["png_b64"])
    media = await rt.wecom.upload(UPLOAD_PATH, filename=payload["filename"], data=data, content_type="image/png",
                                  params={"type": "image"})
    message = {"touser": payload["touser"], "msgtype": "image", "image": {"media_id": media["media_id"]},
               "agentid": rt.settings.wecom.agent_id}
    answer = await rt.wecom.post(SEND_PATH, message)
    return {"media_id": media["media_id"], **answer}
