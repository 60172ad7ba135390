"""Helpers for tests that run Beacon as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, *, db_url: str, api_base: str, port: int, extra: str = "") -> Path:
    from tests.conftest import AGENT_ID, CB_AES_KEY, CB_TOKEN, CORP_ID, CORP_SECRET

    path.write_text(
        f"""
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
admin_token = "test-admin-token"
secret_key = "test-secret-key-for-signing"
[database]
url = "{db_url}"
[wecom]
corp_id = "{CORP_ID}"
agent_id = {AGENT_ID}
secret = "{CORP_SECRET}"
token = "{CB_TOKEN}"
encoding_aes_key = "{CB_AES_KEY}"
api_base = "{api_base}"
[logging]
format = "text"
[[team.members]]
userid = "rep1"
name = "张三"
{extra}
""",
        encoding="utf-8",
    )
    return path


def bot_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bot", *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
    full_env.update(env or {})
    return subprocess.run(bot_cmd(*args), cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


class Server:
    """`python -m bot serve` in a subprocess; `kill()` is SIGKILL (no cleanup), `stop()` SIGTERM."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.args = args
        self.port = port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")} | (env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30) -> None:
        with open(self.log, "a", encoding="utf-8") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                bot_cmd("--config", str(self.config), "serve", *self.args), cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                try:
                    async with http.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(self.log.read_text()[-2000:])
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, 20)
        return self.proc.returncode


async def wait_for(predicate: Any, timeout: float = 15, interval: float = 0.05) -> Any:
    """Poll an async predicate until truthy (for subprocess tests only, bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def engine_without_busy_wait(sqlite_url: str) -> Any:
    """The app's engine for a SQLite file, but with SQLite's busy handler off on every connection (after
    the app's own pragmas): a BEGIN IMMEDIATE that meets the write lock fails at once, so a test sees
    whether writers of this process waited for their turn at the write gate instead."""
    from sqlalchemy import event

    from bot.db import create_engine
    from tests.conftest import make_settings

    engine = create_engine(make_settings(sqlite_url, database={"url": sqlite_url, "busy_timeout_ms": 10_000}).database)

    @event.listens_for(engine.sync_engine, "connect")
    def no_busy_wait(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA busy_timeout = 0")

    return engine
