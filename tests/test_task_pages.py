"""The rep's task pages (/tasks, /tasks/{id}) that digests, SOP messages and alert cards link to."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.models import Task
from tests.pages_seed import PageUser, csrf_of, page_settings, seed


@pytest.fixture
def settings(db_url: str, sim: Any) -> Any:
    return page_settings(db_url, sim.url)


@pytest.fixture
async def people(beacon: Any, lib: Path) -> AsyncIterator[dict[str, Any]]:  # noqa: F811
    ids = await seed(beacon)
    made: dict[str, PageUser] = {}
    for userid in ("rep1", "rep2", "mgr1"):
        made[userid] = PageUser(str(beacon.client.make_url("/")), "Mozilla/5.0 (Macintosh) Chrome/126.0")
        await made[userid].login_member(beacon, userid)
    yield {"ids": ids, **made}
    for user in made.values():
        await user.close()


async def _task(beacon: Any, title: str) -> Task:
    async with beacon.rt.sessions() as session:
        return (await session.scalars(select(Task).where(Task.title == title))).one()


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-task="(\d+)"', html)


async def test_my_tasks_lists_open_then_closed_and_only_mine(beacon: Any, people: dict[str, Any]) -> None:
    status, html, _ = await people["rep1"].get("/tasks")
    assert status == 200
    mine_open = await _task(beacon, "发送方案")
    theirs = await _task(beacon, "电话沟通")
    due_section = html.split('id="due"')[1].split('id="closed"')[0]
    assert _rows(due_section) == [str(mine_open.id)]
    closed_section = html.split('id="closed"')[1]
    assert len(_rows(closed_section)) == 2  # rep1's two done follow-ups
    assert str(theirs.id) not in _rows(html)
    # rep2's overdue task is marked as such on rep2's list
    _, html2, _ = await people["rep2"].get("/tasks")
    assert "已逾期" in html2 and "电话沟通" in html2
    # a rep may not list someone else's tasks; their manager may
    status, _, _ = await people["rep1"].get("/tasks?rep=rep2")
    assert status == 403
    status, html3, _ = await people["mgr1"].get("/tasks?rep=rep2")
    assert status == 200 and "电话沟通" in html3 and "李四" in html3


async def test_task_page_actions_by_the_owner(beacon: Any, people: dict[str, Any]) -> None:
    task = await _task(beacon, "发送方案")
    rep1 = people["rep1"]
    status, html, _ = await rep1.get(f"/tasks/{task.id}")
    assert status == 200 and "陈工" in html and 'action="/tasks/%d/done"' % task.id in html
    csrf = csrf_of(html)

    # snooze until tomorrow morning (09:00 local): still open, shown as snoozed
    status, _, resp = await rep1.post(f"/tasks/{task.id}/snooze", data={"csrf": csrf, "for": "明天"})
    assert status == 303 and resp.headers["Location"] == f"/tasks/{task.id}?done=snoozed"
    snoozed = await _task(beacon, "发送方案")
    local = snoozed.snoozed_until.astimezone(dt.timezone(dt.timedelta(hours=8)))
    assert snoozed.status == "open" and (local.hour, local.minute) == (9, 0)
    assert local.date() == (beacon.clock.now() + dt.timedelta(hours=8)).date() + dt.timedelta(days=1)
    _, html, _ = await rep1.get(f"/tasks/{task.id}?done=snoozed")
    assert "已推迟提醒" in html and "推迟至" in html
    _, listing, _ = await rep1.get("/tasks")
    assert _rows(listing.split('id="later"')[1].split('id="closed"')[0]) == [str(task.id)]

    # a duration nobody can read: told beside the field, nothing changed
    status, _, resp = await rep1.post(f"/tasks/{task.id}/snooze", data={"csrf": csrf, "for": "过一阵子"})
    assert status == 303
    _, html, _ = await rep1.get(resp.headers["Location"])
    assert 'id="for-error"' in html and "看不懂的时长" in html
    assert (await _task(beacon, "发送方案")).snoozed_until == snoozed.snoozed_until

    # done: closed with the time; doing it again is harmless; snoozing a closed task is refused
    status, _, resp = await rep1.post(f"/tasks/{task.id}/done", data={"csrf": csrf})
    assert status == 303 and resp.headers["Location"].endswith("done=done")
    done = await _task(beacon, "发送方案")
    assert done.status == "done" and done.completed_at == beacon.clock.now() and done.snoozed_until is None
    status, _, resp = await rep1.post(f"/tasks/{task.id}/snooze", data={"csrf": csrf, "for": "1h"})
    _, html, _ = await rep1.get(resp.headers["Location"])
    assert "已完成" in html and "不能再推迟" in html
    assert 'action="/tasks/%d/done"' % task.id not in html  # no buttons on a closed task


async def test_others_look_but_do_not_touch(beacon: Any, people: dict[str, Any]) -> None:
    task = await _task(beacon, "电话沟通")  # rep2's
    status, _, _ = await people["rep1"].get(f"/tasks/{task.id}")
    assert status == 403
    status, html, _ = await people["mgr1"].get(f"/tasks/{task.id}")
    assert status == 200 and "只有任务负责人可以处理" in html
    status, _, _ = await people["mgr1"].post(f"/tasks/{task.id}/done", data={"csrf": csrf_of(html)})
    assert status == 403
    # without the page's CSRF token even the owner's browser is refused
    status, _, _ = await people["rep2"].post(f"/tasks/{task.id}/dismiss", data={"csrf": "forged"})
    assert status == 403
    assert (await _task(beacon, "电话沟通")).status == "open"


async def test_unknown_and_anonymous(beacon: Any, people: dict[str, Any]) -> None:
    for path in ("/tasks/999999", "/tasks/abc", "/tasks/12345678901234567890"):
        status, html, _ = await people["rep1"].get(path)
        assert status == 404, path
        assert "任务" in html
    anon = PageUser(str(beacon.client.make_url("/")), "Mozilla/5.0 (Macintosh) Chrome/126.0")
    try:
        status, _, resp = await anon.get("/tasks/1")
        assert status == 302 and resp.headers["Location"].startswith("/login?next=")
    finally:
        await anon.close()
