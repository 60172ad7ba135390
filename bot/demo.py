"""`python -m bot demo`: Beacon and the built-in WeCom simulator in one process, a scripted scenario,
then serving until Ctrl-C so you can look around.

The demo database is rebuilt on every run (it holds demo data only), migrated and loaded with the
sample library from content/library and half a year of the configured team's history (400 customers
and leads, synthesized by bot/synth.py), so the dashboards, leaderboards and digests have a working
team to show.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import re
import signal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import click
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.app import RUNTIME, create_app
from bot.config import Settings
from bot.db import migrate
from bot.models import Contact, Enrollment, Playbook
from bot.scheduler import run_job
from bot.serve import start_scheduler
from bot.sop.command import load_folder
from bot.sop.jobs import sop_tick
from bot.synth import Plan, synthesize
from bot.team import upsert_members
from bot.contact_sync import sync, team_reps
from bot.wecom.simulator import CallbackDriver, FollowUser, SimState, create_simulator_app

LIBRARY = Path(__file__).resolve().parent.parent / "content" / "library"
# (WeChat name, the rep's remark, company, position, rep) of customers the reps had before Beacon.
EXISTING_CUSTOMERS = [
    ("Leo", "刘建国-苏州精工", "苏州精工机械有限公司", "设备部经理", "rep1"),
    ("王磊", "", "宁波海天注塑科技", "采购总监", "rep2"),
    ("🌸Lily", "林丽-常州新能源", "", "", "rep1"),
    ("赵志强", "赵总（合肥电气）", "合肥某电气股份", "副总经理", "rep2"),
    ("孙伟", "", "无锡华光化工", "生产总监", "rep1"),
]
# The team's history before the scenario (bot/synth.py, on the configured reps): enough for the
# dashboards' funnels by channel and by content, leaderboards and digests to show a working team.
HISTORY_CONTACTS, HISTORY_EVENTS = 400, 6000
PHONE_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47"


class Demo:
    def __init__(self, settings: Settings, sim_port: int) -> None:
        self.settings = settings
        self.sim_port = sim_port
        self.base = settings.server.public_url
        self.auth = {"Authorization": f"Bearer {settings.server.admin_token}"}
        self.state = SimState(settings.wecom.corp_id, settings.wecom.secret, settings.wecom.agent_id)
        self.step_no = 0

    def step(self, title: str) -> None:
        self.step_no += 1
        click.secho(f"\n[{self.step_no}] {title}", bold=True)

    def say(self, text: str) -> None:
        click.echo(f"    {text}")

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        """Poll `predicate` (a function, or a coroutine function) until it gives something truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if loop.time() > deadline:
                raise TimeoutError("the demo scenario did not complete in time")
            await asyncio.sleep(0.05)

    def seed_simulator(self) -> None:
        for member in self.settings.team.members:
            self.state.add_member(member.userid, member.name)
        self.state.add_external_contact_profile(
            "wmDemoCustomer01", "陈总", corp_name="华东精密制造有限公司", position="副总经理", unionid="oDemoUnion01",
            follow_user=["rep1"],
        )
        # Customers the reps had before Beacon came: `contact sync` brings them in (the scenario's last step).
        for n, (wechat, remark, company, position, rep) in enumerate(EXISTING_CUSTOMERS, 2):
            follow = FollowUser(rep, int(self.state.clock()) - 86400 * 30 * n, remark=remark)
            self.state.add_external_contact_profile(f"wmDemoCustomer{n:02d}", wechat, corp_name=company or None,
                                                    position=position or None, follow_user=[follow])

    async def scenario(self, http: aiohttp.ClientSession, app: web.Application) -> None:
        rt = app[RUNTIME]
        driver = CallbackDriver(
            http, f"{self.base}/wecom/callback", token=self.settings.wecom.token,
            encoding_aes_key=self.settings.wecom.encoding_aes_key, corp_id=self.settings.wecom.corp_id,
            agent_id=self.settings.wecom.agent_id, state=self.state,
        )
        self.step("WeCom verifies the callback URL (GET /wecom/callback)")
        result = await driver.verify_url("demo-echo-1234")
        self.say(f"answer {result.status}: {result.body!r} (WeCom expects the decrypted echostr)")

        self.step("Rep 张三 (rep1) asks the bot for help in the Beacon app")
        result = await driver.send_text("rep1", "帮助")
        self.say(f"callback stored and acknowledged: HTTP {result.status}")
        reply = await self.wait_for(lambda: self.state.messages_to("rep1"))
        for line in reply[-1].payload.get("text", {}).get("content", "").splitlines()[:3]:
            self.say(f"bot → rep1: {line}")

        self.step("Rep 张三 shares a case study with customer 陈总 (POST /api/shares)")
        async with http.post(
            f"{self.base}/api/shares", headers=self.auth,
            json={"content": "case-auto-parts-oee", "rep": "rep1", "contact": "wmDemoCustomer01", "channel": None},
        ) as resp:
            share = await resp.json()
        self.say(f"tracked link: {share['url']}")
        contact = await self.wait_for(lambda: self.named_customer(http))
        self.say(f"Beacon knew the customer only by his id; it fetched his WeCom profile: {contact['name']}, "
                 f"{contact.get('title') or ''} @ {contact.get('company') or ''}")

        self.step("陈总 opens the link on his phone, reads to the end and clicks 预约演示")
        customer = aiohttp.ClientSession(headers={"User-Agent": PHONE_UA}, cookie_jar=aiohttp.CookieJar(unsafe=True))
        async with customer:
            async with customer.get(share["url"]) as resp:
                html = await resp.text()
                self.say(f"landing page: HTTP {resp.status}, {len(html)} bytes")
            page = dict(re.findall(r'data-(key|pv)="([^"]*)"', html))
            for payload in ({"t": "read", "d": 25}, {"t": "read", "d": 50}, {"t": "read", "d": 75},
                            {"t": "read", "d": 100}, {"t": "dwell", "s": 95, "n": 1}, {"t": "cta", "c": "demo"}):
                async with customer.post(f"{share['url']}/b", json={"k": page["key"], "pv": page["pv"], **payload}) as resp:
                    assert resp.status == 204, resp.status
            self.say("beacons recorded: read 25/50/75/100 %, 95 s on page, CTA 预约演示")
        await rt.tracker.drain()

        self.step("What Beacon knows about 陈总 now (GET /api/contacts/wmDemoCustomer01)")
        async with http.get(f"{self.base}/api/contacts/wmDemoCustomer01", headers=self.auth) as resp:
            contact = await resp.json()
        self.say(f"stage {contact['stage']}, temperature {contact['temperature']}, score {contact['score']}")
        for entry in contact["score_breakdown"][:6]:
            # A ledger reason names its points already ("打开《…》 +3").
            self.say(f"  {entry['reason']}" if entry["reason"] else f"  {entry['rule']} {entry['points']:+g}")
        for event in contact["timeline"][:6]:
            self.say(f"  {event['at'][:19]}  {event['type']:<8} {event.get('item_title') or ''}")

        self.step("张三 gets a follow-up alert in WeCom, a to-do task and the MQL playbook's first step")
        card = await self.wait_for(lambda: [m.payload["template_card"] for m in self.state.messages_to("rep1")
                                            if m.payload.get("msgtype") == "template_card"])
        self.say(f"alert card: {card[-1]['main_title']['title']}")
        self.say(f"  {card[-1].get('sub_title_text', '')}")
        for row in card[-1].get("horizontal_content_list", []):
            self.say(f"  {row['keyname']}: {row['value']}")
        # Reaching MQL enrolled him in the MQL playbook (content/playbooks/mql-handoff.toml); the
        # scheduler's minute tick turns its first step into a task. Run that tick now.
        await run_job(rt, "sop-tick", sop_tick, "sop-tick:demo")
        async with http.get(f"{self.base}/api/tasks?rep=rep1", headers=self.auth) as resp:
            tasks = await resp.json()
        for task in (t for t in tasks if t["contact"] == "wmDemoCustomer01"):
            self.say(f"task #{task['id']}: {task['title']} (due {task['due_at'][:16].replace('T', ' ')} UTC)")

        async with rt.sessions() as session:
            enrolled = (await session.execute(
                select(Playbook.definition, Enrollment.next_step, Enrollment.next_due_at)
                .join(Playbook, Playbook.id == Enrollment.playbook_id).join(Contact, Contact.id == Enrollment.contact_id)
                .where(Contact.external_userid == "wmDemoCustomer01")
            )).all()  # fmt: skip
        tz = ZoneInfo(self.settings.scheduler.timezone)
        for definition, step, due in enrolled:
            title = definition["steps"][step]["title"] if step < len(definition["steps"]) else "—"
            when = f"{due.astimezone(tz):%m-%d %H:%M}" if due else "—"
            self.say(f"SOP playbook 「{definition['name']}」: step {step + 1} 「{title}」 due {when} "
                     f"({self.settings.scheduler.timezone}, business hours)")

        self.step("The reps' customers from before Beacon come in (python -m bot contact sync)")
        report = await sync(rt, team_reps(self.settings), progress=False)
        self.say(f"{report.listed} customers in WeCom: {report.new} new contacts, owned by their rep, "
                 f"named as the rep calls them")
        for n in (2, 3):
            async with http.get(f"{self.base}/api/contacts/wmDemoCustomer{n:02d}", headers=self.auth) as resp:
                contact = await resp.json()
            self.say(f"  {contact['name']} · {contact.get('company') or '—'} · owner {contact.get('owner')}")

    async def named_customer(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        """GET /api/contacts/wmDemoCustomer01 once it has a name (the profile worker fetched it)."""
        async with http.get(f"{self.base}/api/contacts/wmDemoCustomer01", headers=self.auth) as resp:
            contact: dict[str, Any] = await resp.json()
        return contact if contact.get("name") else None

    def where_to_look(self) -> None:
        click.secho("\nWhere to look", bold=True)
        admin = self.settings.server.admin_token
        lines = [
            f"health:           {self.base}/healthz",
            f"metrics:          {self.base}/metrics",
            f"contact (API):    curl -H 'Authorization: Bearer {admin}' {self.base}/api/contacts/wmDemoCustomer01",
            f"content (API):    curl -H 'Authorization: Bearer {admin}' {self.base}/api/content",
            f"WeCom simulator:  http://127.0.0.1:{self.sim_port}/sim/state  (what Beacon sent to \"WeCom\")",
            f"dashboard:        {self.base}/login  (admin token {admin}, or 模拟登录 as 王经理 / 张三)",
            f"sidebar:          {self.base}/sidebar?sim=1&customer=wmDemoCustomer01  (log in as 张三; 模拟模式)",
            f"mass send (群发): {self.base}/admin/mass-sends  (admin token {admin}; e.g. a case study to 张三's MQL leads)",
        ]
        for line in lines:
            click.echo(f"  {line}")


async def run_demo(settings: Settings, *, sim_port: int, once: bool) -> None:
    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite" and url.database:
        for suffix in ("", "-wal", "-shm"):
            Path(url.database + suffix).unlink(missing_ok=True)
    click.echo(f"Preparing the demo database {settings.database.url} …")
    await migrate(settings.database.url)
    from content.importer import import_library

    from bot.db import create_engine, session_factory

    engine = create_engine(settings.database)
    async with session_factory(engine)() as session, session.begin():
        report = await import_library(session, LIBRARY)
        await upsert_members(session, settings.team.members)
    await engine.dispose()
    click.echo(f"Sample content library imported: {report.summary()}")
    history = await synthesize(settings, Plan(
        contacts=HISTORY_CONTACTS, events=HISTORY_EVENTS, reps=0, seed=7, now=dt.datetime.now(dt.timezone.utc),
        team=tuple(m.userid for m in settings.team.members if m.role == "rep"), channel_prefix="",
    ))  # fmt: skip
    click.echo(f"Half a year of the team's history, so the dashboards have something to show: "
               f"{history.rows['contacts']:,} customers and leads from {history.channels} channels, "
               f"{history.rows['events']:,} events, {history.rows['tasks']:,} tasks")

    demo = Demo(settings, sim_port)
    demo.seed_simulator()
    sim_runner = web.AppRunner(create_simulator_app(demo.state), access_log=None)
    await sim_runner.setup()
    await web.TCPSite(sim_runner, "127.0.0.1", sim_port).start()
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.server.host, settings.server.port).start()
    await load_folder(app[RUNTIME])  # the sample SOP playbooks ([sop] folder), as `serve` loads them
    click.echo(f"Beacon on {settings.server.public_url}, WeCom simulator on http://127.0.0.1:{sim_port}")
    scheduler = None
    try:
        async with aiohttp.ClientSession() as http:
            await demo.scenario(http, app)
        demo.where_to_look()
        if not once:
            # As `serve` runs them: SOP steps fall due, the morning lists and digests go out.
            scheduler = start_scheduler(app[RUNTIME])
            click.echo("\nServing until Ctrl-C (scheduled jobs running) …")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await runner.cleanup()
        await sim_runner.cleanup()
        click.echo(json.dumps({"demo": "stopped", "simulator_calls": demo.state.summary().get("calls", {})}, ensure_ascii=False))
