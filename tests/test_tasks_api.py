"""The tasks admin API: list, create, done / snooze / dismiss, and its validation errors."""

from __future__ import annotations

from typing import Any

from tests.test_links import AUTH
from tests.test_scoring_live import new_contact


async def call(beacon: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    resp = await beacon.client.request(method, path, json=body, headers=AUTH)
    return resp.status, await resp.json()


async def test_create_list_and_close_tasks(beacon: Any) -> None:
    await new_contact(beacon, "wmTask", owner_userid="rep1", name="周总")
    status, task = await call(beacon, "POST", "/api/tasks", {"rep": "rep1", "contact": "wmTask", "title": "寄送报价单",
                                                             "due_at": "2026-11-23T15:00:00+08:00", "priority": 1})
    assert status == 201
    assert {k: task[k] for k in ("kind", "title", "contact", "contact_name", "rep", "priority", "status", "due_at")} == {
        "kind": "manual", "title": "寄送报价单", "contact": "wmTask", "contact_name": "周总", "rep": "rep1",
        "priority": 1, "status": "open", "due_at": "2026-11-23T07:00:00+00:00",
    }
    status, plain = await call(beacon, "POST", "/api/tasks", {"rep": "rep1", "title": "整理周报"})
    assert status == 201 and plain["contact"] is None and plain["due_at"] == beacon.clock.now().isoformat()
    await call(beacon, "POST", "/api/tasks", {"rep": "rep2", "title": "别人的任务"})

    status, listed = await call(beacon, "GET", "/api/tasks?rep=rep1&status=open")
    assert status == 200
    assert [(t["id"], t["title"]) for t in listed] == [(task["id"], "寄送报价单"), (plain["id"], "整理周报")]
    assert set(listed[0]) >= {"id", "kind", "title", "contact", "due_at", "status", "snoozed_until"}

    status, snoozed = await call(beacon, "POST", f"/api/tasks/{plain['id']}/snooze", {"minutes": 90})
    assert status == 200 and snoozed["status"] == "open" and snoozed["snoozed_until"] == "2026-11-23T03:30:00+00:00"
    status, snoozed = await call(beacon, "POST", f"/api/tasks/{plain['id']}/snooze", {"until": "2026-11-24T09:00:00+08:00"})
    assert status == 200 and snoozed["snoozed_until"] == "2026-11-24T01:00:00+00:00"
    _, listed = await call(beacon, "GET", "/api/tasks?rep=rep1")
    assert len(listed) == 2  # snoozed tasks are still open

    status, done = await call(beacon, "POST", f"/api/tasks/{task['id']}/done")
    assert status == 200 and done["status"] == "done" and done["completed_at"] == beacon.clock.now().isoformat()
    assert (await call(beacon, "POST", f"/api/tasks/{task['id']}/done"))[0] == 200  # repeating is harmless
    status, dismissed = await call(beacon, "POST", f"/api/tasks/{plain['id']}/dismiss")
    assert status == 200 and dismissed["status"] == "dismissed"
    _, open_now = await call(beacon, "GET", "/api/tasks?rep=rep1&status=open")
    _, done_now = await call(beacon, "GET", "/api/tasks?rep=rep1&status=done")
    assert open_now == [] and [t["id"] for t in done_now] == [task["id"]]
    _, everyone = await call(beacon, "GET", "/api/tasks")
    assert [t["rep"] for t in everyone] == ["rep2"]


async def test_validation_and_unknowns(beacon: Any) -> None:
    bad = [
        ({"title": "x"}, "rep"),
        ({"rep": "rep1"}, "title"),
        ({"rep": "rep1", "title": "  "}, "title"),
        ({"rep": "rep1", "title": "x", "due_at": "tomorrow"}, "due_at"),
        ({"rep": "rep1", "title": "x", "due_at": "2026-11-24T09:00:00"}, "due_at"),
        ({"rep": "rep1", "title": "x", "priority": 7}, "priority"),
        ({"rep": "rep1", "title": "x", "priority": True}, "priority"),
        ({"rep": "rep1", "title": "x", "contact": 5}, "contact"),
        ({"rep": "rep1", "title": "x" * 300}, "title"),
    ]
    for body, name in bad:
        status, answer = await call(beacon, "POST", "/api/tasks", body)
        assert (status, answer["field"]) == (400, name), body
        assert name in answer["error"]
    assert (await call(beacon, "POST", "/api/tasks", {"rep": "ghost", "title": "x"}))[0] == 404
    status, answer = await call(beacon, "POST", "/api/tasks", {"rep": "rep1", "title": "x", "contact": "wmNobody"})
    assert status == 404 and "wmNobody" in answer["error"]
    status, answer = await call(beacon, "GET", "/api/tasks?status=later")
    assert status == 400 and answer["field"] == "status"
    assert (await call(beacon, "GET", "/api/tasks?rep=ghost"))[0] == 404

    for action in ("done", "dismiss", "snooze"):
        status, answer = await call(beacon, "POST", f"/api/tasks/424242/{action}", {"minutes": 5})
        assert status == 404 and answer["error"] == "unknown task: 424242"
    _, task = await call(beacon, "POST", "/api/tasks", {"rep": "rep1", "title": "回访"})
    url = f"/api/tasks/{task['id']}/snooze"
    for body, name in (({}, "until"), ({"minutes": 0}, "minutes"), ({"minutes": "5"}, "minutes"),
                       ({"until": "2020-01-01T00:00:00+08:00"}, "until"), ({"until": "2027-06-01T00:00:00+08:00"}, "until")):
        status, answer = await call(beacon, "POST", url, body)
        assert (status, answer["field"]) == (400, name), body
    await call(beacon, "POST", f"/api/tasks/{task['id']}/done")
    status, answer = await call(beacon, "POST", url, {"minutes": 5})
    assert status == 409 and "done" in answer["error"]
    assert (await call(beacon, "POST", f"/api/tasks/{task['id']}/dismiss"))[0] == 409
    resp = await beacon.client.get("/api/tasks")
    assert resp.status == 401
