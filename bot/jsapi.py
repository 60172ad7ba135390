"""WeCom JS-SDK for the sidebar: the app's jsapi ticket (cached) and the agentConfig signature.

WeCom allows 100 ticket requests an hour per app and answers with a ticket valid for 7200 s, so one
ticket is fetched per process and reused until shortly before it expires; concurrent page loads
wait for the same fetch instead of each asking WeCom.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from bot.runtime import Runtime

TICKET_PATH = "/cgi-bin/ticket/get"
MARGIN_S = 300.0
SERVICE_KEY = "jsapi_tickets"


def agent_config_signature(ticket: str, noncestr: str, timestamp: int, url: str) -> str:
    """sha1 of `jsapi_ticket=…&noncestr=…&timestamp=…&url=…`, keys in that (alphabetical) order, the
    URL as the page has it minus any #fragment."""
    plain = f"jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={url}"
    return hashlib.sha1(plain.encode("utf-8")).hexdigest()


def page_url_for_signature(raw: str, allowed_origins: set[str]) -> str | None:
    """The URL to sign, or None when it is not one of our sidebar pages (we sign only our own)."""
    url = raw.split("#", 1)[0]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    if f"{parts.scheme}://{parts.netloc}" not in allowed_origins or not parts.path.startswith("/sidebar"):
        return None
    return url


class TicketCache:
    """The agent_config jsapi ticket of this process, refreshed MARGIN_S before it expires."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._ticket: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def agent_ticket(self) -> str:
        """The ticket; raises WeComError when WeCom will not give one."""
        async with self._lock:
            now = self.rt.clock.now().timestamp()
            if self._ticket is None or now >= self._expires_at:
                answer = await self.rt.wecom.get(TICKET_PATH, {"type": "agent_config"})
                self._ticket = str(answer["ticket"])
                self._expires_at = now + max(float(answer.get("expires_in", 7200)) - MARGIN_S, 60.0)
            return self._ticket


def tickets(rt: Runtime) -> TicketCache:
    cache = rt.services.get(SERVICE_KEY)
    if cache is None:
        cache = rt.services[SERVICE_KEY] = TicketCache(rt)
    return cache
