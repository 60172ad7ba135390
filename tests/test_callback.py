"""The WeCom callback endpoint through real HTTP: crypto, hostile input, durable inbox, dedupe, retries."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.app import RUNTIME, create_app
from bot.models import Contact, InboxItem, OutboxItem
from bot.wecom.inbound import CallbackCrypto
from tests.conftest import AGENT_ID, CB_AES_KEY, CB_TOKEN, CORP_ID, make_settings

OFFICIAL = {
    "token": "QDG6eK",
    "corp_id": "wx5823bf96d3bd56c7",
    "encoding_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
}
OFFICIAL_ECHO = {
    "msg_signature": "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3",
    "timestamp": "1409659589",
    "nonce": "263014780",
    "echostr": "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==",
}
OFFICIAL_POST = {
    "msg_signature": "477715d11cdb4164915debcba66cb864d751f3e6",
    "timestamp": "1409659813",
    "nonce": "1372623149",
}
OFFICIAL_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/"
    "sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJ"
    "YuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGU"
    "callcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDY"
    "A5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)


def envelope(encrypt: str) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt>"
        f"<AgentID><![CDATA[{AGENT_ID}]]></AgentID></xml>"
    )


def text_xml(sender: str, content: str, msg_id: str, create: int = 1700000000) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
        f"<CreateTime>{create}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>{AGENT_ID}</AgentID></xml>"
    )


class Poster:
    """Signs and encrypts like WeCom, at the test clock's time."""

    def __init__(self, client: Any, now: float) -> None:
        self.client = client
        self.crypto = CallbackCrypto(CB_TOKEN, CB_AES_KEY, CORP_ID)
        self.now = now

    async def post(self, plaintext: str, *, timestamp: str | None = None, tamper: bool = False, nonce: str = "n0nce") -> Any:
        enc = self.crypto.encrypt(plaintext, timestamp=timestamp or str(int(self.now)), nonce=nonce)
        sig = enc["msg_signature"]
        if tamper:
            sig = ("0" if sig[0] != "0" else "1") + sig[1:]
        return await self.client.post(
            "/wecom/callback",
            params={"msg_signature": sig, "timestamp": enc["timestamp"], "nonce": enc["nonce"]},
            data=envelope(enc["encrypt"]),
        )


@pytest.fixture
def poster(beacon: Any) -> Poster:
    return Poster(beacon.client, beacon.clock.now().timestamp())


async def count(rt: Any, model: Any, *where: Any) -> int:
    async with rt.sessions() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where))


# --- WeCom's published sample through the real endpoint -----------------------------------------


@pytest.fixture
async def official_client(aiohttp_client: Any, sqlite_url: str) -> Any:
    settings = make_settings(sqlite_url, wecom={**OFFICIAL, "replay_window_s": 0})
    return await aiohttp_client(create_app(settings, background=False))


async def test_official_sample_url_verification(official_client: Any) -> None:
    resp = await official_client.get("/wecom/callback", params=OFFICIAL_ECHO)
    assert resp.status == 200
    assert await resp.text() == "1616140317555161061"


async def test_official_sample_url_verification_raw_plus(official_client: Any) -> None:
    # WeCom percent-encodes echostr, but a proxy may not: a raw '+' must still verify.
    query = "&".join(f"{k}={v}" for k, v in OFFICIAL_ECHO.items())
    resp = await official_client.get(f"/wecom/callback?{query}")
    assert resp.status == 200
    assert await resp.text() == "1616140317555161061"


async def test_official_sample_message_is_stored_and_parsed(official_client: Any) -> None:
    body = (
        "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>"
        f"<Encrypt><![CDATA[{OFFICIAL_ENCRYPT}]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"
    )
    resp = await official_client.post("/wecom/callback", params=OFFICIAL_POST, data=body)
    assert resp.status == 200
    assert await resp.text() == ""
    rt = official_client.app[RUNTIME]
    async with rt.sessions() as session:
        item = (await session.scalars(select(InboxItem))).one()
    assert item.dedupe_key == "msg:4561255354251345929"
    assert item.kind == "text"
    assert "<Content><![CDATA[hello]]></Content>" in item.body
    assert "mycreate" in item.body


async def test_official_sample_tampered_is_403(official_client: Any) -> None:
    params = dict(OFFICIAL_ECHO, msg_signature="5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd4")
    assert (await official_client.get("/wecom/callback", params=params)).status == 403


# --- hostile and malformed input ----------------------------------------------------------------


async def test_tampered_signature_is_403_and_stores_nothing(beacon: Any, poster: Poster) -> None:
    resp = await poster.post(text_xml("rep1", "帮助", "1001"), tamper=True)
    assert resp.status == 403
    assert await count(beacon.rt, InboxItem) == 0


async def test_stale_timestamp_is_403(beacon: Any, poster: Poster) -> None:
    old = str(int(poster.now) - 601)
    resp = await poster.post(text_xml("rep1", "帮助", "1002"), timestamp=old)
    assert resp.status == 403
    fresh = str(int(poster.now) - 590)
    assert (await poster.post(text_xml("rep1", "帮助", "1003"), timestamp=fresh)).status == 200


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b"<xml><Encrypt>",
        b"<xml><NoEncrypt>x</NoEncrypt></xml>",
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><xml><Encrypt>&lol;</Encrypt></xml>',
        b"\xff\xfe<\x00x\x00",
    ],
)
async def test_malformed_body_is_400(beacon: Any, body: bytes) -> None:
    resp = await beacon.client.post(
        "/wecom/callback", params={"msg_signature": "x", "timestamp": "1", "nonce": "n"}, data=body
    )
    assert resp.status == 400
    assert await count(beacon.rt, InboxItem) == 0


async def test_signed_but_undecryptable_is_400(beacon: Any, poster: Poster) -> None:
    from bot.wecom.inbound import signature

    junk = "bm90IHJlYWxseSBlbmNyeXB0ZWQ="  # base64 of plain text: passes the signature, fails AES
    ts = str(int(poster.now))
    sig = signature(CB_TOKEN, ts, "n", junk)
    resp = await beacon.client.post(
        "/wecom/callback", params={"msg_signature": sig, "timestamp": ts, "nonce": "n"}, data=envelope(junk)
    )
    assert resp.status == 400


async def test_missing_query_is_400(beacon: Any) -> None:
    resp = await beacon.client.post("/wecom/callback", data=envelope("abc"))
    assert resp.status == 400


async def test_signed_non_xml_plaintext_is_400(beacon: Any, poster: Poster) -> None:
    assert (await poster.post("this is not xml")).status == 400


async def test_oversized_body_is_413(beacon: Any) -> None:
    resp = await beacon.client.post(
        "/wecom/callback", params={"msg_signature": "x", "timestamp": "1", "nonce": "n"}, data=b"<xml>" + b"a" * 70000
    )
    assert resp.status == 413


async def test_unknown_event_is_accepted_and_ignored(beacon: Any, poster: Poster) -> None:
    xml = (
        f"<xml><ToUserName>{CORP_ID}</ToUserName><FromUserName>sys</FromUserName><CreateTime>1</CreateTime>"
        "<MsgType>event</MsgType><Event>brand_new_event</Event></xml>"
    )
    assert (await poster.post(xml)).status == 200
    assert await beacon.process() == 1
    assert await count(beacon.rt, InboxItem, InboxItem.status == "done") == 1
    assert await count(beacon.rt, OutboxItem) == 0


async def test_payload_without_msgtype_is_accepted_as_unknown(beacon: Any, poster: Poster) -> None:
    assert (await poster.post("<xml><Foo>bar</Foo></xml>")).status == 200
    await beacon.process()
    async with beacon.rt.sessions() as session:
        item = (await session.scalars(select(InboxItem))).one()
    assert (item.kind, item.status) == ("unknown", "done")


# --- durable inbox, dedupe, retries -------------------------------------------------------------


async def test_duplicate_delivery_processed_once(beacon: Any, poster: Poster) -> None:
    xml = text_xml("rep1", "帮助", "2001")
    for nonce in ("a1", "a2", "a3"):  # WeCom's retries re-encrypt the same plaintext
        assert (await poster.post(xml, nonce=nonce)).status == 200
    assert await count(beacon.rt, InboxItem) == 1
    await beacon.process()
    assert await beacon.process() == 0
    assert await count(beacon.rt, OutboxItem) == 1
    assert (await poster.post(xml, nonce="late")).status == 200  # even after processing
    assert await beacon.process() == 0
    assert await count(beacon.rt, OutboxItem) == 1


async def test_contact_events_dedupe_on_identity(beacon: Any, poster: Poster) -> None:
    def add(external: str) -> str:
        return (
            f"<xml><ToUserName>{CORP_ID}</ToUserName><FromUserName>sys</FromUserName><CreateTime>1700000001</CreateTime>"
            "<MsgType>event</MsgType><Event>change_external_contact</Event><ChangeType>add_external_contact</ChangeType>"
            f"<UserID>rep1</UserID><ExternalUserID>{external}</ExternalUserID></xml>"
        )

    # Same FromUserName (sys) and CreateTime, different contacts: two events, not one.
    assert (await poster.post(add("wmA"))).status == 200
    assert (await poster.post(add("wmB"))).status == 200
    assert (await poster.post(add("wmA"), nonce="retry")).status == 200
    assert await count(beacon.rt, InboxItem) == 2


async def test_help_command_replies_through_wecom(beacon: Any, poster: Poster) -> None:
    assert (await poster.post(text_xml("rep1", "  帮助 ", "3001"))).status == 200
    await beacon.process()
    sent = [r for r in beacon.sim.state.received if r.path == "/cgi-bin/message/send"]
    assert len(sent) == 1
    payload = sent[0].payload
    assert payload["touser"] == "rep1"
    assert payload["agentid"] == AGENT_ID
    assert "找 <关键词>" in payload["text"]["content"]


async def test_english_help_and_unknown_input_hint(beacon: Any, poster: Poster) -> None:
    await poster.post(text_xml("rep1", "ＨＥＬＰ", "3002"))  # full-width letters
    await poster.post(text_xml("rep1", "吃了吗", "3003"))
    await beacon.process()
    texts = [r.payload["text"]["content"] for r in beacon.sim.state.received if r.path == "/cgi-bin/message/send"]
    assert texts[0].startswith("I'm Beacon")
    assert "没听懂「吃了吗」" in texts[1]


async def test_failing_handler_retried_with_backoff_then_parked(beacon: Any, poster: Poster) -> None:
    from bot.router import Command, Router

    calls: list[str] = []
    boom = Router("boom")

    @boom.message(Command("boom"))
    async def explode(msg: Any, ctx: Any) -> None:
        calls.append(msg.get("MsgId"))
        raise RuntimeError("handler bug")

    beacon.rt.dispatcher.routers.insert(0, boom)
    assert (await poster.post(text_xml("rep1", "boom", "4001"))).status == 200
    await beacon.process()
    assert calls == ["4001"]
    async with beacon.rt.sessions() as session:
        item = (await session.scalars(select(InboxItem))).one()
    assert item.status == "pending" and item.attempts == 1
    assert "handler bug" in item.last_error
    assert await beacon.process() == 0  # not due yet: backoff
    beacon.clock.advance(seconds=1.5)
    await beacon.process()
    assert len(calls) == 2
    beacon.clock.advance(seconds=1.5)
    await beacon.process()  # due after 2 s, not yet
    assert len(calls) == 2
    beacon.clock.advance(seconds=1)
    await beacon.process()
    assert len(calls) == 3
    async with beacon.rt.sessions() as session:
        item = (await session.scalars(select(InboxItem))).one()
    assert item.status == "parked" and item.attempts == 3
    beacon.clock.advance(days=1)
    assert await beacon.process() == 0  # parked stays parked
    metrics = await (await beacon.client.get("/metrics")).text()
    assert 'beacon_inbox_depth{status="parked"} 1.0' in metrics
    assert "beacon_callbacks_parked_total 1.0" in metrics
    # nothing a failed attempt queued was sent
    assert await count(beacon.rt, OutboxItem) == 0


async def test_healthz_and_metrics(beacon: Any, poster: Poster) -> None:
    resp = await beacon.client.get("/healthz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["tracker"] == {"unprocessed": 0, "lag_s": 0.0}
    await poster.post(text_xml("rep1", "帮助", "5001"))
    body = await (await beacon.client.get("/healthz")).json()
    assert body["inbox"]["pending"] == 1
    async with beacon.rt.sessions() as session, session.begin():
        contact = Contact(external_userid="wmHealth", created_at=beacon.clock.now(), updated_at=beacon.clock.now())
        session.add(contact)
    now = beacon.clock.now()
    await beacon.rt.events.contact_event("call", contact.id, occurred_at=now, received_at=now, key="health:call")
    beacon.clock.advance(seconds=90)  # the tracker does not run by itself here: the event waits
    body = await (await beacon.client.get("/healthz")).json()
    assert body["tracker"] == {"unprocessed": 1, "lag_s": 90.0}
    for n in range(2):  # two more, later: the lag is still the oldest's; a cap bounds the count
        beacon.clock.advance(seconds=5)
        await beacon.rt.events.contact_event("call", contact.id, occurred_at=now, received_at=beacon.clock.now(), key=f"health:call{n}")
    from bot.tracker import backlog

    async with beacon.rt.read_sessions() as session:
        assert await backlog(session, beacon.clock.now()) == {"unprocessed": 3, "lag_s": 100.0}
        assert await backlog(session, beacon.clock.now(), cap=2) == {"unprocessed": 2, "lag_s": 100.0}
    metrics = await (await beacon.client.get("/metrics")).text()
    assert "beacon_tracker_backlog 3.0" in metrics and "beacon_tracker_lag_seconds 100.0" in metrics
    await beacon.process()
    assert await beacon.rt.tracker.drain() == 3
    metrics = await (await beacon.client.get("/metrics")).text()
    assert "beacon_tracker_backlog 0.0" in metrics and "beacon_tracker_lag_seconds 0.0" in metrics
    assert "beacon_tracker_events_total 3.0" in metrics and "beacon_tracker_batches_total 1.0" in metrics  # one pass
    assert 'beacon_callbacks_received_total{source="app"} 1.0' in metrics
    assert 'beacon_callbacks_processed_total{kind="text"} 1.0' in metrics
    assert 'beacon_wecom_api_calls_total{errcode="0",path="/cgi-bin/message/send"} 1.0' in metrics


async def test_database_down_healthz_503_and_callbacks_refused(aiohttp_client: Any) -> None:
    # Nothing listens on port 1: the database is unreachable from the start.
    settings = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    client = await aiohttp_client(create_app(settings, background=False))
    resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "unavailable"
    poster = Poster(client, time.time())
    resp = await poster.post(text_xml("rep1", "帮助", "6001"))
    assert resp.status == 503  # WeCom retries; nothing was acknowledged and lost


async def test_database_down_pages_and_api_answer_503_with_retry_after_and_log_one_line(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a 500 with a traceback per request: the database is away for a moment (a restart, a
    failover), and the reader, the API client and the operator's log are told so."""
    import logging

    settings = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    client = await aiohttp_client(create_app(settings, background=False))
    BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            api = await client.get("/api/content", headers={"Authorization": "Bearer test-admin-token"})
            assert api.status == 503 and api.headers["Retry-After"] == "5"
            assert "retry" in (await api.json())["error"]
            page = await client.get("/l/AnyToken0000000000000000", headers=BROWSER)  # unknown or not: it cannot tell yet
            assert page.status == 503 and page.headers["Retry-After"] == "5"
            assert "请稍后再试" in await page.text() and page.headers["X-Frame-Options"] == "DENY"
        english = await client.get("/l/AnyToken0000000000000000", headers={**BROWSER, "Accept-Language": "en-US"})
        assert english.status == 503 and "try again later" in await english.text()
        fetched = await client.get("/l/AnyToken0000000000000000", headers={"Accept": "*/*"})  # fetch(), a script
        assert fetched.status == 503 and fetched.headers["Retry-After"] == "5"
        assert (await fetched.json())["error"] == "服务暂时不可用，请稍后重试。"
    lines = [r for r in caplog.records if r.name == "beacon.unavailable"]
    assert len(lines) == 1 and "answered 503: cannot connect (ConnectionRefusedError" in lines[0].getMessage()
    metrics = await client.get("/metrics")  # served all the same: the process's own counters
    assert metrics.status == 200 and "\nbeacon_unavailable_answers_total 8.0\n" in await metrics.text()  # every one counted
    assert lines[0].exc_info is None and not [r for r in caplog.records if r.name == "aiohttp.server"]  # no traceback


async def test_an_error_that_is_not_the_database_stays_a_500(aiohttp_client: Any, sqlite_url: str) -> None:
    from aiohttp import ClientConnectionResetError

    from bot.db import unavailable_reason

    assert unavailable_reason(ValueError("a bug")) is None
    assert unavailable_reason(ClientConnectionResetError("Cannot write to closing transport")) is None  # the client left
    assert unavailable_reason(ConnectionResetError(104, "Connection reset by peer")) is not None  # the database's socket
    assert unavailable_reason(ConnectionRefusedError(111, "Connect call failed")) is not None
