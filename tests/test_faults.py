"""Faults with real processes: kill -9 during callback and link-open storms, then restart.

Every acknowledged callback is processed exactly once, every link open answered 200 is stored, and no
reply reaches WeCom twice.
"""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import AGENT_ID, CB_AES_KEY, CB_TOKEN, CORP_ID
from tests.helpers import ROOT, Server, free_port, run_cli, wait_for, write_config

pytestmark = pytest.mark.slow
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148 MicroMessenger/8.0.47"


async def _storm(server_url: str, driver: Any, token: str, start: int, count: int, acked: set[int], opened: set[str]) -> None:
    """Callbacks and link opens in parallel until the server dies or all are sent."""
    async def callback(n: int) -> None:
        try:
            result = await driver.send_text(f"u{n}", f"storm-{n}", msg_id=9_000_000 + n)
            if result.status == 200:
                acked.add(n)
        except (aiohttp.ClientError, ConnectionError):
            pass

    async def open_link(n: int, http: aiohttp.ClientSession) -> None:
        cookie = f"storm{n:019d}"[:24].ljust(24, "x")
        try:
            async with http.get(f"{server_url}/l/{token}", headers={"User-Agent": UA, "Cookie": f"bcn_v={cookie}"}) as resp:
                if resp.status == 200:
                    opened.add(cookie)
        except (aiohttp.ClientError, ConnectionError):
            pass

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(callback(n) for n in range(start, start + count)),
                             *(open_link(n, http) for n in range(start, start + count)))


async def test_kill_during_storms_then_restart(tmp_path: Path, aiohttp_server: Any) -> None:
    from bot.wecom.simulator import CallbackDriver, SimState, create_simulator_app

    state = SimState(CORP_ID, "sim-secret-0123456789", AGENT_ID)
    sim = await aiohttp_server(create_simulator_app(state))
    db = tmp_path / "beacon.db"
    port = free_port()
    config = write_config(tmp_path / "beacon.toml", db_url=f"sqlite+aiosqlite:///{db}", api_base=str(sim.make_url("")).rstrip("/"),
                          port=port, extra="[security]\npublic_per_ip_per_minute = 0\n[inbox]\nlease_s = 3\noutbox_lease_s = 3\n")
    assert run_cli("--config", str(config), "migrate").returncode == 0
    assert run_cli("--config", str(config), "content", "import", str(ROOT / "content" / "library")).returncode == 0
    rng = random.Random(7)
    acked: set[int] = set()
    opened: set[str] = set()
    token = None
    async with aiohttp.ClientSession() as http:
        for round_no in range(3):
            server = Server(config, port)
            await server.start()
            if token is None:
                async with http.post(f"{server.url}/api/shares", headers={"Authorization": "Bearer test-admin-token"},
                                     json={"content": "case-auto-parts-oee", "rep": "rep1", "contact": None}) as resp:
                    token = (await resp.json())["token"]
            driver = CallbackDriver(http, f"{server.url}/wecom/callback", token=CB_TOKEN, encoding_aes_key=CB_AES_KEY,
                                    corp_id=CORP_ID, agent_id=AGENT_ID, state=state)
            storm = asyncio.create_task(_storm(server.url, driver, token, round_no * 1000, 150, acked, opened))
            if round_no < 2:
                async def some_acked(r: int = round_no) -> bool:
                    return len([n for n in acked if r * 1000 <= n < r * 1000 + 1000]) >= 20

                await wait_for(some_acked, timeout=30, interval=0.01)
                await asyncio.sleep(rng.uniform(0.0, 0.15))
                server.kill()  # mid-storm, at a random point
                await storm
            else:
                await storm
                await _settle(http, server.url)
                assert await server.stop() == 0
    con = sqlite3.connect(db)
    try:
        done = {int(k.removeprefix("msg:")) - 9_000_000 for (k,) in con.execute("SELECT dedupe_key FROM inbox WHERE status = 'done'")}
        pending = con.execute("SELECT count(*) FROM inbox WHERE status <> 'done'").fetchone()[0]
        stored_cookies = {c for (c,) in con.execute(
            "SELECT v.cookie_id FROM events e JOIN visitors v ON v.id = e.visitor_id WHERE e.type = 'open'")}
    finally:
        con.close()
    assert acked, "no callback was acknowledged"
    assert acked <= done, f"acknowledged but lost: {sorted(acked - done)[:10]}"
    assert pending == 0
    assert opened <= stored_cookies, f"answered but not stored: {len(opened - stored_cookies)}"
    replies: dict[str, int] = {}
    for message in state.delivered:
        text = message.payload.get("text", {}).get("content", "")
        replies[text] = replies.get(text, 0) + 1
    assert len([n for n in acked if n < 2000]) > 5, "the kills came before anything was acknowledged"
    for n in acked:
        matching = [t for t in replies if re.search(rf"storm-{n}\D", t)]
        assert len(matching) == 1 and replies[matching[0]] == 1, f"reply to storm-{n}: {matching}"


async def _settle(http: aiohttp.ClientSession, url: str) -> None:
    async def idle() -> bool:
        async with http.get(f"{url}/healthz") as resp:
            body = await resp.json()
            return body["inbox"]["pending"] == 0 and body["outbox"]["pending"] == 0

    await wait_for(idle, timeout=90)
