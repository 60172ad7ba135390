"""WeComClient against the simulator over loopback HTTP: token cache, refresh, retries, backoff, timeouts."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bot.wecom.client import WeComClient, WeComError, WeComUnavailable
from bot.wecom.simulator import SimState, create_simulator_app

CORP_ID = "wwsim0000000001"
SECRET = "sim-secret-do-not-log-0123456789"
AGENT_ID = 1000002
SEND = "/cgi-bin/message/send"
GETTOKEN = "/cgi-bin/gettoken"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """An injected sleep that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def text(content: str = "hello", touser: str = "rep1") -> dict[str, Any]:
    return {"touser": touser, "msgtype": "text", "agentid": AGENT_ID, "text": {"content": content}}


@pytest.fixture
def sim_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(sim_clock: FakeClock) -> SimState:
    return SimState(CORP_ID, SECRET, AGENT_ID, clock=sim_clock, seed=7)


@pytest.fixture
async def api_base(aiohttp_server: Any, state: SimState) -> str:
    server = await aiohttp_server(create_simulator_app(state))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_client(http: aiohttp.ClientSession, api_base: str, sleep: RecordingSleep) -> Callable[..., WeComClient]:
    def make(**overrides: Any) -> WeComClient:
        options: dict[str, Any] = {"api_base": api_base, "corp_id": CORP_ID, "secret": SECRET, "sleep": sleep}
        options.update(overrides)
        return WeComClient(http, **options)

    return make


def errcodes(state: SimState, path: str) -> list[int | None]:
    return [r.errcode for r in state.received_for(path)]


async def test_token_is_cached_across_calls(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    for n in range(3):
        answer = await client.post(SEND, text(f"m{n}"))
        assert answer["errcode"] == 0 and answer["msgid"]
    assert len(state.received_for(GETTOKEN)) == 1
    assert errcodes(state, SEND) == [0, 0, 0]
    assert len(state.messages_to("rep1")) == 3


async def test_concurrent_callers_share_one_refresh(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    answers = await asyncio.gather(*(client.post(SEND, text(f"c{n}", f"rep{n}")) for n in range(20)))
    assert all(a["errcode"] == 0 for a in answers)
    assert len(state.received_for(GETTOKEN)) == 1
    tokens = {r.path_qs.split("access_token=")[1] for r in state.received_for(SEND)}
    assert len(tokens) == 1


async def test_token_refreshed_ahead_of_expiry(make_client: Callable[..., WeComClient], state: SimState) -> None:
    clock = FakeClock()
    client = make_client(clock=clock)
    await client.access_token()
    clock.advance(7200 - 301)
    await client.access_token()
    assert len(state.received_for(GETTOKEN)) == 1
    clock.advance(2)  # now inside the 5-minute margin
    await client.access_token()
    assert len(state.received_for(GETTOKEN)) == 2


async def test_force_refresh_fetches_again(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    await client.access_token()
    await client.access_token(force_refresh=True)
    assert len(state.received_for(GETTOKEN)) == 2


async def test_expired_token_mid_run_refreshes_and_retries(
    make_client: Callable[..., WeComClient], state: SimState
) -> None:
    client = make_client()
    await client.post(SEND, text("before"))
    state.expire_all_tokens()
    answer = await client.post(SEND, text("after"))
    assert answer["errcode"] == 0
    assert errcodes(state, SEND) == [0, 42001, 0]
    assert len(state.received_for(GETTOKEN)) == 2
    assert [m.payload["text"]["content"] for m in state.messages_to("rep1")] == ["before", "after"]


async def test_revoked_token_refreshes_and_retries(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    await client.post(SEND, text("before"))
    state.revoke_tokens()
    assert (await client.post(SEND, text("after")))["errcode"] == 0
    assert errcodes(state, SEND) == [0, 40014, 0]
    assert len(state.received_for(GETTOKEN)) == 2


async def test_40001_from_an_api_call_refreshes_once(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    state.fail_next(SEND, 40001)
    assert (await client.post(SEND, text()))["errcode"] == 0
    assert errcodes(state, SEND) == [40001, 0]
    assert len(state.received_for(GETTOKEN)) == 2


async def test_token_error_after_refresh_is_raised(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    state.fail_next(SEND, 42001, times=2)
    with pytest.raises(WeComError) as caught:
        await client.post(SEND, text())
    assert caught.value.errcode == 42001 and caught.value.path == SEND
    assert errcodes(state, SEND) == [42001, 42001]


async def test_rate_limit_backs_off_with_growing_delays(
    make_client: Callable[..., WeComClient], state: SimState, sleep: RecordingSleep
) -> None:
    client = make_client()
    state.fail_next(SEND, 45009, times=2)
    state.fail_next(SEND, 45033, times=1)
    assert (await client.post(SEND, text()))["errcode"] == 0
    assert errcodes(state, SEND) == [45009, 45009, 45033, 0]
    assert len(sleep.delays) == 3
    assert 0.5 <= sleep.delays[0] <= 0.625
    assert sleep.delays[0] < sleep.delays[1] < sleep.delays[2]
    assert len(state.received_for(GETTOKEN)) == 1


async def test_busy_is_retried_three_times_then_raised(
    make_client: Callable[..., WeComClient], state: SimState, sleep: RecordingSleep
) -> None:
    client = make_client()
    state.fail_next(SEND, -1, times=10)
    with pytest.raises(WeComError) as caught:
        await client.post(SEND, text())
    assert caught.value.errcode == -1
    assert not isinstance(caught.value, WeComUnavailable)
    assert errcodes(state, SEND) == [-1, -1, -1, -1]  # the first try and three retries
    assert len(sleep.delays) == 3
    assert state.messages_to("rep1") == []


async def test_bad_secret_raises_40001_without_retry(
    make_client: Callable[..., WeComClient], state: SimState, sleep: RecordingSleep
) -> None:
    client = make_client(secret="wrong")
    with pytest.raises(WeComError) as caught:
        await client.post(SEND, text())
    assert caught.value.errcode == 40001 and caught.value.path == GETTOKEN
    assert len(state.received_for(GETTOKEN)) == 1
    assert state.received_for(SEND) == []
    assert sleep.delays == []


async def test_other_errcodes_raise_immediately(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    with pytest.raises(WeComError) as caught:
        await client.post(SEND, {**text(), "agentid": 999})
    assert caught.value.errcode == 40056
    assert "invalid agentid" in caught.value.errmsg
    assert errcodes(state, SEND) == [40056]


async def test_timeout_becomes_unavailable_after_retries(
    make_client: Callable[..., WeComClient], state: SimState, sleep: RecordingSleep
) -> None:
    calls: list[tuple[str, int]] = []
    client = make_client(timeout=0.05, max_retries=2, on_call=lambda path, code: calls.append((path, code)))
    await client.access_token()
    state.delay_next(SEND, 30, times=3)
    with pytest.raises(WeComUnavailable) as caught:
        await client.post(SEND, text())
    assert caught.value.errcode == -2
    assert len(state.received_for(SEND)) == 3
    assert calls == [(GETTOKEN, 0)] + [(SEND, -2)] * 3
    assert len(sleep.delays) == 2


async def test_http_5xx_is_retried(make_client: Callable[..., WeComClient], state: SimState) -> None:
    calls: list[tuple[str, int]] = []
    client = make_client(on_call=lambda path, code: calls.append((path, code)))
    state.fail_http_next(SEND, 502, times=2)
    assert (await client.post(SEND, text()))["errcode"] == 0
    assert [c for c in calls if c[0] == SEND] == [(SEND, -2), (SEND, -2), (SEND, 0)]


async def test_connection_refused_is_unavailable(http: aiohttp.ClientSession, sleep: RecordingSleep) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = WeComClient(http, api_base=f"http://127.0.0.1:{port}", corp_id=CORP_ID, secret=SECRET, sleep=sleep)
    with pytest.raises(WeComUnavailable) as caught:
        await client.get("/cgi-bin/ticket/get", {"type": "agent_config"})
    assert caught.value.path == GETTOKEN
    assert SECRET not in str(caught.value)
    assert len(sleep.delays) == 3


async def test_json_is_sent_as_raw_utf8(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    await client.post(SEND, text("你好，客户 \\u4f60"))
    assert errcodes(state, SEND) == [0]  # no \uXXXX escapes, which WeCom would refuse with 40033
    assert state.messages_to("rep1")[0].payload["text"]["content"] == "你好，客户 \\u4f60"


async def test_get_and_upload(make_client: Callable[..., WeComClient], state: SimState) -> None:
    client = make_client()
    ticket = await client.get("/cgi-bin/ticket/get", {"type": "agent_config"})
    assert ticket["ticket"] and ticket["expires_in"] == 7200
    media = await client.upload(
        "/cgi-bin/media/upload", params={"type": "file"}, filename="brief.pdf", data=b"%PDF-1.7"
    )
    assert state.media[media["media_id"]].data == b"%PDF-1.7"
    assert state.media[media["media_id"]].filename == "brief.pdf"


async def test_secret_and_token_never_logged(
    make_client: Callable[..., WeComClient], state: SimState, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="beacon.wecom")
    client = make_client()
    await client.post(SEND, text())
    state.expire_all_tokens()
    state.fail_next(SEND, 45009)
    await client.post(SEND, text("again"))
    token = await client.access_token()
    assert "beacon.wecom" in {r.name for r in caplog.records}
    assert SECRET not in caplog.text and token not in caplog.text
    assert SECRET not in repr(client) and token not in repr(client)
