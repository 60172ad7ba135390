"""Small explicit routing for WeCom callbacks (aiogram-style).

Each `handlers/<concern>.py` owns a `router`; handlers register with filters that are side-effect
free. A filter returns False (no match), True, or a dict of extracted data for the handler
(`ctx.data`). The dispatcher tries routers in the order the app includes them; first match wins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from bot.wecom.inbound import Inbound, normalize_text

if TYPE_CHECKING:
    from bot.context import Context

log = logging.getLogger("beacon.router")

FilterResult = bool | dict[str, Any]
Filter = Callable[[Inbound], FilterResult]
Handler = Callable[[Inbound, "Context"], Awaitable[None]]


class Command:
    """Matches a text message starting with one of the words; hands over `args` (the rest)."""

    def __init__(self, *words: str) -> None:
        longest_first = sorted((normalize_text(w).lower() for w in words), key=len, reverse=True)
        # (word, what follows it, whether it may run into its arguments): Chinese words need no space
        self._forms = tuple((word, word + " ", not word.isascii()) for word in longest_first)

    def __call__(self, msg: Inbound) -> FilterResult:
        if msg.msg_type != "text":
            return False
        text, lowered = msg.command_text
        for word, spaced, joined in self._forms:
            if lowered.startswith(word) and (joined or lowered == word or lowered.startswith(spaced)):
                return {"command": word, "args": text[len(word):].strip()}
        return False


class MsgType:
    def __init__(self, *types: str) -> None:
        self.types = types

    def __call__(self, msg: Inbound) -> FilterResult:
        return msg.msg_type in self.types


class Event:
    """Matches an event by name and optional field values, e.g. Event("click", EventKey="tasks")."""

    def __init__(self, name: str, **fields: str) -> None:
        self.name = name.lower()
        self.fields = fields

    def __call__(self, msg: Inbound) -> FilterResult:
        if msg.event != self.name:
            return False
        return all(msg.get(k) == v for k, v in self.fields.items())


class ContactChange(Event):
    """A `change_external_contact` event with the given ChangeType(s)."""

    def __init__(self, *change_types: str) -> None:
        super().__init__("change_external_contact")
        self.change_types = change_types

    def __call__(self, msg: Inbound) -> FilterResult:
        return super().__call__(msg) and (not self.change_types or msg.get("ChangeType") in self.change_types)


def any_message(msg: Inbound) -> FilterResult:
    return True


@dataclass(frozen=True)
class Route:
    filters: tuple[Filter, ...]
    handler: Handler

    def match(self, msg: Inbound) -> dict[str, Any] | None:
        data: dict[str, Any] = {}
        for f in self.filters:
            result = f(msg)
            if result is False:
                return None
            if isinstance(result, dict):
                data.update(result)
        return data


class Router:
    def __init__(self, name: str) -> None:
        self.name = name
        self.routes: list[Route] = []

    def on(self, *filters: Filter) -> Callable[[Handler], Handler]:
        """Register a handler for callbacks matching all filters."""

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(tuple(filters), handler))
            return handler

        return register

    def message(self, *filters: Filter) -> Callable[[Handler], Handler]:
        return self.on(lambda m: m.msg_type != "event", *filters)

    def event(self, name: str, **fields: str) -> Callable[[Handler], Handler]:
        return self.on(Event(name, **fields))


class Dispatcher:
    """Routers in priority order. `resolve` finds the handler; unmatched callbacks are logged, not errors."""

    def __init__(self, routers: Iterable[Router]) -> None:
        self.routers = list(routers)

    def resolve(self, msg: Inbound) -> tuple[Handler, dict[str, Any]] | None:
        for router in self.routers:
            for route in router.routes:
                data = route.match(msg)
                if data is not None:
                    return route.handler, data
        return None

    async def dispatch(self, msg: Inbound, ctx: "Context") -> bool:
        found = self.resolve(msg)
        if found is None:
            log.info("no handler for %s", msg.kind)
            return False
        handler, data = found
        ctx.data = data
        await handler(msg, ctx)
        return True
