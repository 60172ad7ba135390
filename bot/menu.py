"""The self-built app's custom menu: built from `[menu]` and created in WeCom with `menu/create`.

Each button is a `click` item whose EventKey (tasks, hot, find, help) is handled in
handlers/commands.py by the same code as the matching chat command.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from bot.config import MenuSettings, Settings
from bot.wecom.client import WeComClient

MENU_CREATE = "/cgi-bin/menu/create"


def menu_payload(menu: MenuSettings) -> dict[str, Any]:
    """WeCom's menu/create body: up to 3 buttons, each a click item or a sub-menu of up to 5."""
    buttons: list[dict[str, Any]] = []
    for button in menu.buttons:
        if button.sub_buttons:
            subs = [{"type": "click", "name": item.name, "key": item.key} for item in button.sub_buttons]
            buttons.append({"name": button.name, "sub_button": subs})
        else:
            buttons.append({"type": "click", "name": button.name, "key": button.key})
    return {"button": buttons}


async def sync_menu(settings: Settings) -> dict[str, Any]:
    """Create (replace) the app's menu in WeCom; returns the payload sent. Raises WeComError."""
    payload = menu_payload(settings.menu)
    w = settings.wecom
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=w.timeout_s)) as http:
        client = WeComClient(http, api_base=w.api_base, corp_id=w.corp_id, secret=w.secret, timeout=w.timeout_s)
        await client.post(MENU_CREATE, payload, params={"agentid": w.agent_id})
    return payload


def run_sync(settings: Settings) -> int:
    """`python -m bot menu sync`: 0 created, 1 WeCom refused, 2 WeCom not configured."""
    import click

    from bot.wecom.client import WeComError

    w = settings.wecom
    if not (w.corp_id and w.secret and w.agent_id):
        click.echo("config error: wecom.corp_id, wecom.secret and wecom.agent_id are needed to create the menu", err=True)
        return 2
    try:
        payload = asyncio.run(sync_menu(settings))
    except WeComError as exc:
        click.echo(f"WeCom refused the menu: {exc}", err=True)
        return 1
    names = ", ".join(b["name"] for b in payload["button"])
    click.echo(f"menu created for agent {w.agent_id}: {names}")
    return 0
