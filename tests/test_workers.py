"""`python -m bot serve --workers N`: N processes on one port under a supervisor that restarts a worker
that dies and stops them all on SIGTERM; and the supervisor's give-up when workers die at start."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import Server, free_port, run_cli, wait_for, write_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def pids_answering(url: str, tries: int = 60) -> set[int]:
    """The worker pids that answer /healthz over `tries` fresh connections."""
    seen: set[int] = set()
    for _ in range(tries):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
                seen.add((await resp.json())["pid"])
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_the_port_are_restarted_and_stop_together(tmp_path: Path, pg_database: str) -> None:
    port = free_port()
    config = write_config(tmp_path / "beacon.toml", db_url=pg_database, api_base="http://127.0.0.1:9", port=port)
    assert run_cli("--config", str(config), "migrate").returncode == 0
    server = Server(config, port, args=("--workers", "2"))
    await server.start()
    try:
        first = await pids_answering(server.url)
        assert len(first) == 2, f"both workers answer on the one port: {first}"
        assert server.proc is not None and server.proc.pid not in first  # the supervisor serves nothing itself

        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            now = await pids_answering(server.url, tries=20)
            return victim not in now and len(now) == 2

        await wait_for(replaced, timeout=30, interval=0.2)
        workers = await pids_answering(server.url)
        assert len(workers) == 2 and victim not in workers
    finally:
        code = await server.stop()
    assert code == 0
    assert not [pid for pid in workers if alive(pid)], "SIGTERM to the supervisor stops every worker"
    log = server.log.read_text(encoding="utf-8")
    assert f"pid {victim}) exited with -9" in log and "all workers stopped" in log
    assert log.count("shutting down: finishing stored work") == 2
    assert log.count("Scheduler started") == log.count("worker 0 started") >= 1, "the scheduler runs in worker 0 only"


async def test_supervisor_gives_up_when_workers_keep_dying_at_start(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import bot.serve

    monkeypatch.setattr(bot.serve, "RESTART_FIRST_S", 0.01)
    dies = [sys.executable, "-c", "import sys; sys.exit(3)"]  # e.g. its port is taken, or the config is bad
    with caplog.at_level(logging.INFO, logger="beacon.serve"):
        code = await asyncio.wait_for(bot.serve.supervise(lambda i: dies, 2, stop_timeout_s=5), 30)
    assert code == 1
    assert "exited with 3" in caplog.text
    assert "workers keep exiting at start (5 times in a row); stopping" in caplog.text


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
POLITE = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); time.sleep(60)"


@pytest.mark.parametrize("first,expected", [(STUBBORN, 1), (POLITE, 0)])
async def test_supervisor_stops_workers_on_sigterm(first: str, expected: int) -> None:
    """SIGTERM to the supervisor stops every worker; one that ignores it is killed after the stop
    timeout, and the exit code says so."""
    import bot.serve

    argv = {0: [sys.executable, "-c", first], 1: [sys.executable, "-c", POLITE]}
    run: Any = asyncio.ensure_future(bot.serve.supervise(argv.__getitem__, 2, stop_timeout_s=1))
    await asyncio.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)  # lands in the supervisor's handler on this loop
    assert await asyncio.wait_for(run, 15) == expected


def test_workers_out_of_range_is_refused_with_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "beacon.toml", db_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}",
                          api_base="http://127.0.0.1:9", port=free_port())
    proc = run_cli("--config", str(config), "serve", "--workers", "0")
    assert proc.returncode == 2
    assert "--workers" in proc.stderr and "0" in proc.stderr


async def test_serving_warns_when_the_pools_could_outgrow_max_connections(tmp_path: Path, pg_database: str) -> None:
    """Pools that N processes could grow past the server's max_connections are named before serving
    (the keys to change): under a burst the server would refuse connections and requests answer 503."""
    from bot.config import DatabaseSettings
    from bot.db import connection_budget

    fits = DatabaseSettings(url=pg_database)  # 5 + 10 + 1 a process
    assert await connection_budget(fits, 1) is None
    warning = await connection_budget(fits, 1000)
    assert warning is not None and "1000 serving process(es) may open up to 16000" in warning
    assert "[database] pool_size 5 + max_overflow 10 + 1 for wake-ups" in warning and "max_connections" in warning
    assert await connection_budget(DatabaseSettings(url="sqlite+aiosqlite:///x.db"), 1000) is None
    assert await connection_budget(DatabaseSettings(url="postgresql+asyncpg://postgres@127.0.0.1:1/none"), 1000) is None

    port = free_port()
    config = write_config(tmp_path / "beacon.toml", db_url=pg_database, api_base="http://127.0.0.1:9", port=port)
    text = config.read_text(encoding="utf-8").replace("[database]\n", "[database]\npool_size = 200\nmax_overflow = 0\n", 1)
    config.write_text(text, encoding="utf-8")
    assert run_cli("--config", str(config), "migrate").returncode == 0
    server = Server(config, port, args=("--workers", "2"))
    await server.start()
    try:
        async def both() -> bool:  # it serves all the same: a warning, not a refusal
            return len(await pids_answering(server.url, tries=20)) == 2

        await wait_for(both, timeout=30, interval=0.2)
    finally:
        code = await server.stop()
    assert code == 0
    log = server.log.read_text(encoding="utf-8")
    assert log.count("may open up to") == 1  # said once, by the supervisor
    assert "2 serving process(es) may open up to 402 PostgreSQL connections" in log
    assert "lower [database] pool_size or max_overflow" in log
