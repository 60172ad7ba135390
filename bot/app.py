"""The app factory: `create_app(settings)` builds the aiohttp application and everything it uses."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from bot.clock import Clock
from bot.config import Settings
from bot.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
STATIC_DIR = Path(__file__).resolve().parent.parent / "content" / "static"


def routers() -> list:
    """Callback routers in priority order: first match wins."""
    from handlers import alert_cards, channels, commands, kf

    # channels and kf before commands: the commands router ends in a catch-all for rep text.
    return [channels.router, kf.router, alert_cards.router, commands.router]


def create_app(settings: Settings, *, clock: Clock | None = None, background: bool = True) -> web.Application:
    """Build the application. `background=False` leaves the inbox/outbox workers to the caller (tests)."""
    from handlers import callback, contacts_api, content_api, health, link_oauth, links
    from handlers.api import admin_auth
    from handlers.security import ip_rate_limit, security_headers
    from handlers.unavailable import THROTTLE, Throttle, unavailable

    app = web.Application(client_max_size=settings.server.max_body_bytes,
                          middlewares=[security_headers, unavailable, ip_rate_limit, admin_auth])
    runtime = Runtime.build(settings, routers=routers(), clock=clock)
    app[RUNTIME] = runtime
    app[THROTTLE] = Throttle()

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await runtime.start(background=background)
        yield
        await runtime.stop()

    app.cleanup_ctx.append(lifecycle)
    app.add_routes(health.routes)
    app.add_routes(callback.routes)
    app.add_routes(links.routes)
    app.add_routes(link_oauth.routes)
    app.add_routes(contacts_api.routes)
    app.router.add_static("/static/", STATIC_DIR, name="static", append_version=False)
    app.add_routes(content_api.routes)
    from handlers import channels_api

    app.add_routes(channels_api.routes)
    from handlers import mass_api, tasks_api

    app.add_routes(tasks_api.routes)
    app.add_routes(mass_api.routes)
    from handlers import admin_pages, auth_pages, dashboard, sidebar, task_pages

    for pages in (auth_pages, sidebar, dashboard, admin_pages, task_pages):
        app.add_routes(pages.routes)
    return app
