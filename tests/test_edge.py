"""The edge comes first (bot/edge.py): requests people and WeCom wait on are counted while in progress,
and the tracker and the inbox worker give way to them, catching up once they ease."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.edge import GIVE_WAY_FACTOR, EdgeLoad
from bot.models import Event
from bot.wecom.inbound import CallbackCrypto
from tests.conftest import CB_AES_KEY, CB_TOKEN, CORP_ID
from tests.test_callback import Poster, envelope, text_xml
from tests.test_links import PHONE_UA, share


async def test_an_idle_edge_costs_no_wait() -> None:
    assert await EdgeLoad().give_way(0.5) == 0.0


async def test_the_wait_ends_when_the_last_edge_request_leaves() -> None:
    edge = EdgeLoad()
    edge.entered()
    edge.entered()
    loop = asyncio.get_running_loop()
    loop.call_later(0.02, edge.left)
    loop.call_later(0.05, edge.left)
    waited = await edge.give_way(1.0)  # up to 4 s allowed
    assert 0.04 <= waited < 0.5
    assert edge.busy == 0


async def test_the_wait_is_capped_by_the_work_before_it_and_by_the_cap() -> None:
    edge = EdgeLoad()
    edge.entered()  # never leaves
    assert 0.9 * 0.02 * GIVE_WAY_FACTOR <= await edge.give_way(0.02) < 0.3
    assert 0.05 <= await edge.give_way(10.0, cap=0.05) < 0.3


async def test_a_stop_ends_the_wait() -> None:
    edge = EdgeLoad()
    edge.entered()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.03, stop.set)
    assert await edge.give_way(10.0, cap=5.0, stop=stop) < 0.5
    assert await edge.give_way(10.0, cap=5.0, stop=stop) == 0.0  # already stopping: no wait at all


class Recording(EdgeLoad):
    """The runtime's edge, noting each request that entered it and the count it left behind."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = 0

    def entered(self) -> None:
        self.entries += 1
        super().entered()


async def test_edge_routes_are_counted_while_in_progress_and_others_are_not(beacon: Any, lib: Path) -> None:  # noqa: F811
    beacon.rt.edge = edge = Recording()
    s = await share(beacon, "case-auto-parts-oee")
    async with aiohttp.ClientSession(headers={"User-Agent": PHONE_UA}) as http:
        url = str(beacon.client.make_url(f"/l/{s['token']}"))
        async with http.get(url) as resp:
            assert resp.status == 200
        assert (edge.entries, edge.busy) == (1, 0)
        async with http.get(url + "/file", allow_redirects=False) as resp:
            assert resp.status in (200, 404)  # an attachment or none; counted either way
        async with http.post(url + "/b", json={"k": "forged"}) as resp:
            assert resp.status == 403
        async with http.get(str(beacon.client.make_url("/l/NoSuchToken000000000000"))) as resp:
            assert resp.status == 404
        async with http.post(url + "/gate", data={"name": "张伟"}) as resp:
            assert resp.status in (403, 404)  # no form token (or no form: the item is not gated); counted either way
    assert (edge.entries, edge.busy) == (5, 0)
    poster = Poster(beacon.client, beacon.clock.now().timestamp())
    assert (await poster.post(text_xml("rep1", "帮助", "81001"))).status == 200
    assert (edge.entries, edge.busy) == (6, 0)
    for path in ("/healthz", "/metrics", "/login"):
        await beacon.client.get(path)
    assert (edge.entries, edge.busy) == (6, 0)  # pages and probes are not the edge


async def test_a_request_is_counted_until_it_is_answered(beacon: Any, lib: Path) -> None:  # noqa: F811
    """While an open waits for its event's commit, the edge counts it."""
    s = await share(beacon, "case-auto-parts-oee")
    rt = beacon.rt
    seen: list[int] = []
    original = rt.events.link_event

    async def watched(*args: Any, **kw: Any) -> None:
        seen.append(rt.edge.busy)
        await original(*args, **kw)

    rt.events.link_event = watched  # type: ignore[method-assign]
    try:
        async with aiohttp.ClientSession(headers={"User-Agent": PHONE_UA}) as http:
            async with http.get(str(beacon.client.make_url(f"/l/{s['token']}"))) as resp:
                assert resp.status == 200
    finally:
        rt.events.link_event = original  # type: ignore[method-assign]
    assert seen == [1] and rt.edge.busy == 0


async def test_a_request_counts_once_its_body_has_arrived_not_while_a_slow_client_sends_it(beacon: Any) -> None:
    """A callback whose body trickles in: the edge is idle until its last byte, then counts it while
    it is handled. A body that never comes never counts."""
    beacon.rt.edge = edge = Recording()
    crypto = CallbackCrypto(CB_TOKEN, CB_AES_KEY, CORP_ID)
    enc = crypto.encrypt(text_xml("rep1", "帮助", "81002"), timestamp=str(int(beacon.clock.now().timestamp())), nonce="n0nce")
    body = envelope(enc["encrypt"]).encode()
    head = (f"POST /wecom/callback?msg_signature={enc['msg_signature']}&timestamp={enc['timestamp']}&nonce={enc['nonce']} HTTP/1.1\r\n"
            f"Host: beacon\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    url = beacon.client.make_url("/")
    reader, writer = await asyncio.open_connection(url.host, url.port)
    stalled_reader, stalled = await asyncio.open_connection(url.host, url.port)
    try:
        stalled.write(head + body[:10])  # and nothing more, ever
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        await stalled.drain()
        await asyncio.sleep(0.3)
        assert (edge.entries, edge.busy) == (0, 0)
        writer.write(body[len(body) // 2:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.startswith(b"HTTP/1.1 200")
        assert (edge.entries, edge.busy) == (1, 0)
    finally:
        writer.close()
        stalled.close()
    assert await beacon.rt.edge.give_way(0.5) == 0.0  # the stalled one is still not counted


def gave_way(beacon: Any) -> float:
    return float(beacon.rt.metrics.tracker_gave_way._value.get())


async def unprocessed(beacon: Any) -> int:
    async with beacon.rt.read_sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Event).where(Event.processed.is_(False))) or 0)


async def caught_up(beacon: Any, timeout_s: float = 60) -> None:
    """Until the tracker has processed every event (or the time is up: the caller's asserts tell)."""
    deadline = time.monotonic() + timeout_s
    while await unprocessed(beacon) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def opens(beacon: Any) -> int:
    async with beacon.rt.read_sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Event).where(Event.type == "open")) or 0)


async def test_the_tracker_gives_way_while_opens_stream_in_and_catches_up_after(beacon: Any, lib: Path) -> None:  # noqa: F811
    """Eight readers opening links as fast as they are answered, each open a new visitor (so a forward
    too): the tracker falls behind, gives way, and once they stop processes every event."""
    rt = beacon.rt
    rt.tracker.batch = 4  # short passes: many chances to give way (the test's readers share its core)
    s = await share(beacon, "case-auto-parts-oee")
    url = str(beacon.client.make_url(f"/l/{s['token']}"))
    streaming, answered = True, 0

    async def reader(http: aiohttp.ClientSession) -> None:
        nonlocal answered
        while streaming:  # each from an address of its own (loopback is a trusted proxy): no per-address limit
            async with http.get(url, headers={"X-Forwarded-For": f"10.8.{answered // 250}.{answered % 250}"}) as resp:
                assert resp.status == 200
                answered += 1

    tracker = asyncio.create_task(rt.tracker.run())
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": PHONE_UA}) as http:
            readers = [asyncio.create_task(reader(http)) for _ in range(8)]
            await asyncio.sleep(1.0)
            streaming = False
            await asyncio.gather(*readers)
        during = gave_way(beacon)
        await caught_up(beacon)
    finally:
        rt.tracker.request_stop()
        await tracker
    assert await opens(beacon) == answered > 50  # every answered open stored
    assert await unprocessed(beacon) == 0  # and processed after the stream
    assert during > 0, "the tracker never gave way while opens streamed in"
    assert gave_way(beacon) == during  # with nothing arriving, it caught up without waiting


async def test_opens_one_at_a_time_barely_make_the_tracker_wait(beacon: Any, lib: Path) -> None:  # noqa: F811
    """A reader opening links one after another, ten a second, the tracker taking one event a pass:
    the edge is idle when most passes end, and a pass that finds an open in progress waits only until
    it is answered, not four times the pass."""
    rt = beacon.rt
    rt.tracker.batch = 1  # every pass ends with "more may be waiting": it asks the edge each time
    s = await share(beacon, "case-auto-parts-oee")
    url = str(beacon.client.make_url(f"/l/{s['token']}"))
    tracker = asyncio.create_task(rt.tracker.run())
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers={"User-Agent": PHONE_UA}) as http:
            for n in range(10):
                async with http.get(url, headers={"X-Forwarded-For": f"10.9.0.{n}"}) as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.1)
        await caught_up(beacon)
    finally:
        rt.tracker.request_stop()
        await tracker
    assert await opens(beacon) == 10 and await unprocessed(beacon) == 0
    assert rt.metrics.tracker_events._value.get() == 19  # the opens, and forwards of all but the first (the contact)
    assert gave_way(beacon) < 0.05


@pytest.fixture
def poster(beacon: Any) -> Poster:
    return Poster(beacon.client, beacon.clock.now().timestamp())


async def test_the_inbox_workers_wait_is_capped_whatever_its_transaction_took(beacon: Any, poster: Poster) -> None:
    """A transaction of two seconds (a lock wait, say) while an edge request stays in progress: the
    worker waits GIVE_WAY_MAX_S, not eight seconds (its claimed rows' lease runs meanwhile)."""
    from bot.edge import GIVE_WAY_MAX_S

    rt = beacon.rt
    assert (await poster.post(text_xml("rep1", "帮助", "82001"))).status == 200
    slow = 0

    def lock_wait(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal slow
        if statement.startswith("UPDATE inbox") and "processed_at" in statement and not slow:  # marking done
            slow = 1
            time.sleep(2.0)

    from sqlalchemy import event as sa_event

    sa_event.listen(rt.engine.sync_engine, "before_cursor_execute", lock_wait)
    rt.edge.entered()  # a request that never ends
    began = time.perf_counter()
    try:
        assert await rt.inbox.drain() == 1
    finally:
        rt.edge.left()
        sa_event.remove(rt.engine.sync_engine, "before_cursor_execute", lock_wait)
    waited = float(rt.metrics.inbox_gave_way._value.get())
    assert GIVE_WAY_MAX_S <= waited < GIVE_WAY_MAX_S + 0.5
    assert time.perf_counter() - began < 2.0 + GIVE_WAY_MAX_S + 1.0
