"""Scale-out: three `python -m bot serve` processes on one PostgreSQL database and one WeCom simulator.

Load is spread over the processes: encrypted callbacks (WeCom's redeliveries of one message land on
other processes, at the same moment), link opens (the same browser on several processes), contacts
added and heated up by events arriving at every process. The scheduler runs in all three, and the
daily digests are due when they start, so all three race for them. Afterwards:
- every acknowledged callback was processed once (one inbox row, done; one reply);
- every answered open is stored once;
- each contact's score is the sum of its ledger and what `python -m bot rescore` computes;
- one alert card per contact burst, one digest per recipient, each scheduled run claimed by one process;
- WeCom's duplicate check never had to suppress anything (no message was sent twice).

Also here: the in-process regression test for scoring state cached across a tracker handover, and the
[database] pool settings.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from tests.conftest import AGENT_ID, CB_AES_KEY, CB_TOKEN, CORP_ID, CORP_SECRET, T0, _truncate_pg, make_settings
from tests.helpers import ROOT, Server, free_port, run_cli, wait_for

UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148 MicroMessenger/8.0.47"
AUTH = {"Authorization": "Bearer test-admin-token"}
TZ = "Asia/Shanghai"
PROCESSES = 3
DELAY_S = 6  # [alerts] delay_s: a contact's burst must be absorbed by one pending alert within this
CONTACTS = [(f"wmScale{n:04d}", "rep1" if n % 2 else "rep2") for n in range(6)]


def _config(path: Path, *, db_url: str, api_base: str, port: int, digest_at: str) -> Path:
    path.write_text(
        f"""
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"
admin_token = "test-admin-token"
secret_key = "test-secret-key-for-signing"
[database]
url = "{db_url}"
pool_size = 4
max_overflow = 4
pool_timeout = 20.0
[wecom]
corp_id = "{CORP_ID}"
agent_id = {AGENT_ID}
secret = "{CORP_SECRET}"
token = "{CB_TOKEN}"
encoding_aes_key = "{CB_AES_KEY}"
api_base = "{api_base}"
[scheduler]
timezone = "{TZ}"
[security]
public_per_ip_per_minute = 0
[alerts]
delay_s = {DELAY_S}.0
quiet_start = ""
quiet_end = ""
[digest]
reps_at = "{digest_at}"
managers_at = "{digest_at}"
[logging]
format = "text"
[[team.members]]
userid = "rep1"
name = "张三"
manager = "mgr1"
[[team.members]]
userid = "rep2"
name = "李四"
manager = "mgr1"
[[team.members]]
userid = "mgr1"
name = "王经理"
role = "manager"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def pg_url(pg_database: str) -> str:
    _truncate_pg(pg_database)
    return pg_database


class Cluster:
    """The processes, the simulator's state and an HTTP session; callbacks encrypted as WeCom does."""

    def __init__(self, servers: list[Server], state: Any, http: aiohttp.ClientSession) -> None:
        from bot.wecom.sim_driver import CallbackDriver

        self.servers = servers
        self.state = state
        self.http = http
        self.crypto = CallbackDriver(http, f"{servers[0].url}/wecom/callback", token=CB_TOKEN, encoding_aes_key=CB_AES_KEY,
                                     corp_id=CORP_ID, agent_id=AGENT_ID, state=state)

    def url(self, n: int) -> str:
        return self.servers[n % len(self.servers)].url

    async def callback(self, xml: str, to: list[int]) -> list[int]:
        """POST one encrypted callback, byte for byte the same, to these processes at once (WeCom's
        retries after a slow answer land wherever the load balancer sends them)."""
        timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
        body, signature = self.crypto.envelope(xml, timestamp=timestamp, nonce=nonce)
        params = {"msg_signature": signature, "timestamp": timestamp, "nonce": nonce}

        async def post(n: int) -> int:
            async with self.http.post(f"{self.url(n)}/wecom/callback", params=params, data=body.encode(),
                                      headers={"Content-Type": "text/xml"}) as resp:
                return resp.status

        return list(await asyncio.gather(*(post(n) for n in to)))

    async def open_link(self, n: int, token: str, cookie: str) -> int:
        async with self.http.get(f"{self.url(n)}/l/{token}", headers={"User-Agent": UA, "Cookie": f"bcn_v={cookie}"}) as resp:
            await resp.read()
            return resp.status

    async def api(self, n: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.url(n)}{path}", json=body, headers=AUTH) as resp:
            return resp.status, await resp.json()


def _text_xml(sender: str, content: str, msg_id: int) -> str:
    from bot.wecom.sim_driver import build_xml

    return build_xml([("ToUserName", CORP_ID), ("FromUserName", sender), ("CreateTime", int(time.time())), ("MsgType", "text"),
                      ("Content", content), ("MsgId", msg_id), ("AgentID", AGENT_ID)])


def _contact_added_xml(rep: str, external: str) -> str:
    from bot.wecom.sim_driver import build_xml

    return build_xml([("ToUserName", CORP_ID), ("FromUserName", "sys"), ("CreateTime", int(time.time())), ("MsgType", "event"),
                      ("Event", "change_external_contact"), ("ChangeType", "add_external_contact"), ("UserID", rep),
                      ("ExternalUserID", external)])


def _counter(metrics: str, name: str) -> float:
    """The sum of a Prometheus counter over its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _cookie(tag: str, n: int) -> str:
    return f"{tag}{n:020d}"[-24:].rjust(24, "c")


async def _db(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))


async def _seed_tasks(url: str) -> None:
    """An open task for each rep, due today: the to-do digests then have something to say."""
    conn = await _db(url)
    try:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        for rep, manager, role in (("mgr1", None, "manager"), ("rep1", "mgr1", "rep"), ("rep2", "mgr1", "rep")):
            await conn.execute(
                "INSERT INTO reps (userid, name, role, manager_userid, region, source, active, created_at) "
                "VALUES ($1, $1, $2, $3, '', 'config', true, $4)", rep, role, manager, now)
        for rep in ("rep1", "rep2"):
            await conn.execute(
                "INSERT INTO tasks (kind, title, body, owner_userid, priority, status, due_at, created_at) "
                "VALUES ('manual', $1, '', $2, 2, 'open', $3, $3)", f"回访 {rep}", rep, now)
    finally:
        await conn.close()


def _digest_minute() -> str:
    """A local minute that has just passed today: the daily digests are due at start (catch-up)."""
    local = dt.datetime.now(ZoneInfo(TZ))
    return f"{local:%H:%M}"


@pytest.mark.postgres
@pytest.mark.slow
async def test_three_processes_share_the_work_exactly_once(tmp_path: Path, aiohttp_server: Any, pg_url: str) -> None:
    from bot.wecom.simulator import SimState, create_simulator_app

    started = time.monotonic()
    if dt.datetime.now(ZoneInfo(TZ)).time() >= dt.time(23, 59):
        await asyncio.sleep(75)  # keep the whole run within one local day (the digests' day)
    state = SimState(CORP_ID, CORP_SECRET, AGENT_ID)
    sim = await aiohttp_server(create_simulator_app(state))
    api_base = str(sim.make_url("")).rstrip("/")
    digest_at = _digest_minute()
    ports = [free_port() for _ in range(PROCESSES)]
    configs = [_config(tmp_path / f"beacon{n}.toml", db_url=pg_url, api_base=api_base, port=port, digest_at=digest_at)
               for n, port in enumerate(ports)]
    imported = run_cli("--config", str(configs[0]), "content", "import", str(ROOT / "content" / "library"))
    assert imported.returncode == 0, imported.stderr
    await _seed_tasks(pg_url)
    today = dt.datetime.now(ZoneInfo(TZ)).date().isoformat()

    servers = [Server(config, port) for config, port in zip(configs, ports)]
    await asyncio.gather(*(s.start() for s in servers))  # started together: their catch-up runs race
    try:
        async with aiohttp.ClientSession() as http:
            cluster = Cluster(servers, state, http)
            acked, opened, bursts = await _drive_load(cluster)
            await _settle(cluster, pg_url)
            health = [await (await http.get(f"{s.url}/healthz")).json() for s in servers]
            processed = [_counter(await (await http.get(f"{s.url}/metrics")).text(), "beacon_callbacks_processed_total")
                         for s in servers]
    finally:
        codes = [await s.stop() for s in servers]
    assert codes == [0] * PROCESSES, [s.log.read_text()[-2000:] for s in servers]
    assert all(h["inbox"] == {"pending": 0, "parked": 0} and h["outbox"] == {"pending": 0, "failed": 0} for h in health), health

    conn = await _db(pg_url)
    try:
        # Each callback was handled by exactly one process, and every process took a share of them.
        assert sum(processed) == await conn.fetchval("SELECT count(*) FROM inbox"), processed
        assert sum(1 for n in processed if n) >= 2, processed
        await _check_callbacks(conn, state, acked)
        await _check_opens(conn, opened)
        await _check_alerts(conn, state, bursts)
        await _check_digests_and_jobs(conn, state, servers, today)
        assert state.duplicates == [], "WeCom's duplicate check suppressed a message sent twice"
        await _check_scores(conn, configs[0])
        digests = await conn.fetchval("SELECT count(*) FROM digests")
        # A digest run by hand on every process at once, after the scheduled one: nothing goes out again.
        runs = await asyncio.gather(*(asyncio.to_thread(run_cli, "--config", str(c), "digest", "reps", "--date", today)
                                      for c in configs))
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'") == 0
        assert await conn.fetchval("SELECT count(*) FROM digests") == digests
    finally:
        await conn.close()
    assert time.monotonic() - started < 90


async def _drive_load(cluster: Cluster) -> tuple[dict[int, int], dict[str, tuple[str, int]], dict[str, str]]:
    """Callbacks, opens and contact bursts, spread over the processes. Returns the acknowledged
    messages (msg id → n), the answered opens (cookie → (token, how many buckets it may span)) and
    the heated contacts (external_userid → owner)."""
    state = cluster.state
    acked: dict[int, int] = {}
    opened: dict[str, tuple[str, int]] = {}
    base = 8_000_000_000 + secrets.randbelow(10**6) * 1000

    async def chat(n: int) -> None:
        msg_id = base + n
        targets = [n, n + 1, n + 2] if n % 3 == 0 else [n]  # every third message is redelivered elsewhere at once
        statuses = await cluster.callback(_text_xml(f"u{n}", f"scale-{n} 帮我看看", msg_id), targets)
        if 200 in statuses:
            acked[msg_id] = n

    async def add_contact(n: int, external: str, rep: str) -> None:
        state.link_contact(rep, external)
        statuses = await cluster.callback(_contact_added_xml(rep, external), [n, n + 1])
        assert statuses == [200, 200], statuses

    status, share = await cluster.api(0, "POST", "/api/shares", {"content": "pitch-deck-company-overview", "rep": "rep1"})
    assert status == 201, share
    public = share["token"]

    async def browse(n: int) -> None:
        cookie = _cookie("anon", n)
        window = 1800  # [links] reload_window_s: reopening within it is a reload, deduplicated per bucket
        before = int(time.time() // window)
        targets = [n, n + 1, n + 2] if n % 10 == 0 else [n]  # the same browser on every process at once
        statuses = await asyncio.gather(*(cluster.open_link(t, public, cookie) for t in targets))
        if 200 in statuses:
            opened[cookie] = (public, int(time.time() // window) - before + 1)

    await asyncio.gather(*(chat(n) for n in range(60)), *(browse(n) for n in range(90)),
                         *(add_contact(n, ext, rep) for n, (ext, rep) in enumerate(CONTACTS)))

    async def contacts_in() -> bool:
        for n, (ext, rep) in enumerate(CONTACTS):
            status, body = await cluster.api(n, "GET", f"/api/contacts/{ext}")
            if status != 200 or body["owner"] != rep:
                return False
        return True

    await wait_for(contacts_in, timeout=20, interval=0.1)

    async def burst(n: int, ext: str, rep: str) -> None:
        """Everything a contact does within seconds, arriving at every process."""
        status, share = await cluster.api(n, "POST", "/api/shares", {"content": "blog-oee-common-mistakes", "rep": rep, "contact": ext})
        assert status == 201, share
        cookie = _cookie(f"c{n}", n)
        before = int(time.time() // 1800)
        assert await cluster.open_link(n, share["token"], cookie) == 200
        events = [("read", {"depth": 50}), ("download", {}), ("read", {"depth": 100}), ("dwell", {"seconds": 90}), ("message", {})]
        results = await asyncio.gather(
            cluster.open_link(n + 1, share["token"], cookie),  # a reload on another process
            *(cluster.api(n + k + 1, "POST", "/api/events", {"contact": ext, "type": t, "props": p}) for k, (t, p) in enumerate(events)),
        )
        assert results[0] == 200 and all(status == 202 for status, _ in results[1:]), results
        opened[cookie] = (share["token"], int(time.time() // 1800) - before + 1)

    await asyncio.gather(*(burst(n, ext, rep) for n, (ext, rep) in enumerate(CONTACTS)))
    return acked, opened, dict(CONTACTS)


async def _settle(cluster: Cluster, url: str) -> None:
    """Let the bursts' alerts fall due, close each burst with one more event, wait for quiet queues."""
    conn = await _db(url)
    try:
        async def tracked() -> bool:
            return await conn.fetchval("SELECT count(*) FROM events WHERE processed = false") == 0

        await wait_for(tracked, timeout=20, interval=0.1)
        due = await conn.fetchval("SELECT max(send_after) FROM alerts")
        assert due is not None, "the bursts raised no alert"
        wait = (due.replace(tzinfo=dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)).total_seconds()
        await asyncio.sleep(max(0.0, wait) + 0.2)
        # A message per contact after the delay: the tracker (or the 30 s send-due-alerts job on any
        # process, whichever comes first) sends the pending card.
        closing = await asyncio.gather(*(cluster.api(n, "POST", "/api/events", {"contact": ext, "type": "message"})
                                         for n, (ext, _) in enumerate(CONTACTS)))
        assert all(status == 202 for status, _ in closing), closing

        backlog: dict[str, int] = {}

        async def quiet() -> bool:
            for name, sql in (("pending alerts", "SELECT count(*) FROM alerts WHERE status = 'pending'"),
                              ("pending outbox", "SELECT count(*) FROM outbox WHERE status = 'pending'"),
                              ("open inbox", "SELECT count(*) FROM inbox WHERE status <> 'done'"),
                              ("unprocessed events", "SELECT count(*) FROM events WHERE processed = false"),
                              ("unfinished runs", "SELECT count(*) FROM job_runs WHERE finished_at IS NULL")):
                backlog[name] = await conn.fetchval(sql)
            return not any(backlog.values())

        try:
            await wait_for(quiet, timeout=30, interval=0.1)
        except TimeoutError:
            outbox = await conn.fetch("SELECT id, path, attempts, last_error, next_attempt_at, locked_until, payload::text "
                                      "FROM outbox WHERE status = 'pending'")
            raise AssertionError(f"not settled: {backlog}; outbox: {[tuple(r) for r in outbox]}") from None
    finally:
        await conn.close()


async def _check_callbacks(conn: Any, state: Any, acked: dict[int, int]) -> None:
    assert len(acked) == 60, f"not acknowledged: {sorted(set(range(60)) - set(acked.values()))}"
    rows = await conn.fetch("SELECT dedupe_key, status, attempts FROM inbox WHERE dedupe_key LIKE 'msg:%'")
    by_key = {r["dedupe_key"]: r for r in rows}
    for msg_id in acked:
        row = by_key.get(f"msg:{msg_id}")
        assert row is not None and row["status"] == "done", f"acknowledged but not processed: {msg_id}"
    assert len(rows) == len(acked)
    replies = collections.Counter()
    for entry in state.received_for("/cgi-bin/message/send"):
        found = re.search(r"scale-(\d+)\D", (entry.payload.get("text") or {}).get("content", ""))
        if found:
            replies[int(found.group(1))] += 1
    assert sorted(replies) == list(range(60)), sorted(set(range(60)) - set(replies))
    assert set(replies.values()) == {1}, {n: c for n, c in replies.items() if c != 1}
    added = await conn.fetch("SELECT c.external_userid, count(e.id) AS n FROM contacts c "
                             "JOIN events e ON e.contact_id = c.id AND e.type = 'contact_added' GROUP BY c.external_userid")
    assert {r["external_userid"]: r["n"] for r in added} == {ext: 1 for ext, _ in CONTACTS}


async def _check_opens(conn: Any, opened: dict[str, tuple[str, int]]) -> None:
    rows = await conn.fetch("SELECT v.cookie_id, s.token, count(*) AS n FROM events e JOIN visitors v ON v.id = e.visitor_id "
                            "JOIN shares s ON s.id = e.share_id WHERE e.type = 'open' GROUP BY v.cookie_id, s.token")
    stored = {(r["cookie_id"], r["token"]): r["n"] for r in rows}
    assert len(opened) == 90 + len(CONTACTS)
    for cookie, (token, buckets) in opened.items():
        assert 1 <= stored.get((cookie, token), 0) <= buckets, (cookie, stored.get((cookie, token)))


async def _check_alerts(conn: Any, state: Any, bursts: dict[str, str]) -> None:
    cards = collections.Counter()
    for entry in state.received_for("/cgi-bin/message/send"):
        if entry.payload.get("msgtype") == "template_card":
            cards[(entry.payload["touser"], entry.payload["template_card"]["task_id"])] += 1
    rows = await conn.fetch("SELECT c.external_userid, a.rep_userid, a.card_task_id FROM alerts a "
                            "JOIN contacts c ON c.id = a.contact_id WHERE a.status = 'sent'")
    sent = collections.defaultdict(list)
    for r in rows:
        sent[r["external_userid"]].append((r["rep_userid"], r["card_task_id"]))
    assert {ext: len(v) for ext, v in sent.items()} == {ext: 1 for ext in bursts}, sent
    expected = {(bursts[ext], v[0][1]) for ext, v in sent.items()}
    assert set(cards) == expected, (cards, expected)
    assert set(cards.values()) == {1}, cards
    updates = collections.Counter(e.payload["template_card"]["task_id"] for e in state.received_for("/cgi-bin/message/update_template_card"))
    assert all(n == 1 for n in updates.values()), updates  # a card is updated at most once


async def _check_digests_and_jobs(conn: Any, state: Any, servers: list[Server], today: str) -> None:
    digests = await conn.fetch("SELECT kind, recipient, day::text AS day, content FROM digests")
    assert {d["day"] for d in digests} == {today}
    bodies = {(d["kind"], d["recipient"]): len(json.loads(d["content"])["bodies"]) for d in digests}
    # one row per (kind, recipient, day) by constraint; the manager's to-do list is empty (no tasks)
    assert {key for key, n in bodies.items() if n} == {("reps", "rep1"), ("reps", "rep2"), ("managers", "mgr1")}, bodies
    expected = collections.Counter()
    for (_, recipient), n in bodies.items():
        expected[recipient] += n
    markdown = collections.Counter(e.payload["touser"] for e in state.received_for("/cgi-bin/message/send")
                                   if e.payload.get("msgtype") == "markdown")
    assert markdown == expected, (markdown, bodies)
    assert len(state.received_for("/cgi-bin/media/upload")) == 1  # the managers' chart, once
    runs = await conn.fetch("SELECT run_key, claimed_by, error FROM job_runs")
    assert all(r["error"] is None for r in runs), [r for r in runs if r["error"]]
    keys = {r["run_key"] for r in runs}
    assert {f"digest-reps:{today}", f"digest-managers:{today}"} <= keys
    logs = [s.log.read_text(encoding="utf-8") for s in servers]
    for job in ("digest-reps", "digest-managers"):
        ran = [log.count(f"caught up {job} ") for log in logs]
        skipped = [log.count(f"job {job} run {job}:{today} already claimed elsewhere") for log in logs]
        assert sum(ran) == 1 and sum(skipped) == PROCESSES - 1, (job, ran, skipped)
    # every run any process skipped was claimed (and finished) by exactly one other
    for log in logs:
        for key in re.findall(r"job \S+ run (\S+) already claimed elsewhere", log):
            assert key in keys, key


async def _check_scores(conn: Any, config: Path) -> None:
    async def snapshot() -> tuple[dict[str, float], dict[str, float], collections.Counter]:
        scores = {r["external_userid"]: round(r["score"], 2) for r in await conn.fetch(
            "SELECT external_userid, score FROM contacts WHERE external_userid IS NOT NULL")}
        sums = {r["external_userid"]: round(r["total"], 2) for r in await conn.fetch(
            "SELECT c.external_userid, coalesce(sum(l.points), 0) AS total FROM contacts c "
            "LEFT JOIN score_ledger l ON l.contact_id = c.id WHERE c.external_userid IS NOT NULL GROUP BY c.external_userid")}
        ledger = collections.Counter((r["external_userid"], r["rule"], round(r["points"], 2)) for r in await conn.fetch(
            "SELECT c.external_userid, l.rule, l.points FROM score_ledger l JOIN contacts c ON c.id = l.contact_id"))
        return scores, sums, ledger

    scores, sums, ledger = await snapshot()
    assert scores == sums
    assert set(scores) == {ext for ext, _ in CONTACTS}
    # contact_added 5, open 3, read 5 (twice, capped), download 8, dwell 3, message 2 + 2: every burst the same
    assert set(scores.values()) == {28.0}, scores
    rescored = run_cli("--config", str(config), "rescore")
    assert rescored.returncode == 0, rescored.stderr
    assert " 0 scores changed" in rescored.stdout + rescored.stderr, rescored.stdout + rescored.stderr
    assert await snapshot() == (scores, sums, ledger)


# ---- in process: the scoring cache across a tracker handover ----------------------------------------


async def test_scores_stay_consistent_when_the_tracker_moves_and_decay_runs_elsewhere(db_url: str) -> None:
    """Two processes on one database. The tracker lease moves from A to B and back, and the nightly
    decay runs in B while A is the tracker: A's cached scoring state must not be trusted after either."""
    from sqlalchemy import func, select

    from bot.clock import FrozenClock
    from bot.leases import release_leases
    from bot.models import Contact, ScoreEntry
    from bot.runtime import Runtime
    from bot.scheduler import run_job
    from bot.scoring.jobs import decay_scores

    clock = FrozenClock(T0)
    settings = make_settings(db_url)
    a, b = Runtime.build(settings, routers=[], clock=clock), Runtime.build(settings, routers=[], clock=clock)
    await a.start(background=False)
    await b.start(background=False)
    try:
        async with a.sessions() as session, session.begin():
            contact = Contact(external_userid="wmHandover", created_at=clock.now(), updated_at=clock.now())
            session.add(contact)
            await session.flush()
            cid = contact.id

        async def event(rt: Runtime, type_: str) -> None:
            await rt.events.contact_event(type_, cid, occurred_at=clock.now(), received_at=clock.now())
            assert await rt.tracker.drain() == 1

        async def stored() -> tuple[float, float]:
            async with a.sessions() as session:
                score = await session.scalar(select(Contact.score).where(Contact.id == cid))
                total = await session.scalar(select(func.coalesce(func.sum(ScoreEntry.points), 0.0)).where(ScoreEntry.contact_id == cid))
            return round(score, 2), round(float(total), 2)

        await event(a, "download")  # A is the tracker: 8
        await release_leases(a)  # A stops being the tracker (a graceful stop of the holder, say)
        clock.advance(seconds=1)
        await event(b, "webinar_attended")  # B scores: 20, once per day
        await release_leases(b)
        clock.advance(seconds=1)
        await event(a, "webinar_attended")  # A again: capped today, so nothing
        assert await stored() == (28.0, 28.0)

        clock.advance(days=40)
        assert await run_job(b, "decay-scores", decay_scores, "decay-scores:test")  # B decays; A is the tracker
        decayed = await stored()
        assert decayed[0] == decayed[1] < 28.0
        clock.advance(days=1)
        await event(a, "call")  # A scores on top of B's decay
        score, total = await stored()
        assert score == total
        async with a.sessions() as session:
            rules = (await session.scalars(select(ScoreEntry.rule).where(ScoreEntry.contact_id == cid))).all()
        assert rules.count("webinar_attended") == 1
    finally:
        await a.stop()
        await b.stop()


async def test_a_process_without_the_lease_does_not_ask_for_it_on_every_wake_up(db_url: str) -> None:
    """B is not the tracker while A holds the lease: B's link opens wake its tracker, which must not open a
    write transaction each time. B asks again after a tenth of the lease, and takes it once it expires."""
    from sqlalchemy import event

    from bot.clock import FrozenClock
    from bot.leases import hold_lease
    from bot.runtime import Runtime

    clock = FrozenClock(T0)
    settings = make_settings(db_url)
    a, b = Runtime.build(settings, routers=[], clock=clock), Runtime.build(settings, routers=[], clock=clock)
    await a.start(background=False)
    await b.start(background=False)
    statements: list[str] = []
    event.listen(b.engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        assert await hold_lease(a, "tracker", 30)
        assert not await hold_lease(b, "tracker", 30)
        asked = len(statements)
        assert asked > 0
        for _ in range(50):
            assert not await hold_lease(b, "tracker", 30)
        assert len(statements) == asked  # not one statement more
        clock.advance(seconds=3)  # a tenth of the lease: asked again, still A's
        assert not await hold_lease(b, "tracker", 30)
        assert len(statements) > asked
        clock.advance(seconds=28)  # A never renewed: expired, B takes it over
        assert await hold_lease(b, "tracker", 30)
        assert not await hold_lease(a, "tracker", 30)
    finally:
        await a.stop()
        await b.stop()


# ---- [database] pool settings ---------------------------------------------------------------------


def test_pool_settings_reach_the_postgres_engine(tmp_path: Path) -> None:
    from bot.config import ConfigError, load_settings
    from bot.db import create_engine

    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"\npool_size = 3\nmax_overflow = 2\n',
                    encoding="utf-8")
    settings = load_settings(path, environ={"BEACON_DATABASE_POOL_TIMEOUT": "7.5"})
    assert (settings.database.pool_size, settings.database.max_overflow, settings.database.pool_timeout) == (3, 2, 7.5)
    engine = create_engine(settings.database)  # connects lazily: no database needed here
    try:
        pool = engine.sync_engine.pool
        assert (pool.size(), pool.timeout(), pool._max_overflow) == (3, 7.5, 2)
    finally:
        engine.sync_engine.dispose()
    sqlite = create_engine(load_settings(None, environ={"BEACON_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}).database)
    sqlite.sync_engine.dispose()
    for text, env, key in (("[database]\npool_size = 0\n", {}, "database.pool_size"),
                           ("[database]\nmax_overflow = -1\n", {}, "database.max_overflow"),
                           ("", {"BEACON_DATABASE_POOL_TIMEOUT": "0"}, "database.pool_timeout"),
                           ('[database]\npool_timeout = "soon"\n', {}, "database.pool_timeout")):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_settings(path, environ=env)


# ---- shared WeCom state created by several processes at once ---------------------------------------


async def test_processes_creating_the_tag_group_at_once_agree_on_the_ids(db_url: str, sim: Any) -> None:
    """Each process's outbox resolves tag names on its first tag change: both list, both try to create,
    WeCom refuses the second (40071), and both must end up with the same ids, stored once."""
    from sqlalchemy import select

    from bot.models import WeComTag
    from bot.runtime import Runtime
    from bot.tags import ALL_TAGS

    settings = make_settings(db_url, api_base=sim.url)
    a, b = Runtime.build(settings, routers=[]), Runtime.build(settings, routers=[])
    await a.start(background=False)
    await b.start(background=False)
    try:
        first, second = await asyncio.gather(a.services["tags"].tag_ids(), b.services["tags"].tag_ids())
        assert first == second and sorted(first) == sorted(ALL_TAGS)
        groups = [g for g in sim.state.tag_groups.values() if g.group_name == settings.lifecycle.tag_group]
        assert len(groups) == 1 and sorted(t.name for t in groups[0].tags) == sorted(ALL_TAGS)
        async with a.sessions() as session:
            stored = {t.name: t.tag_id for t in (await session.scalars(select(WeComTag))).all()}
        assert stored == first
    finally:
        await a.stop()
        await b.stop()


async def test_an_outbox_row_failing_on_our_side_is_retried_and_frees_the_batch(db_url: str, sim: Any, clock: Any) -> None:
    """A handler error that is not WeCom's answer (here a payload without its chart) counts as an attempt
    with backoff; the pass goes on with the next row instead of leaving the batch leased for a minute."""
    from sqlalchemy import select

    from bot.models import OutboxItem
    from bot.outbox import enqueue
    from bot.runtime import Runtime

    rt = Runtime.build(make_settings(db_url, api_base=sim.url), routers=[], clock=clock)
    await rt.start(background=False)
    try:
        async with rt.sessions() as session, session.begin():
            enqueue(session, "digest:image", {"touser": "rep1", "filename": "x.png"}, key="broken", now=clock.now())
            enqueue(session, "/cgi-bin/message/send", {"touser": "rep1", "msgtype": "text", "text": {"content": "hi"}},
                    key="fine", now=clock.now())
        assert await rt.outbox.drain() == 2
        async with rt.sessions() as session:
            rows = {r.idempotency_key: r for r in (await session.scalars(select(OutboxItem))).all()}
        broken, fine = rows["broken"], rows["fine"]
        assert fine.status == "sent"
        assert (broken.status, broken.attempts, broken.locked_until) == ("pending", 1, None)
        assert broken.last_error.startswith("KeyError") and broken.next_attempt_at > clock.now()
        assert await rt.outbox.drain() == 0  # not due again yet
    finally:
        await rt.stop()
