"""The typed context handed to every callback handler and scheduled job: one unit of work.

`ctx.session` is the transaction: the inbox worker commits it (with the inbox row marked done and any
outbox rows) when the handler returns, and rolls it back if it raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.clock import Clock
from bot.config import Settings
from bot.outbox import enqueue

if TYPE_CHECKING:
    from bot.runtime import Runtime
    from bot.wecom.client import WeComClient


@dataclass
class Context:
    runtime: "Runtime"
    session: AsyncSession
    origin: str  # what this unit of work is, e.g. "inbox:42" or "job:digest:2026-11-23"; keys derive from it
    data: dict[str, Any] = field(default_factory=dict)
    _sends: int = 0

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def clock(self) -> Clock:
        return self.runtime.clock

    @property
    def wecom(self) -> "WeComClient":
        return self.runtime.wecom

    def next_key(self, what: str) -> str:
        """A deterministic idempotency key: the same unit of work reprocessed yields the same keys."""
        self._sends += 1
        return f"{self.origin}:{what}:{self._sends}"

    def send(self, path: str, payload: dict[str, Any], *, key: str | None = None) -> None:
        """Queue an outbound WeCom call in this transaction; it is sent after commit, once."""
        enqueue(self.session, path, payload, key=key or self.next_key(path.rsplit("/", 1)[-1]), now=self.clock.now())

    def send_text(self, touser: str, content: str, *, key: str | None = None) -> None:
        """An app text message to one or more members (`a|b`)."""
        self.send(
            "/cgi-bin/message/send",
            {"touser": touser, "msgtype": "text", "text": {"content": content}},
            key=key,
        )
