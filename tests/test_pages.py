"""Dashboard and admin pages through HTTP: logins, scopes, funnel numbers, CSV, bad input, uploads."""

from __future__ import annotations


import io
import re
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.models import ContentItem, ContentVersion, Rep
from tests.pages_seed import FUNNEL, ITEM, PageUser, csrf_of, page_settings, seed


@pytest.fixture
def settings(db_url: str, sim: Any) -> Any:
    return page_settings(db_url, sim.url, links={"oauth_authorize_url": f"{sim.url}/connect/oauth2/authorize"})


@pytest.fixture
async def users(beacon: Any) -> AsyncIterator[Any]:
    made: list[PageUser] = []

    def new(ua: str = "Mozilla/5.0 (Macintosh) Chrome/126.0") -> PageUser:
        user = PageUser(str(beacon.client.make_url("/")), ua)
        made.append(user)
        return user

    yield new
    for user in made:
        await user.close()


@pytest.fixture
async def seeded(beacon: Any, lib: Path) -> dict[str, int]:  # noqa: F811
    return await seed(beacon)


async def as_member(beacon: Any, users: Any, userid: str) -> PageUser:
    user = users()
    await user.login_member(beacon, userid)
    return user


async def as_admin(users: Any) -> PageUser:
    user = users()
    status, body = await user.login_admin()
    assert status == 303, body
    return user


# --- logging in ---------------------------------------------------------------------------------


async def test_pages_need_a_login(beacon: Any, users: Any) -> None:
    desktop, wecom = users(), users("Mozilla/5.0 (iPhone) wxwork/4.1.0 MicroMessenger/7.0.1")
    for path in ("/dashboard", "/dashboard/contacts/wmX", "/admin/content", "/sidebar"):
        status, _, resp = await desktop.get(path)
        assert status == 302 and resp.headers["Location"].startswith("/login?next=")
        status, _, resp = await wecom.get(path)
        assert status == 302 and resp.headers["Location"].startswith("/auth/wecom/start?next=")
    status, body, _ = await desktop.get("/sidebar/jsconfig?url=http://x/sidebar")
    assert status == 401 and "log in" in body
    status, _, _ = await desktop.post("/sidebar/share", data={"slug": ITEM, "contact": "wmC1"})
    assert status == 401


async def test_admin_token_login_and_logout(beacon: Any, users: Any) -> None:
    user = users()
    status, body = await user.login_admin("wrong-token")
    assert status == 401 and "管理员令牌不正确" in body
    status, body, _ = await user.post("/login", data={"csrf": "forged", "token": "test-admin-token"})
    assert status == 403 and "页面已过期" in body
    _, _, resp = await users().get("/login")
    assert "HttpOnly" in resp.headers["Set-Cookie"] and "SameSite=Lax" in resp.headers["Set-Cookie"]
    status, body = await user.login_admin()
    assert status == 303
    status, html, resp = await user.get("/dashboard")
    assert status == 200 and "管理员" in html
    assert resp.headers["Cache-Control"] == "private, no-store"
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    status, _, _ = await user.post("/logout", data={"csrf": "forged"})
    assert status == 403
    status, _, _ = await user.post("/logout", data={"csrf": csrf_of(html)})
    assert status == 303
    status, _, _ = await user.get("/dashboard")
    assert status == 302


async def test_admin_login_attempts_are_limited(beacon: Any, users: Any) -> None:
    user = users()
    statuses = [(await user.login_admin("guess"))[0] for _ in range(11)]
    assert statuses[:10] == [401] * 10 and statuses[10] == 429


async def test_wecom_oauth_login(beacon: Any, users: Any) -> None:
    user = users()
    status, _, resp = await user.get("/auth/wecom/start?next=/dashboard/contacts")
    location = resp.headers["Location"]
    assert status == 302 and "scope=snsapi_base" in location and "agentid=" in location
    assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A8080%2Fauth%2Fwecom%2Fcallback" in location
    state = location.split("state=")[1].split("&")[0].split("#")[0]
    code = beacon.sim.state.issue_oauth_code(userid="rep1")
    status, _, _ = await user.get(f"/auth/wecom/callback?code={code}&state=forged")
    assert status == 403  # login CSRF: a code without this browser's nonce
    assert (await users().get(f"/auth/wecom/callback?code={code}&state={state}"))[0] == 403  # another browser
    status, _, resp = await user.get(f"/auth/wecom/callback?code={code}&state={state}")
    assert status == 303 and resp.headers["Location"] == "/dashboard/contacts"
    status, html, _ = await user.get("/dashboard/contacts")
    assert status == 200 and "张三" in html
    # a code is single use; a customer's code does not log anyone in
    other = users()
    for bad in (code, beacon.sim.state.issue_oauth_code(external_userid="wmC1")):
        _, _, resp = await other.get("/auth/wecom/start")
        state = resp.headers["Location"].split("state=")[1].split("&")[0].split("#")[0]
        status, body, _ = await other.get(f"/auth/wecom/callback?code={bad}&state={state}")
        assert status == 403
    assert "仅企业成员" in body


async def test_unknown_member_joins_as_rep_and_sees_nothing_else(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    user = await as_member(beacon, users, "newbie")
    async with beacon.rt.sessions() as session:
        rep = await session.get(Rep, "newbie")
    assert (rep.role, rep.source) == ("rep", "wecom")
    rows = await user.csv("/dashboard/contacts?format=csv")
    assert rows == []


async def test_role_change_takes_effect_at_once(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    user = await as_member(beacon, users, "rep3")
    assert (await user.get("/admin/content"))[0] == 403
    async with beacon.rt.sessions() as session, session.begin():
        (await session.get(Rep, "rep3")).role = "admin"
    assert (await user.get("/admin/content"))[0] == 200
    async with beacon.rt.sessions() as session, session.begin():
        (await session.get(Rep, "rep3")).active = False
    assert (await user.get("/admin/content"))[0] == 302  # logged out


# --- numbers ------------------------------------------------------------------------------------


def reached(rows: list[dict[str, str]]) -> list[int]:
    return [int(r["reached"]) for r in rows]


async def test_funnel_by_stage_per_scope(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    admin = await as_admin(users)
    rows = await admin.csv("/dashboard?format=csv&table=stages")
    assert [r["stage"] for r in rows] == ["new", "nurturing", "mql", "sql", "customer"]
    assert reached(rows) == FUNNEL["admin"]
    assert [r["from_previous"] for r in rows] == ["", "0.8000", "0.5000", "0.5000", "1.0000"]
    assert [r["from_start"] for r in rows] == ["1.0000", "0.8000", "0.4000", "0.2000", "0.2000"]
    assert [r["now"] for r in rows] == ["1", "1", "1", "0", "1"]  # wmC4, wmC2, wmC1, —, wmC3 (wmC5 is invalid)
    for userid in ("mgr1", "rep1"):
        member = await as_member(beacon, users, userid)
        assert reached(await member.csv("/dashboard?format=csv&table=stages")) == FUNNEL[userid]
    # a range that includes wmC6 (created 60 days ago)
    rows = await admin.csv("/dashboard?format=csv&table=stages&from=2026-09-01&to=2026-11-23")
    assert reached(rows)[0] == 6
    rows = await admin.csv("/dashboard?format=csv&table=stages&from=2026-11-23&to=2026-11-23")
    assert reached(rows)[0] == 0  # nobody was first seen today


async def test_funnel_by_channel_and_content(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    admin = await as_admin(users)
    channels = {r["channel"]: r for r in await admin.csv("/dashboard?format=csv&table=channels")}
    assert set(channels) == {"2026工博会", "官网", "（无渠道）"}
    expo, web = channels["2026工博会"], channels["官网"]
    assert (expo["contacts"], expo["nurturing"], expo["mql"], expo["customer"], expo["mql_rate"]) == ("2", "2", "1", "0", "0.5000")
    assert (web["contacts"], web["mql"], web["customer"], web["customer_rate"]) == ("2", "1", "1", "0.5000")
    content = await admin.csv("/dashboard?format=csv&table=content")
    assert [(r["slug"], r["contacts"], r["mql"]) for r in content] == [(ITEM, "2", "1")]
    _, html, _ = await admin.get("/dashboard")
    assert "阶段漏斗" in html and "渠道漏斗" in html and "内容漏斗" in html
    assert html.count("data-chart=") == 2 and "/static/vendor/chart.umd.js" in html


async def test_a_chart_shows_the_top_bars_and_says_how_many_it_leaves_out(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    """A company's many channels (or reps) in one chart are unreadable: the chart shows the first
    CHART_BARS in the table's order and says how many there are; the table keeps every row."""
    import datetime as dt
    import html as html_lib
    import json
    import re

    from bot.models import Channel, Contact
    from bot.tables import CHART_BARS

    now = beacon.clock.now() - dt.timedelta(hours=1)
    async with beacon.rt.sessions() as session, session.begin():
        for n in range(CHART_BARS + 5):
            channel = Channel(name=f"地推{n:02d}", state=f"ch_street{n:02d}")
            session.add(channel)
            await session.flush()
            session.add_all([Contact(external_userid=f"wmS{n:02d}x{k}", channel_id=channel.id, created_at=now, updated_at=now)
                             for k in range(n + 1)])  # fmt: skip
    admin = await as_admin(users)
    channels = await admin.csv("/dashboard?format=csv&table=channels")
    assert len(channels) == CHART_BARS + 5 + 3  # and the seeded 2026工博会, 官网, （无渠道）
    _, page, _ = await admin.get("/dashboard")
    charts = [json.loads(html_lib.unescape(raw)) for raw in re.findall(r'data-chart="([^"]*)"', page)]
    by_channel = next(c for c in charts if c["series"][0]["label"] == "客户数")
    assert by_channel["labels"] == [r["channel"] for r in channels[:CHART_BARS]]
    assert by_channel["labels"][0] == f"地推{CHART_BARS + 4:02d}"  # the channel with most contacts first
    assert [len(s["data"]) for s in by_channel["series"]] == [CHART_BARS, CHART_BARS]
    assert f"图表显示前 {CHART_BARS} 项（共 {CHART_BARS + 8} 项），全部见下表" in page
    stages = next(c for c in charts if c["series"][0]["label"] == "到达人数")
    assert "caption" not in stages and "图表显示前" not in page.split("阶段漏斗")[1].split("渠道漏斗")[0]


async def test_content_leaderboard(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    admin = await as_admin(users)
    rows = await admin.csv("/dashboard/content?format=csv")
    assert len(rows) == 1
    row = rows[0]
    assert (row["slug"], row["shares"], row["opens"], row["read_100"], row["read_through"], row["cta"], row["advances"]) == (
        ITEM, "2", "2", "1", "0.5000", "1", "1"
    )
    rep2 = await as_member(beacon, users, "rep2")
    assert await rep2.csv("/dashboard/content?format=csv") == []  # rep1 shared it, not rep2


async def test_rep_leaderboard_and_sop_compliance(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    mgr = await as_member(beacon, users, "mgr1")
    reps = {r["userid"]: r for r in await mgr.csv("/dashboard/reps?format=csv&table=reps")}
    assert set(reps) == {"mgr1", "rep1", "rep2"}  # not rep3: not in mgr1's team
    rep1 = reps["rep1"]
    assert (rep1["tasks_done"], rep1["on_time"], rep1["on_time_rate"], rep1["shares"], rep1["opens"]) == ("2", "1", "0.5000", "2", "2")
    assert rep1["follow_up_median_s"] == "9000"  # median of 2 h and 3 h
    assert reps["rep2"]["overdue_open"] == "1"
    sop = {r["userid"]: r for r in await mgr.csv("/dashboard/reps?format=csv&table=sop")}
    assert (sop["rep2"]["due"], sop["rep2"]["done"], sop["rep2"]["on_time"], sop["rep2"]["overdue"], sop["rep2"]["compliance"]) == (
        "2", "1", "1", "1", "0.5000"
    )
    assert (sop["rep1"]["due"], sop["rep1"]["overdue"], sop["rep1"]["compliance"]) == ("1", "0", "0.0000")
    _, html, _ = await mgr.get("/dashboard/reps")
    assert "2.5 小时" in html


# --- contacts -----------------------------------------------------------------------------------


async def test_contact_list_scopes_and_filters(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    admin = await as_admin(users)
    rows = await admin.csv("/dashboard/contacts?format=csv")
    assert len(rows) == 6 and rows[0]["external_userid"] == "wmC1"  # highest score first
    assert [r["external_userid"] for r in await admin.csv("/dashboard/contacts?format=csv&stage=nurturing")] == ["wmC2"]
    assert [r["external_userid"] for r in await admin.csv("/dashboard/contacts?format=csv&temperature=hot")] == ["wmC1"]
    assert {r["external_userid"] for r in await admin.csv("/dashboard/contacts?format=csv&q=华东")} == {"wmC1", "wmC2"}
    assert {r["external_userid"] for r in await admin.csv("/dashboard/contacts?format=csv&owner=rep2")} == {"wmC3", "wmC4"}
    assert (await admin.csv("/dashboard/contacts?format=csv&q=孙经理"))[0]["channel"] == "官网"
    assert {r["external_userid"] for r in await admin.csv("/dashboard/contacts?format=csv&channel=none")} == {"wmC4", "wmC6"}
    assert len(await admin.csv("/dashboard/contacts?format=csv&from=2026-11-01&to=2026-11-23")) == 5
    rep1 = await as_member(beacon, users, "rep1")
    assert {r["external_userid"] for r in await rep1.csv("/dashboard/contacts?format=csv")} == {"wmC1", "wmC2"}
    status, html, _ = await rep1.get("/dashboard/contacts?owner=rep2")
    assert status == 403 and "只能查看自己或团队成员的客户" in html
    mgr = await as_member(beacon, users, "mgr1")
    assert {r["external_userid"] for r in await mgr.csv("/dashboard/contacts?format=csv")} == {"wmC1", "wmC2", "wmC3", "wmC4"}
    status, html, _ = await mgr.get("/dashboard/contacts?q=华东")
    assert status == 200 and "共 2 位客户" in html and 'href="/dashboard/contacts/wmC1"' in html


async def test_contact_page_permissions_and_tables(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    rep1, mgr, admin = await as_member(beacon, users, "rep1"), await as_member(beacon, users, "mgr1"), await as_admin(users)
    status, html, _ = await rep1.get("/dashboard/contacts/wmC1")
    assert status == 200 and "刘总" in html and "行为时间线" in html and "阶段历史" in html and "分数明细" in html
    status, html, _ = await rep1.get("/dashboard/contacts/wmC3")
    assert status == 403 and "不属于您或您的团队" in html
    assert (await mgr.get("/dashboard/contacts/wmC3"))[0] == 200
    assert (await mgr.get("/dashboard/contacts/wmC5"))[0] == 403  # rep3 is not in mgr1's team
    assert (await admin.get("/dashboard/contacts/wmC5"))[0] == 200
    assert (await admin.get(f"/dashboard/contacts/id:{seeded['wmC6']}"))[0] == 200
    status, html, _ = await admin.get("/dashboard/contacts/wmNobody")
    assert status == 404 and "没有这个客户" in html and "wmNobody" in html
    timeline = await rep1.csv("/dashboard/contacts/wmC1?format=csv&table=timeline")
    assert sorted(r["type"] for r in timeline) == ["cta", "open", "read"]
    details = {r["type"]: r["details"] for r in timeline}
    assert (details["cta"], details["read"]) == ("预约演示", "读到 100%")  # in words, not cta=demo or depth=100
    stages = await rep1.csv("/dashboard/contacts/wmC1?format=csv&table=stages")
    assert [(r["from"], r["to"]) for r in stages] == [("可培养", "MQL"), ("新线索", "可培养")]
    tasks = await rep1.csv("/dashboard/contacts/wmC1?format=csv&table=tasks")
    assert [t["status"] for t in tasks] == ["已完成"]
    assert all(t["kind"] in {"跟进", "SOP", "热线索", "沉睡唤醒", "手动"} for t in tasks), tasks  # in words, not follow_up
    score = await rep1.csv("/dashboard/contacts/wmC1?format=csv&table=score")
    # The ledger's reason without the entry's "+30": the points have their own column.
    assert ("点击「预约演示」", "30") in {(r["reason"][:8], r["points"]) for r in score}, score
    assert not any(re.search(r"[+-]\d+$", r["reason"]) for r in score), score


def test_event_details_read_in_words_without_plumbing() -> None:
    from handlers.dashboard import _props_text

    assert _props_text({"gated": False, "unlocked": True, "outdated": False}) == ""  # an ordinary open
    assert _props_text({"gated": True, "unlocked": False, "outdated": True}) == "需留资，旧版本链接，未解锁"
    assert _props_text({"gated": True, "unlocked": True, "outdated": False}) == "需留资，已解锁"
    assert _props_text({"amount": 120000}) == "金额 ¥120,000"
    assert _props_text({"by": "customer", "rep": "rep1"}) == "客户删除"  # the rep has its own column
    assert _props_text({"rep": "rep1", "state": "syn1ch00001", "channel": "展会", "half": True}) == "渠道 展会，免验证添加"
    assert _props_text({"to_visitor": 12, "to_contact": None}) == "转给了新读者"
    assert _props_text({"to_visitor": 12, "to_contact": 34}) == "读者已识别为客户 #34"
    assert _props_text({"open_kfid": "wk1", "category": "industry:汽车", "results": 3}) == "菜单选择 汽车，搜索结果 3 条"
    assert _props_text({"handover": "pool"}) == "转人工（待分配）"
    assert _props_text({"name": "刘总", "phone": "138****0000", "company": "", "title": "厂长"}) == "姓名 刘总，手机 138****0000，职务 厂长"
    assert _props_text({"seconds": 95, "pageview": "abcdefgh"}) == "停留 95 秒"
    assert _props_text({"something_new": 1}) == "something_new=1"  # unknown keys still show


async def test_csv_cells_cannot_become_formulas(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    from bot.models import Contact

    async with beacon.rt.sessions() as session, session.begin():
        (await session.scalar(select(Contact).where(Contact.external_userid == "wmC1"))).name = "=HYPERLINK(\"http://x\")"
    rows = await (await as_admin(users)).csv("/dashboard/contacts?format=csv&q=HYPERLINK")
    assert rows[0]["name"] == "'=HYPERLINK(\"http://x\")"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2026-13-01", "日期格式应为 YYYY-MM-DD"),
        ("to=yesterday", "日期格式应为 YYYY-MM-DD"),
        ("from=2026-11-20&to=2026-11-01", "晚于结束日期"),
        ("from=2020-01-01&to=2026-11-23", "日期范围最长"),
        ("format=csv&table=nope", "未知的表格"),
    ],
)
async def test_bad_dashboard_input_is_400_with_a_message(beacon: Any, users: Any, query: str, message: str) -> None:
    admin = await as_admin(users)
    status, html, resp = await admin.get(f"/dashboard?{query}")
    assert status == 400 and message in html
    assert resp.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("query", "message"),
    [("stage=won", "未知阶段"), ("temperature=boiling", "未知温度"), ("channel=abc", "渠道应为"), ("page=0", "页码"), ("from=11/01/2026", "日期格式")],
)
async def test_bad_contact_filters_are_400(beacon: Any, users: Any, query: str, message: str) -> None:
    admin = await as_admin(users)
    status, html, _ = await admin.get(f"/dashboard/contacts?{query}")
    assert status == 400 and message in html


# --- admin pages --------------------------------------------------------------------------------


async def test_admin_pages_are_for_admins(beacon: Any, users: Any, seeded: dict[str, int]) -> None:
    mgr, admin = await as_member(beacon, users, "mgr1"), await as_admin(users)
    for path in ("/admin/content", "/admin/channels", "/admin/scoring", "/admin/playbooks", "/admin/mass-sends"):
        status, html, _ = await mgr.get(path)
        assert status == 403 and "仅限管理员" in html
        status, html, _ = await admin.get(path)
        assert status == 200, path
    status, html, _ = await mgr.post("/admin/mass-sends", data={"csrf": csrf_of(html), "content": ITEM, "action": "send"})
    assert status == 403 and "仅限管理员" in html  # a manager cannot mass-send, with or without a token
    channels = await admin.csv("/admin/channels?format=csv")
    assert {c["name"] for c in channels} == {"2026工博会", "官网"}
    rules = await admin.csv("/admin/scoring?format=csv&table=default-behavior")
    assert {"open", "cta_demo", "deleted_rep"} <= {r["name"] for r in rules}
    library = await admin.csv("/admin/content?format=csv")
    assert ITEM in {r["slug"] for r in library}
    playbooks = await admin.get("/admin/playbooks")
    assert "SOP 剧本" in playbooks[1]


def item_md(slug: str, title: str, body: str, *, attachment: str | None = None, extra: str = "") -> bytes:
    lines = ["---", f"slug: {slug}", f"title: {title}", "kind: case_study", "stage: consideration", "summary: 一句话摘要"]
    if attachment:
        lines.append(f"attachment: {attachment}")
    return ("\n".join(lines) + f"\n{extra}---\n{body}\n").encode()


async def upload(user: PageUser, files: list[tuple[str, bytes]]) -> tuple[int, str]:
    import aiohttp

    _, html, _ = await user.get("/admin/content")
    form = aiohttp.FormData()
    form.add_field("csrf", csrf_of(html))
    for name, data in files:
        form.add_field("files", data, filename=name, content_type="application/octet-stream")
    status, body, _ = await user.post("/admin/content/upload", data=form)
    return status, body


async def current(beacon: Any, slug: str) -> tuple[ContentItem | None, ContentVersion | None]:
    async with beacon.rt.sessions() as session:
        item = await session.scalar(select(ContentItem).where(ContentItem.slug == slug))
        version = await session.get(ContentVersion, item.current_version_id) if item else None
    return item, version


async def test_upload_single_item_with_attachment_then_new_version(beacon: Any, users: Any, lib: Path) -> None:  # noqa: F811
    admin = await as_admin(users)
    count_before = len(await admin.csv("/admin/content?format=csv"))
    status, html = await upload(admin, [("uploaded-case.md", item_md("uploaded-case", "上传的案例", "正文一", attachment="case.pdf")),
                                        ("case.pdf", b"%PDF-1.4 test")])  # fmt: skip
    assert status == 200 and "已导入" in html and "uploaded-case" in html
    item, version = await current(beacon, "uploaded-case")
    assert item.title == "上传的案例" and version.version == 1 and version.attachment_name == "case.pdf"
    library = await admin.csv("/admin/content?format=csv")
    assert len(library) == count_before + 1 and not any(r["retired"] == "true" for r in library)  # nothing else retired
    status, _ = await upload(admin, [("uploaded-case.md", item_md("uploaded-case", "上传的案例", "正文二", attachment="case.pdf")),
                                     ("case.pdf", b"%PDF-1.4 test")])  # fmt: skip
    assert status == 200
    assert (await current(beacon, "uploaded-case"))[1].version == 2


async def test_upload_zip_of_a_folder(beacon: Any, users: Any, lib: Path) -> None:  # noqa: F811
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("library/zip-one.md", item_md("zip-one", "压缩包一", "正文"))
        archive.writestr("library/zip-two.md", item_md("zip-two", "压缩包二", "正文"))
        archive.writestr("__MACOSX/library/._zip-one.md", b"junk")
    status, html = await upload(await as_admin(users), [("batch.zip", buffer.getvalue())])
    assert status == 200 and "新增 2" in html
    assert (await current(beacon, "zip-two"))[0].title == "压缩包二"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("bad.md", b"no front matter here")], "front matter"),
        ([("x.md", item_md("x-item", "X", "body", attachment="missing.pdf"))], "attachment"),
        ([("readme.txt", b"hello")], "没有找到内容条目"),
        ([("evil.zip", b"PK not really a zip")], "不是有效的 zip"),
        ([("..", b"x")], "文件名不可用"),
    ],
)
async def test_upload_errors_import_nothing(beacon: Any, users: Any, lib: Path, files: list[tuple[str, bytes]], message: str) -> None:  # noqa: F811
    status, html = await upload(await as_admin(users), files)
    assert status == 400 and message in html
    assert (await current(beacon, "x-item"))[0] is None


async def test_zip_with_unsafe_paths_is_refused(beacon: Any, users: Any, lib: Path) -> None:  # noqa: F811
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.md", item_md("escape", "逃逸", "正文"))
    status, html = await upload(await as_admin(users), [("evil.zip", buffer.getvalue())])
    assert status == 400 and "路径不安全" in html


async def test_upload_too_large_and_zip_bomb(aiohttp_client: Any, db_url: str, sim: Any, clock: Any) -> None:
    from bot.app import create_app

    settings = page_settings(db_url, sim.url, pages={"upload_max_bytes": 4096})
    client = await aiohttp_client(create_app(settings, clock=clock, background=False))
    user = PageUser(str(client.make_url("/")))
    try:
        assert (await user.login_admin())[0] == 303
        status, html = await upload(user, [("big.md", b"x" * 5000)])
        assert status == 413 and "上传内容超过 4 KB" in html
        bomb = io.BytesIO()  # 200 KB of zeros in a few hundred bytes
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("bomb.md", b"\0" * 200_000)
        status, html = await upload(user, [("bomb.zip", bomb.getvalue())])
        assert status == 400 and "解压后超过 4 KB" in html
    finally:
        await user.close()


async def test_retire_and_restore(beacon: Any, users: Any, lib: Path) -> None:  # noqa: F811
    from tests.test_links import share

    s = await share(beacon, ITEM)
    link = users("Mozilla/5.0 (iPhone) MicroMessenger/8.0")
    assert (await link.get(f"/l/{s['token']}"))[0] == 200
    admin = await as_admin(users)
    _, html, _ = await admin.get("/admin/content")
    assert (await admin.post(f"/admin/content/{ITEM}/retire", data={"csrf": "forged"}))[0] == 403
    status, _, resp = await admin.post(f"/admin/content/{ITEM}/retire", data={"csrf": csrf_of(html)})
    assert status == 303 and resp.headers["Location"] == "/admin/content"
    assert (await link.get(f"/l/{s['token']}"))[0] == 410  # at once: the link cache was dropped
    assert (await admin.post(f"/admin/content/{ITEM}/restore", data={"csrf": csrf_of(html)}))[0] == 303
    assert (await link.get(f"/l/{s['token']}"))[0] == 200
    assert (await admin.post("/admin/content/no-such-item/retire", data={"csrf": csrf_of(html)}))[0] == 404
