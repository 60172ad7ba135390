"""Known data for the page tests, with the numbers the dashboard must show for it.

Team: rep1, rep2 report to mgr1; rep3 reports to nobody; boss is an admin. Contacts c1..c5 were
first seen yesterday (inside the default 30-day range), c6 sixty days ago (outside it).

| contact | owner | channel | stage now | stage history |
|---|---|---|---|---|
| wmC1 | rep1 | 2026工博会 | mql (60, hot) | new→nurturing (23 h ago), nurturing→mql (12 h ago) |
| wmC2 | rep1 | 2026工博会 | nurturing | new→nurturing |
| wmC3 | rep2 | 官网 | customer | new→nurturing→mql→sql→customer |
| wmC4 | rep2 | — | new | — |
| wmC5 | rep3 | 官网 | invalid | new→nurturing→invalid |
| wmC6 | — | — | new | — (60 days ago) |

rep1 shared case-auto-parts-oee with wmC1 and wmC2; wmC1 opened it, read it to 100 % and clicked
the demo CTA (20 h ago, before its MQL move); wmC2 opened it and read half. wmC1's ledger explains
its 60 points as the default rules give them: phone +10, open +3, reads +5 and +12, demo CTA +30.
Tasks: rep1 two follow-ups done in 2 h (on time) and 3 h (late); rep2 one SOP task done on time and
one overdue; rep1 one SOP task due later today.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy import select

from bot.models import (
    Channel,
    Contact,
    ContentItem,
    Event,
    ScoreEntry,
    Share,
    StageChange,
    Task,
)
from bot.shares import new_token
from tests.conftest import make_settings
from tests.test_links import Browser

TEAM = [
    {"userid": "rep1", "name": "张三", "role": "rep", "manager": "mgr1"},
    {"userid": "rep2", "name": "李四", "role": "rep", "manager": "mgr1"},
    {"userid": "rep3", "name": "赵五", "role": "rep"},
    {"userid": "mgr1", "name": "王经理", "role": "manager"},
    {"userid": "boss", "name": "钱总", "role": "admin"},
]
ITEM = "case-auto-parts-oee"

# reached counts per stage new, nurturing, mql, sql, customer, for each viewer
FUNNEL = {
    "admin": [5, 4, 2, 1, 1],
    "mgr1": [4, 3, 2, 1, 1],
    "rep1": [2, 2, 1, 0, 0],
}


def page_settings(db_url: str, api_base: str, **sections: Any) -> Any:
    return make_settings(db_url, api_base=api_base, team={"members": TEAM}, **sections)


def _history(contact_id: int, stages: list[str], start: dt.datetime, step: dt.timedelta) -> list[StageChange]:
    return [
        StageChange(contact_id=contact_id, from_stage=a, to_stage=b, by="rule:test", reason="", at=start + i * step)
        for i, (a, b) in enumerate(itertools.pairwise(stages))
    ]


async def seed(beacon: Any) -> dict[str, int]:
    """Insert the data above (the library must be imported); returns contact ids by external_userid."""
    now = beacon.clock.now()
    day = dt.timedelta(days=1)
    ids: dict[str, int] = {}
    async with beacon.rt.sessions() as session, session.begin():
        expo, web = Channel(name="2026工博会", state="ch_expo"), Channel(name="官网", state="ch_web")
        session.add_all([expo, web])
        await session.flush()
        spec = [
            ("wmC1", "刘总", "华东汽车", "rep1", expo.id, "mql", "hot", 60.0),
            ("wmC2", "陈工", "华东汽车", "rep1", expo.id, "nurturing", "cold", 12.0),
            ("wmC3", "孙经理", "南方电子", "rep2", web.id, "customer", "warm", 30.0),
            ("wmC4", "周女士", "北方食品", "rep2", None, "new", "cold", 0.0),
            ("wmC5", "吴先生", "西部化工", "rep3", web.id, "invalid", "cold", 5.0),
            ("wmC6", "郑先生", "旧客户", None, None, "new", "cold", 0.0),
        ]
        for ext, name, company, owner, channel, stage, temp, score in spec:
            created = now - (60 * day if ext == "wmC6" else day)
            contact = Contact(external_userid=ext, name=name, company=company, owner_userid=owner, channel_id=channel, stage=stage,
                              temperature=temp, score=score, created_at=created, updated_at=created,
                              phone="13812345678" if ext == "wmC1" else None)  # fmt: skip
            if ext == "wmC5":
                contact.reach = 1  # as its moves through nurturing (the history below) left it
            session.add(contact)
            await session.flush()
            ids[ext] = contact.id
        session.add_all(_history(ids["wmC1"], ["new", "nurturing"], now - 23 * dt.timedelta(hours=1), day))
        session.add(StageChange(contact_id=ids["wmC1"], from_stage="nurturing", to_stage="mql", by="rule:test", reason="", at=now - dt.timedelta(hours=12)))
        session.add_all(_history(ids["wmC2"], ["new", "nurturing"], now - day, day))
        session.add_all(_history(ids["wmC3"], ["new", "nurturing", "mql", "sql", "customer"], now - day, dt.timedelta(hours=1)))
        session.add_all(_history(ids["wmC5"], ["new", "nurturing", "invalid"], now - day, dt.timedelta(hours=1)))

        item = await session.scalar(select(ContentItem).where(ContentItem.slug == ITEM))
        read_at = now - dt.timedelta(hours=20)
        for ext in ("wmC1", "wmC2"):
            share = Share(token=new_token(), item_id=item.id, version_id=item.current_version_id, rep_userid="rep1",
                          contact_id=ids[ext], source="api", created_at=now - day)  # fmt: skip
            session.add(share)
            await session.flush()
            common = {"contact_id": ids[ext], "share_id": share.id, "item_id": item.id, "version_id": item.current_version_id,
                      "rep_userid": "rep1", "processed": True, "received_at": read_at}  # fmt: skip
            session.add(Event(type="open", occurred_at=read_at, props={}, **common))
            depth = 100 if ext == "wmC1" else 50
            session.add(Event(type="read", occurred_at=read_at, props={"depth": depth}, **common))
            if ext == "wmC1":
                session.add(Event(type="cta", occurred_at=read_at, props={"cta": "demo"}, **common))

        for rule, points, reason in (("has_phone", 10.0, "电话已填写"), ("open", 3.0, f"打开《{item.title}》"),
                                     ("read_50", 5.0, f"阅读《{item.title}》至100%"), ("read_75_solution", 12.0, f"阅读《{item.title}》至100%"),
                                     ("cta_demo", 30.0, f"点击「预约演示」《{item.title}》")):  # fmt: skip
            # As the scorer writes them: the reason ends with the entry's points.
            session.add(ScoreEntry(contact_id=ids["wmC1"], model="default", rule=rule, points=points, reason=f"{reason} {points:+g}",
                                   at=read_at))

        hour = dt.timedelta(hours=1)
        session.add_all([
            Task(kind="follow_up", title="跟进 MQL：刘总", owner_userid="rep1", contact_id=ids["wmC1"], status="done",
                 created_at=now - 10 * hour, due_at=now - 6 * hour, completed_at=now - 8 * hour),
            Task(kind="follow_up", title="跟进：陈工", owner_userid="rep1", contact_id=ids["wmC2"], status="done",
                 created_at=now - 5 * hour, due_at=now - 4 * hour, completed_at=now - 2 * hour),
            Task(kind="sop", title="发送案例", owner_userid="rep2", contact_id=ids["wmC3"], status="done",
                 created_at=now - 2 * day, due_at=now - 20 * hour, completed_at=now - 21 * hour),
            Task(kind="sop", title="电话沟通", owner_userid="rep2", contact_id=ids["wmC4"], status="open",
                 created_at=now - 2 * day, due_at=now - 3 * hour),
            Task(kind="sop", title="发送方案", owner_userid="rep1", contact_id=ids["wmC2"], status="open",
                 created_at=now - day, due_at=now + 5 * hour),
        ])  # fmt: skip
    return ids


def csrf_of(html: str) -> str:
    found = re.search(r'(?:name="csrf" value|data-csrf)="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


class PageUser(Browser):
    """A person's browser on the member pages (own cookie jar), logged in by OAuth or admin token."""

    async def login_member(self, beacon: Any, userid: str, next_path: str = "/dashboard") -> None:
        status, _, resp = await self.get(f"/auth/wecom/start?next={quote(next_path)}")
        assert status == 302, status
        state = parse_qs(urlsplit(resp.headers["Location"]).query)["state"][0]
        code = beacon.sim.state.issue_oauth_code(userid=userid)
        status, body, resp = await self.get(f"/auth/wecom/callback?code={code}&state={state}")
        assert status == 303, body
        assert resp.headers["Location"] == next_path

    async def login_admin(self, token: str = "test-admin-token") -> tuple[int, str]:
        _, html, _ = await self.get("/login")
        status, body, _ = await self.post("/login", data={"csrf": csrf_of(html), "token": token, "next": "/dashboard"})
        return status, body

    async def csv(self, path: str) -> list[dict[str, str]]:
        status, body, resp = await self.get(path)
        assert status == 200, body
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert body.startswith("\ufeff")
        return list(csv.DictReader(io.StringIO(body[1:])))
