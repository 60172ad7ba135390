"""The WeCom simulator: API answers and quirks, fault injection, control API, and the callback driver's crypto."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import xmltodict
from aiohttp import web
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.work.crypto import WeChatCrypto

from bot.wecom.sim_driver import CallbackDriver, build_xml, sign
from bot.wecom.simulator import SimState, create_simulator_app

CORP_ID = "wwsim0000000001"
SECRET = "sim-secret"
AGENT_ID = 1000002
TOKEN = "simCallbackToken"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
KF = "wkSIMkf0001"
CUSTOMER = "wmSIMcustomer0001"

# WeCom's official sample (WECOM.md).
SAMPLE_TOKEN = "QDG6eK"
SAMPLE_CORP = "wx5823bf96d3bd56c7"
SAMPLE_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
SAMPLE_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/"
    "sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJ"
    "YuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUc"
    "allcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5P"
    "l/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Api:
    """Raw HTTP access to the simulator (no retries), adding the access token to every call."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.token: str | None = None

    async def __call__(
        self, method: str, path: str, payload: dict[str, Any] | None = None, **params: Any
    ) -> dict[str, Any]:
        if self.token is None:
            answer = await self.raw("GET", "/cgi-bin/gettoken", corpid=CORP_ID, corpsecret=SECRET)
            self.token = answer["access_token"]
        return await self.raw(method, path, payload, access_token=self.token, **params)

    async def raw(self, method: str, path: str, payload: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        # Raw UTF-8 like WeCom wants: aiohttp's json= would send \uXXXX escapes, which WeCom refuses (40033).
        data = None if payload is None else json.dumps(payload, ensure_ascii=False).encode()
        async with self.client.request(method, path, params=params, data=data) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert "errcode" in answer and "errmsg" in answer
        return answer


@dataclass
class FakeBot:
    """A callback endpoint that verifies and decrypts with wechatpy, as a bot would."""

    crypto: WeChatCrypto = field(default_factory=lambda: WeChatCrypto(TOKEN, AES_KEY, CORP_ID))
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)  # (method, query string, body)
    plaintexts: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, request.query_string, body))
        q = request.query
        try:
            if request.method == "GET":
                return web.Response(
                    text=self.crypto.check_signature(q["msg_signature"], q["timestamp"], q["nonce"], q["echostr"])
                )
            plain = self.crypto.decrypt_message(body.decode(), q["msg_signature"], q["timestamp"], q["nonce"])
        except InvalidSignatureException:
            return web.Response(status=403)
        self.plaintexts.append(xmltodict.parse(plain)["xml"])
        return web.Response(text="")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> SimState:
    sim = SimState(CORP_ID, SECRET, AGENT_ID, clock=clock, seed=3)
    sim.add_kf_account(KF, "Beacon 客服")
    return sim


@pytest.fixture
async def sim(aiohttp_client: Any, state: SimState) -> Any:
    return await aiohttp_client(create_simulator_app(state))


@pytest.fixture
def api(sim: Any) -> Api:
    return Api(sim)


@pytest.fixture
def bot() -> FakeBot:
    return FakeBot()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def driver(
    aiohttp_server: Any, bot: FakeBot, state: SimState, http: aiohttp.ClientSession, clock: FakeClock
) -> CallbackDriver:
    app = web.Application()
    app.router.add_route("*", "/wecom/callback", bot.handle)
    server = await aiohttp_server(app)
    return CallbackDriver(
        http,
        str(server.make_url("/wecom/callback")),
        token=TOKEN,
        encoding_aes_key=AES_KEY,
        corp_id=CORP_ID,
        agent_id=AGENT_ID,
        state=state,
        clock=clock,
    )


def text(content: str, touser: str = "rep1", **extra: Any) -> dict[str, Any]:
    return {"touser": touser, "msgtype": "text", "agentid": AGENT_ID, "text": {"content": content}, **extra}


# ---- tokens and request checks ----------------------------------------------------------------


async def test_gettoken_reuses_the_live_token_and_checks_the_secret(api: Api, clock: FakeClock) -> None:
    first = await api.raw("GET", "/cgi-bin/gettoken", corpid=CORP_ID, corpsecret=SECRET)
    assert first["errcode"] == 0 and first["expires_in"] == 7200
    clock.advance(100)
    again = await api.raw("GET", "/cgi-bin/gettoken", corpid=CORP_ID, corpsecret=SECRET)
    assert again["access_token"] == first["access_token"] and again["expires_in"] == 7100
    assert (await api.raw("GET", "/cgi-bin/gettoken", corpid=CORP_ID, corpsecret="nope"))["errcode"] == 40001
    assert (await api.raw("GET", "/cgi-bin/gettoken", corpid="other", corpsecret=SECRET))["errcode"] == 40013


async def test_token_checks(api: Api, clock: FakeClock, state: SimState) -> None:
    assert (await api.raw("POST", "/cgi-bin/message/send", text("x")))["errcode"] == 41001
    assert (await api.raw("POST", "/cgi-bin/message/send", text("x"), access_token="forged"))["errcode"] == 40014
    assert (await api("POST", "/cgi-bin/message/send", text("x")))["errcode"] == 0
    clock.advance(7201)
    answer = await api("POST", "/cgi-bin/message/send", text("x"))
    assert answer["errcode"] == 42001 and "devtool/query?e=42001" in answer["errmsg"]
    assert [r.errcode for r in state.received_for("/cgi-bin/message/send")] == [41001, 40014, 0, 42001]


async def test_unicode_escapes_and_bad_json_are_refused(api: Api, sim: Any) -> None:
    await api("GET", "/cgi-bin/get_jsapi_ticket")
    escaped = json.dumps(text("你好"))  # Python's default: ensure_ascii, so "\\u4f60\\u597d"
    assert "\\u4f60" in escaped
    async with sim.post("/cgi-bin/message/send", params={"access_token": api.token}, data=escaped) as resp:
        assert (await resp.json())["errcode"] == 40033
    async with sim.post("/cgi-bin/message/send", params={"access_token": api.token}, data="{not json") as resp:
        assert (await resp.json())["errcode"] == 47001


# ---- app messages -----------------------------------------------------------------------------


async def test_more_than_30_messages_a_minute_are_silently_dropped(api: Api, state: SimState, clock: FakeClock) -> None:
    for n in range(31):
        answer = await api("POST", "/cgi-bin/message/send", text(f"alert {n}"))
        assert answer["errcode"] == 0 and answer["msgid"]
    assert len(state.messages_to("rep1")) == 30
    assert [m.payload["text"]["content"] for m in state.dropped] == ["alert 30"]
    clock.advance(61)
    await api("POST", "/cgi-bin/message/send", text("later"))
    assert state.messages_to("rep1")[-1].payload["text"]["content"] == "later"


async def test_duplicate_check_suppresses_repeats_within_the_interval(
    api: Api, state: SimState, clock: FakeClock
) -> None:
    payload = text("your task is due", enable_duplicate_check=1, duplicate_check_interval=600)
    first = await api("POST", "/cgi-bin/message/send", payload)
    second = await api("POST", "/cgi-bin/message/send", payload)
    assert first["errcode"] == second["errcode"] == 0
    assert len(state.messages_to("rep1")) == 1 and len(state.duplicates) == 1
    clock.advance(601)
    await api("POST", "/cgi-bin/message/send", payload)
    assert len(state.messages_to("rep1")) == 2
    await api("POST", "/cgi-bin/message/send", text("your task is due"))
    await api("POST", "/cgi-bin/message/send", text("your task is due"))
    assert len(state.messages_to("rep1")) == 4  # without the flag nothing is suppressed


async def test_unknown_members_are_reported_as_invaliduser(api: Api, state: SimState) -> None:
    state.add_member("rep1", "张三")
    answer = await api("POST", "/cgi-bin/message/send", text("hi", touser="rep1|ghost"))
    assert answer["errcode"] == 0 and answer["invaliduser"] == "ghost"
    assert (await api("POST", "/cgi-bin/message/send", text("hi", touser="ghost")))["errcode"] == 81013


async def test_template_card_response_code_is_single_use(api: Api, state: SimState, driver: CallbackDriver) -> None:
    card = {
        "card_type": "button_interaction",
        "main_title": {"title": "跟进提醒"},
        "task_id": "task-1",
        "button_list": [{"text": "完成", "style": 1, "key": "done"}],
    }
    sent = await api(
        "POST",
        "/cgi-bin/message/send",
        {"touser": "rep1", "msgtype": "template_card", "agentid": AGENT_ID, "template_card": card},
    )
    code = sent["response_code"]
    update = {"userids": ["rep1"], "agentid": AGENT_ID, "response_code": code, "button": {"replace_name": "已完成"}}
    assert (await api("POST", "/cgi-bin/message/update_template_card", update))["errcode"] == 0
    assert (await api("POST", "/cgi-bin/message/update_template_card", update))["errcode"] == 40035
    assert state.cards["task-1"].updates[0]["button"] == {"replace_name": "已完成"}
    # A click issues a fresh ResponseCode, delivered in the callback.
    assert (await driver.card_click("rep1", "task-1", "done")).status == 200
    clicked = driver_plaintext(driver)
    assert clicked["Event"] == "template_card_event" and clicked["TaskId"] == "task-1"
    again = {**update, "response_code": clicked["ResponseCode"]}
    assert (await api("POST", "/cgi-bin/message/update_template_card", again))["errcode"] == 0
    assert len(state.cards["task-1"].updates) == 2


def driver_plaintext(driver: CallbackDriver) -> dict[str, Any]:
    assert driver.last_plaintext is not None
    return dict(xmltodict.parse(driver.last_plaintext)["xml"])


# ---- customer contact -------------------------------------------------------------------------


async def test_welcome_code_is_single_use_and_expires(
    api: Api, driver: CallbackDriver, bot: FakeBot, clock: FakeClock
) -> None:
    await driver.add_external_contact("rep1", CUSTOMER, state="wp-launch")
    event = bot.plaintexts[-1]
    assert event["ChangeType"] == "add_external_contact" and event["State"] == "wp-launch"
    welcome = {"welcome_code": event["WelcomeCode"], "text": {"content": "您好，我是张三"}}
    assert (await api("POST", "/cgi-bin/externalcontact/send_welcome_msg", welcome))["errcode"] == 0
    assert (await api("POST", "/cgi-bin/externalcontact/send_welcome_msg", welcome))["errcode"] == 41051
    await driver.add_external_contact("rep2", CUSTOMER)
    clock.advance(21)
    late = {"welcome_code": bot.plaintexts[-1]["WelcomeCode"], "text": {"content": "too late"}}
    assert (await api("POST", "/cgi-bin/externalcontact/send_welcome_msg", late))["errcode"] == 41052
    contact = await api("GET", "/cgi-bin/externalcontact/get", external_userid=CUSTOMER)
    assert [f["userid"] for f in contact["follow_user"]] == ["rep1", "rep2"]
    assert contact["follow_user"][0]["state"] == "wp-launch"


async def test_half_add_without_welcome_code(driver: CallbackDriver, bot: FakeBot) -> None:
    await driver.add_external_contact("rep1", CUSTOMER, with_welcome_code=False, half=True)
    assert bot.plaintexts[-1]["ChangeType"] == "add_half_external_contact"
    assert "WelcomeCode" not in bot.plaintexts[-1]


async def test_corp_tags_and_mark_tag(api: Api, state: SimState) -> None:
    state.add_external_contact_profile(CUSTOMER, "李四", corp_name="某制造", follow_user=["rep1"])
    created = await api(
        "POST",
        "/cgi-bin/externalcontact/add_corp_tag",
        {"group_name": "Beacon 阶段", "tag": [{"name": "认知"}, {"name": "考虑"}]},
    )
    group = created["tag_group"]
    assert group["group_id"].startswith("et") and all(t["id"].startswith("et") for t in group["tag"])
    more = await api(
        "POST", "/cgi-bin/externalcontact/add_corp_tag", {"group_name": "Beacon 阶段", "tag": [{"name": "决策"}]}
    )
    assert more["tag_group"]["group_id"] == group["group_id"]
    duplicate = await api(
        "POST", "/cgi-bin/externalcontact/add_corp_tag", {"group_id": group["group_id"], "tag": [{"name": "认知"}]}
    )
    assert duplicate["errcode"] == 40071
    listed = await api("POST", "/cgi-bin/externalcontact/get_corp_tag_list", {})
    assert [t["name"] for t in listed["tag_group"][0]["tag"]] == ["认知", "考虑", "决策"]
    tag_id = group["tag"][1]["id"]
    mark = {"userid": "rep1", "external_userid": CUSTOMER, "add_tag": [tag_id]}
    assert (await api("POST", "/cgi-bin/externalcontact/mark_tag", mark))["errcode"] == 0
    contact = await api("GET", "/cgi-bin/externalcontact/get", external_userid=CUSTOMER)
    assert contact["external_contact"]["corp_name"] == "某制造"
    assert contact["follow_user"][0]["tags"] == [
        {"group_name": "Beacon 阶段", "tag_name": "考虑", "tag_id": tag_id, "type": 1}
    ]
    bad = {"userid": "rep1", "external_userid": CUSTOMER, "add_tag": ["etnope"]}
    assert (await api("POST", "/cgi-bin/externalcontact/mark_tag", bad))["errcode"] == 40068
    assert (await api("GET", "/cgi-bin/externalcontact/get", external_userid="wmnobody"))["errcode"] == 84061


async def test_batch_get_by_user_pages_through_the_listing_its_first_page_took(api: Api, state: SimState) -> None:
    for n in range(5):
        state.add_external_contact_profile(f"wmPage{n}", f"客户{n}", follow_user=["rep1"])
    path = "/cgi-bin/externalcontact/batch/get_by_user"
    first = await api("POST", path, {"userid_list": ["rep1"], "limit": 2})
    assert [i["external_contact"]["external_userid"] for i in first["external_contact_list"]] == ["wmPage0", "wmPage1"]
    state.add_external_contact_profile("wmPage5", "客户5", follow_user=["rep1"])  # after the first page: not in this listing
    seen, cursor = [], first["next_cursor"]
    while cursor:
        page = await api("POST", path, {"userid_list": ["rep1"], "limit": 2, "cursor": cursor})
        seen += [i["external_contact"]["external_userid"] for i in page["external_contact_list"]]
        cursor = page["next_cursor"]
    assert seen == ["wmPage2", "wmPage3", "wmPage4"]
    again = await api("POST", path, {"userid_list": ["rep1"], "limit": 100})  # a new listing sees it
    assert len(again["external_contact_list"]) == 6 and again["next_cursor"] == ""
    for bad in ("sim:nope:2", "sim:2", "garbage"):
        assert (await api("POST", path, {"userid_list": ["rep1"], "cursor": bad}))["errcode"] == 40035


async def test_contact_way_and_msg_template(api: Api, state: SimState) -> None:
    way = await api(
        "POST",
        "/cgi-bin/externalcontact/add_contact_way",
        {"type": 1, "scene": 2, "state": "expo2026", "user": ["rep1"]},
    )
    assert way["errcode"] == 0 and way["qr_code"].startswith("https://")
    assert state.contact_ways[way["config_id"]].state == "expo2026"
    too_long = await api(
        "POST", "/cgi-bin/externalcontact/add_contact_way", {"type": 1, "scene": 2, "state": "x" * 31, "user": ["rep1"]}
    )
    assert too_long["errcode"] == 40035
    state.add_external_contact_profile(CUSTOMER, "李四", follow_user=["rep1"])
    sent = await api(
        "POST",
        "/cgi-bin/externalcontact/add_msg_template",
        {"external_userid": [CUSTOMER, "wmnobody"], "sender": "rep1", "text": {"content": "新白皮书"}},
    )
    assert sent["errcode"] == 0 and sent["fail_list"] == ["wmnobody"] and sent["msgid"]


# ---- WeChat Customer Service ------------------------------------------------------------------


async def test_kf_sync_msg_pages_with_a_persisted_cursor(
    api: Api, state: SimState, driver: CallbackDriver, bot: FakeBot
) -> None:
    for n in range(2500):
        state.add_kf_message(KF, CUSTOMER, content=f"q{n}")
    await driver.kf_event(KF)
    token = bot.plaintexts[-1]["Token"]
    assert bot.plaintexts[-1]["OpenKfId"] == KF
    cursor, seen, pages = "", [], []
    while True:
        page = await api(
            "POST", "/cgi-bin/kf/sync_msg", {"cursor": cursor, "token": token, "limit": 1000, "open_kfid": KF}
        )
        assert page["errcode"] == 0
        cursor = page["next_cursor"]
        seen += [m["text"]["content"] for m in page["msg_list"]]
        pages.append(page["has_more"])
        if not page["has_more"]:
            break
    assert pages == [1, 1, 0] and seen == [f"q{n}" for n in range(2500)]
    state.add_kf_message(KF, CUSTOMER, content="new one")
    page = await api("POST", "/cgi-bin/kf/sync_msg", {"cursor": cursor, "token": token, "open_kfid": KF})
    assert [m["text"]["content"] for m in page["msg_list"]] == ["new one"] and page["has_more"] == 0
    too_many = await api(
        "POST", "/cgi-bin/kf/sync_msg", {"cursor": cursor, "token": token, "limit": 1001, "open_kfid": KF}
    )
    assert too_many["errcode"] == 40035


async def test_kf_sync_msg_token_must_be_issued_and_fresh(api: Api, driver: CallbackDriver, clock: FakeClock) -> None:
    assert (await api("POST", "/cgi-bin/kf/sync_msg", {"token": "forged", "open_kfid": KF}))["errcode"] == 95007
    await driver.kf_customer_text(KF, CUSTOMER, "你好")
    token = driver.last_kf_token
    assert (await api("POST", "/cgi-bin/kf/sync_msg", {"token": token, "open_kfid": KF}))["errcode"] == 0
    clock.advance(601)
    assert (await api("POST", "/cgi-bin/kf/sync_msg", {"token": token, "open_kfid": KF}))["errcode"] == 95007


async def test_kf_empty_page_with_has_more(api: Api, state: SimState) -> None:
    state.add_kf_message(KF, CUSTOMER, content="hello")
    state.kf_empty_page_next()
    empty = await api("POST", "/cgi-bin/kf/sync_msg", {"open_kfid": KF})
    assert empty["msg_list"] == [] and empty["has_more"] == 1
    full = await api("POST", "/cgi-bin/kf/sync_msg", {"cursor": empty["next_cursor"], "open_kfid": KF})
    assert [m["text"]["content"] for m in full["msg_list"]] == ["hello"]


async def test_kf_menu_pick_and_enter_session(api: Api, driver: CallbackDriver, state: SimState) -> None:
    await driver.kf_enter_session(KF, CUSTOMER, scene_param="wp-2026")
    await driver.kf_customer_text(KF, CUSTOMER, "看案例", menu_id="cases")
    page = await api("POST", "/cgi-bin/kf/sync_msg", {"token": driver.last_kf_token, "open_kfid": KF})
    event, pick = page["msg_list"]
    assert event["origin"] == 4 and event["msgtype"] == "event"
    assert event["event"]["event_type"] == "enter_session" and event["event"]["scene_param"] == "wp-2026"
    assert pick["origin"] == 3 and pick["text"] == {"content": "看案例", "menu_id": "cases"}
    on_event = {"code": event["event"]["welcome_code"], "msgtype": "text", "text": {"content": "欢迎"}}
    assert (await api("POST", "/cgi-bin/kf/send_msg_on_event", on_event))["errcode"] == 0
    assert (await api("POST", "/cgi-bin/kf/send_msg_on_event", on_event))["errcode"] == 41051
    assert state.kf_sent[0].touser == CUSTOMER


async def test_kf_send_msg_dedupes_on_msgid(api: Api, state: SimState, driver: CallbackDriver) -> None:
    await driver.kf_customer_text(KF, CUSTOMER, "在吗")
    message = {
        "touser": CUSTOMER,
        "open_kfid": KF,
        "msgid": "beacon-0001",
        "msgtype": "text",
        "text": {"content": "在的"},
    }
    first = await api("POST", "/cgi-bin/kf/send_msg", message)
    second = await api("POST", "/cgi-bin/kf/send_msg", message)
    assert first["msgid"] == second["msgid"] == "beacon-0001"
    assert len(state.kf_sent) == 1


async def test_kf_allows_five_messages_per_customer_message_within_48h(
    api: Api, state: SimState, driver: CallbackDriver, clock: FakeClock
) -> None:
    def message(n: int) -> dict[str, Any]:
        return {"touser": CUSTOMER, "open_kfid": KF, "msgtype": "text", "text": {"content": f"r{n}"}}

    assert (await api("POST", "/cgi-bin/kf/send_msg", message(0)))["errcode"] == 95001  # customer never wrote
    await driver.kf_customer_text(KF, CUSTOMER, "请发资料")
    for n in range(5):
        assert (await api("POST", "/cgi-bin/kf/send_msg", message(n)))["errcode"] == 0
    assert (await api("POST", "/cgi-bin/kf/send_msg", message(5)))["errcode"] == 95001
    await driver.kf_customer_text(KF, CUSTOMER, "还有吗")
    assert (await api("POST", "/cgi-bin/kf/send_msg", message(6)))["errcode"] == 0
    clock.advance(48 * 3600 + 1)
    api.token = None  # the access token expired as well
    assert (await api("POST", "/cgi-bin/kf/send_msg", message(7)))["errcode"] == 95001


async def test_kf_session_handed_to_a_human_blocks_api_sends(api: Api, driver: CallbackDriver) -> None:
    await driver.kf_customer_text(KF, CUSTOMER, "转人工")
    trans = {"open_kfid": KF, "external_userid": CUSTOMER, "service_state": 3, "servicer_userid": "rep1"}
    assert (await api("POST", "/cgi-bin/kf/service_state/trans", trans))["msg_code"]
    message = {"touser": CUSTOMER, "open_kfid": KF, "msgtype": "text", "text": {"content": "x"}}
    assert (await api("POST", "/cgi-bin/kf/send_msg", message))["errcode"] == 95018


# ---- tickets, OAuth, menu, media --------------------------------------------------------------


async def test_jsapi_tickets_are_limited_per_hour(api: Api, clock: FakeClock) -> None:
    for _ in range(100):
        assert (await api("GET", "/cgi-bin/ticket/get", type="agent_config"))["errcode"] == 0
    assert (await api("GET", "/cgi-bin/ticket/get", type="agent_config"))["errcode"] == 45009
    assert (await api("GET", "/cgi-bin/get_jsapi_ticket"))["errcode"] == 0  # counted separately
    clock.advance(3601)
    assert (await api("GET", "/cgi-bin/ticket/get", type="agent_config"))["errcode"] == 0


async def test_oauth_codes_map_to_members_and_customers_once(api: Api, state: SimState, clock: FakeClock) -> None:
    member = state.issue_oauth_code(userid="rep1")
    customer = state.issue_oauth_code(external_userid=CUSTOMER)
    assert (await api("GET", "/cgi-bin/auth/getuserinfo", code=member))["userid"] == "rep1"
    assert (await api("GET", "/cgi-bin/auth/getuserinfo", code=member))["errcode"] == 40029
    answer = await api("GET", "/cgi-bin/auth/getuserinfo", code=customer)
    assert answer["external_userid"] == CUSTOMER and answer["openid"] and "userid" not in answer
    stale = state.issue_oauth_code(userid="rep1")
    clock.advance(301)
    assert (await api("GET", "/cgi-bin/auth/getuserinfo", code=stale))["errcode"] == 40029


async def test_menu_create_and_media_upload(api: Api, sim: Any, state: SimState) -> None:
    menu = {"button": [{"type": "click", "name": "我的任务", "key": "tasks"}]}
    assert (await api("POST", "/cgi-bin/menu/create", menu, agentid=AGENT_ID))["errcode"] == 0
    assert state.menus[AGENT_ID] == menu
    assert (await api("POST", "/cgi-bin/menu/create", {"button": []}, agentid=AGENT_ID))["errcode"] == 40016
    form = aiohttp.FormData()
    form.add_field("media", b"\x89PNG...", filename="cover.png", content_type="image/png")
    async with sim.post(
        "/cgi-bin/media/upload", params={"access_token": api.token, "type": "image"}, data=form
    ) as resp:
        uploaded = await resp.json()
    assert uploaded["errcode"] == 0 and uploaded["type"] == "image"
    assert state.media[uploaded["media_id"]].content_type == "image/png"


# ---- fault injection and the control API ------------------------------------------------------


async def test_fail_next_answers_the_errcode_n_times(api: Api, state: SimState) -> None:
    state.fail_next("/cgi-bin/message/send", 45009, times=2)
    codes = [(await api("POST", "/cgi-bin/message/send", text(f"m{n}")))["errcode"] for n in range(3)]
    assert codes == [45009, 45009, 0]
    assert len(state.messages_to("rep1")) == 1


async def test_control_api(api: Api, sim: Any) -> None:
    async with sim.post("/sim/fail", json={"path": "/cgi-bin/message/send", "errcode": -1, "times": 1}) as resp:
        assert resp.status == 200
    assert (await api("POST", "/cgi-bin/message/send", text("a")))["errcode"] == -1
    assert (await api("POST", "/cgi-bin/message/send", text("b")))["errcode"] == 0
    async with sim.post("/sim/expire_tokens") as resp:
        assert resp.status == 200
    assert (await api("POST", "/cgi-bin/message/send", text("c")))["errcode"] == 42001
    async with sim.get("/sim/received", params={"path": "/cgi-bin/message/send"}) as resp:
        received = (await resp.json())["received"]
    assert [r["errcode"] for r in received] == [-1, 0, 42001]
    assert received[1]["payload"]["text"]["content"] == "b"
    async with sim.get("/sim/state") as resp:
        summary = await resp.json()
    assert summary["calls"]["/cgi-bin/message/send"] == 3 and summary["delivered"] == 1
    async with sim.get("/sim/messages", params={"touser": "rep1"}) as resp:
        assert [m["payload"]["text"]["content"] for m in (await resp.json())["delivered"]] == ["b"]
    async with sim.post("/sim/fail", json={"errcode": 1}) as resp:
        assert resp.status == 400


# ---- the callback driver ----------------------------------------------------------------------


async def test_driver_envelope_decrypts_and_verifies_with_wechatpy(
    driver: CallbackDriver, bot: FakeBot, clock: FakeClock
) -> None:
    result = await driver.send_text("rep1", "分享 白皮书 <&]]> done")
    assert result == (200, "")
    _, query, body = bot.requests[-1]
    envelope = xmltodict.parse(body)["xml"]
    assert set(envelope) == {"ToUserName", "Encrypt", "AgentID"}
    assert envelope["ToUserName"] == CORP_ID and envelope["AgentID"] == str(AGENT_ID)
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert params["timestamp"] == str(int(clock()))
    crypto = WeChatCrypto(TOKEN, AES_KEY, CORP_ID)
    plain = xmltodict.parse(
        crypto.decrypt_message(body.decode(), params["msg_signature"], params["timestamp"], params["nonce"])
    )["xml"]
    assert plain["MsgType"] == "text" and plain["Content"] == "分享 白皮书 <&]]> done"
    assert plain["FromUserName"] == "rep1" and plain["ToUserName"] == CORP_ID
    assert plain["CreateTime"] == str(int(clock())) and plain["AgentID"] == str(AGENT_ID)
    assert params["msg_signature"] == sign(TOKEN, params["timestamp"], params["nonce"], envelope["Encrypt"])
    await driver.send_text("rep1", "again")
    assert bot.plaintexts[-1]["MsgId"] != plain["MsgId"]


async def test_driver_events_carry_wecom_fields(driver: CallbackDriver, bot: FakeBot) -> None:
    await driver.click_menu("rep1", "tasks")
    await driver.card_click(
        "rep1",
        "task-9",
        "done",
        response_code="rc-1",
        card_type="vote_interaction",
        selected_items=[("q1", ["a", "b"])],
    )
    await driver.del_external_contact("rep1", CUSTOMER, source="DELETE_BY_TRANSFER")
    await driver.del_follow_user("rep1", CUSTOMER)
    await driver.edit_external_contact("rep1", CUSTOMER)
    click, card, deleted, unfollowed, edited = bot.plaintexts
    assert (click["Event"], click["EventKey"], click["FromUserName"]) == ("click", "tasks", "rep1")
    assert card["CardType"] == "vote_interaction" and card["ResponseCode"] == "rc-1"
    assert card["SelectedItems"]["SelectedItem"]["OptionIds"]["OptionId"] == ["a", "b"]
    assert deleted["FromUserName"] == "sys" and deleted["Source"] == "DELETE_BY_TRANSFER"
    assert unfollowed["ChangeType"] == "del_follow_user" and edited["ChangeType"] == "edit_external_contact"
    assert all("CreateTime" in p for p in bot.plaintexts)


async def test_tampered_signature_is_refused_by_the_bot(driver: CallbackDriver, bot: FakeBot) -> None:
    assert (await driver.send_text("rep1", "hi")).status == 200
    assert (await driver.post_raw(build_xml([("MsgType", "text")]), tamper_signature=True)).status == 403
    assert len(bot.plaintexts) == 1


async def test_redeliver_repeats_the_request_byte_for_byte(driver: CallbackDriver, bot: FakeBot) -> None:
    await driver.add_external_contact("rep1", CUSTOMER)
    assert (await driver.redeliver()).status == 200
    assert bot.requests[0] == bot.requests[1]
    assert bot.plaintexts[0] == bot.plaintexts[1]


async def test_verify_url_round_trip(driver: CallbackDriver, bot: FakeBot) -> None:
    echo = "1616140317555161061+/="
    result = await driver.verify_url(echo)
    assert result == (200, echo)
    assert bot.requests[-1][0] == "GET" and "echostr=" in bot.requests[-1][1]


def test_official_sample_vector() -> None:
    crypto = WeChatCrypto(SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_CORP)
    get_sig, get_ts, get_nonce = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "1409659589", "263014780"
    assert sign(SAMPLE_TOKEN, get_ts, get_nonce, SAMPLE_ECHOSTR) == get_sig
    assert crypto.check_signature(get_sig, get_ts, get_nonce, SAMPLE_ECHOSTR) == "1616140317555161061"
    post_sig, post_ts, post_nonce = "477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149"
    assert sign(SAMPLE_TOKEN, post_ts, post_nonce, SAMPLE_ENCRYPT) == post_sig
    envelope = build_xml([("ToUserName", SAMPLE_CORP), ("Encrypt", SAMPLE_ENCRYPT), ("AgentID", "218")])
    plain = xmltodict.parse(crypto.decrypt_message(envelope, post_sig, post_ts, post_nonce))["xml"]
    assert (plain["FromUserName"], plain["Content"], plain["MsgId"], plain["AgentID"]) == (
        "mycreate",
        "hello",
        "4561255354251345929",
        "218",
    )


async def test_sample_keys_round_trip_through_the_driver(http: aiohttp.ClientSession) -> None:
    driver = CallbackDriver(
        http,
        "http://127.0.0.1:9/unused",
        token=SAMPLE_TOKEN,
        encoding_aes_key=SAMPLE_KEY,
        corp_id=SAMPLE_CORP,
        agent_id=218,
    )
    xml = build_xml(
        [("ToUserName", SAMPLE_CORP), ("FromUserName", "mycreate"), ("MsgType", "text"), ("Content", "hello")]
    )
    envelope, signature = driver.envelope(xml, timestamp="1409659813", nonce="1372623149")
    crypto = WeChatCrypto(SAMPLE_TOKEN, SAMPLE_KEY, SAMPLE_CORP)
    assert crypto.decrypt_message(envelope, signature, "1409659813", "1372623149") == xml
    assert (
        signature
        == hashlib.sha1(
            "".join(
                sorted([SAMPLE_TOKEN, "1409659813", "1372623149", xmltodict.parse(envelope)["xml"]["Encrypt"]])
            ).encode()
        ).hexdigest()
    )


async def test_driver_follows_the_simulator_clock_by_default(
    http: aiohttp.ClientSession, state: SimState, clock: FakeClock
) -> None:
    keys = {"token": TOKEN, "encoding_aes_key": AES_KEY, "corp_id": CORP_ID, "agent_id": AGENT_ID}
    driver = CallbackDriver(http, "http://127.0.0.1:9/unused", state=state, **keys)
    clock.advance(12345)
    assert driver.clock() == clock()
    assert CallbackDriver(http, "http://127.0.0.1:9/unused", **keys).clock() > 1_700_000_000  # real time
