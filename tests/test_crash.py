"""Crash safety with real processes: an acknowledged callback survives kill -9 and is processed once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import AGENT_ID, CB_AES_KEY, CB_TOKEN, CORP_ID
from tests.helpers import Server, free_port, run_cli, wait_for, write_config

pytestmark = pytest.mark.slow


async def test_kill_after_ack_before_processing_then_restart(tmp_path: Path, aiohttp_server: Any) -> None:
    from bot.wecom.simulator import CallbackDriver, SimState, create_simulator_app

    state = SimState(CORP_ID, "sim-secret-0123456789", AGENT_ID)
    sim = await aiohttp_server(create_simulator_app(state))
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}"
    port = free_port()
    config = write_config(tmp_path / "beacon.toml", db_url=db_url, api_base=str(sim.make_url("")).rstrip("/"), port=port)
    assert run_cli("--config", str(config), "migrate").returncode == 0

    # First life: accepts and stores, processes nothing (a front-only process), then dies hard.
    server = Server(config, port, env={"BEACON_INBOX_WORKERS": "0"})
    await server.start()
    async with aiohttp.ClientSession() as http:
        driver = CallbackDriver(
            http, f"{server.url}/wecom/callback",
            token=CB_TOKEN, encoding_aes_key=CB_AES_KEY, corp_id=CORP_ID, agent_id=AGENT_ID, state=state,
        )
        status, _ = await driver.send_text("rep1", "帮助")
        assert status == 200
        server.kill()
        assert state.received_for("/cgi-bin/message/send") == []

        # Second life: picks the stored callback up and answers it, exactly once.
        server = Server(config, port)
        await server.start()
        try:
            await wait_for(lambda: _async_len(state.received_for("/cgi-bin/message/send")))
            status, _ = await driver.redeliver()  # WeCom's late retry of the same message
            assert status == 200
            await _settle(http, server.url)
        finally:
            assert await server.stop() == 0
    sends = state.received_for("/cgi-bin/message/send")
    assert len(sends) == 1
    assert sends[0].payload["touser"] == "rep1"
    # startup's objects are kept out of the collector's full passes (long pauses otherwise)
    frozen = re.search(r"(\d+) startup objects frozen out of the garbage collector", server.log.read_text())
    assert frozen is not None and int(frozen.group(1)) > 10_000


async def _async_len(items: list[Any]) -> int:
    return len(items)


async def _settle(http: aiohttp.ClientSession, url: str) -> None:
    async def idle() -> bool:
        async with http.get(f"{url}/healthz") as resp:
            return (await resp.json())["inbox"]["pending"] == 0

    await wait_for(idle)


def test_startup_configures_the_mappers_before_freezing() -> None:
    """`serve` configures the ORM's mappers at startup, not in its first request or job."""
    import subprocess
    import sys

    code = ("from sqlalchemy import inspect; from bot.models import JobRun; from bot.serve import freeze_startup_heap; "
            "before = inspect(JobRun).configured; freeze_startup_heap(); print(before, inspect(JobRun).configured)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"]
