"""`python -m bot synth`: a synthetic company in the configured (migrated) database, for benchmarks.

`python -m bot synth --contacts N --events M [--reps R] [--seed S] [--jobs J] [--now ISO]`

What it writes, all with `processed = true` where it applies, so the tracker has nothing to redo:
- the team: R sales reps (default 2,000 per 1M contacts, at least 3) and one manager per 10 reps
  (`syn_rep00001`, `syn_mgr0001`; rows that exist from an earlier run are reused), or, with
  `Plan.team` (the demo's history: bot/demo.py), reps that exist already, by userid;
- channels (QR codes), one per 20 reps (at least 3);
- the content library: the items already imported are used; if there are none, `content/library`
  (the sample library) is imported first, exactly as `content import` does;
- N contacts (names, companies, titles, phones, regions, industries, sizes, owners, channels), their
  `external_userid` (and phone) identities and one browser (visitor) each that opened something;
- shares of the library's public items to those contacts by their reps;
- exactly M behavior events: `contact_added`, link sessions (open, read depths, dwell, downloads,
  CTA clicks, gate forms), chat messages, calls, webinars, payments of customers, a few
  unsubscribes. Per contact the number is heavily skewed (log-normal, 30 % never open anything),
  and activity fades after the contact is added (an exponential with a 3-week mean), spread over
  the last 180 days (customers, about 4 %, go back up to 1,000 days with their payments);
- the score ledger, computed by the product's own scorer (bot/scoring/engine.py) from exactly those
  events and profiles, with decay applied up to `now` as last night's job would have: so a replay
  (`ensure`, `rescore`) finds what is stored (decay as one row per quiet spell, bot/ledger.py),
  and the next nightly decay adds one tick to each quiet contact's spell. Scores, temperatures,
  stages (with their stage_history rows: score thresholds, payments, dormancy, and SQL set by the
  owner after some of an MQL's calls), `last_activity_at` and `last_payment_at` follow from the
  same pass;
- tasks: an MQL follow-up for every contact that reached MQL (old ones done), and a few to-dos
  per rep around `now`, so the digests have work.
- Dormancy: customers whose last payment is older than `[lifecycle] dormant_after_days` + 7 days
  are already dormant; those in the last week of that window are left for the nightly
  `mark-dormant` job, as after a week without it.

It is fast because nothing goes through the ORM: the contacts are generated and scored in chunks
(in `--jobs` worker processes), and each chunk is written in one transaction with sqlite3
`executemany` (SQLite) or asyncpg `copy_records_to_table` (PostgreSQL), with explicit ids (the
PostgreSQL sequences are moved past them at the end). Progress lines go to stderr. The same seed,
sizes and `--now` give the same company.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime as dt
import json
import math
import multiprocessing
import random
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from bot.config import Settings

UTC = dt.timezone.utc
ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "content" / "library"
CHUNK = 2000  # contacts per generated and written chunk (one transaction each)
SQL_AFTER_CALL = 0.35  # of an MQL's calls with its owner, the share after which the rep marks it SQL (有意向)
HISTORY_DAYS = 180  # leads are added and active within this many days before `now`
CUSTOMER_DAYS = 1000  # customers' relationships (and payments) go back this far
DORMANCY_BACKLOG_DAYS = 7  # customers past the dormancy line by less than this are left to the job
UNPROCESSED_S = 300  # events of the last 5 minutes are still waiting for the tracker
SYNTH_SOURCE = "wecom"  # reps look as if synced from WeCom

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "contacts": (
        "id", "external_userid", "name", "company", "title", "phone", "email", "region", "industry", "company_size",
        "persona", "profile", "owner_userid", "channel_id", "referrer_contact_id", "stage", "temperature", "score",
        "last_activity_at", "last_payment_at", "merged_into_id", "erased_at", "created_at", "updated_at", "reach",
    ),
    "identities": ("contact_id", "kind", "value", "created_at"),
    "visitors": ("id", "cookie_id", "contact_id", "user_agent", "first_seen_at"),
    "shares": (
        "id", "token", "item_id", "version_id", "rep_userid", "contact_id", "channel_id", "parent_share_id", "visitor_id",
        "source", "created_at",
    ),
    "events": (
        "id", "type", "contact_id", "visitor_id", "share_id", "item_id", "version_id", "rep_userid", "channel_id", "props",
        "occurred_at", "received_at", "idempotency_key", "processed",
    ),
    "score_ledger": ("contact_id", "model", "rule", "points", "event_id", "reason", "at", "quiet_since"),
    "stage_history": ("contact_id", "from_stage", "to_stage", "by", "reason", "at"),
    "tasks": (
        "kind", "title", "body", "owner_userid", "contact_id", "item_id", "priority", "status", "due_at",
        "snoozed_until", "source_event_id", "enrollment_id", "escalated_at", "created_at", "completed_at",
    ),
}  # fmt: skip
# Insert order within a chunk: rows before the rows that refer to them.
TABLES = tuple(TABLE_COLUMNS)
# Tables whose ids are chosen here (other rows refer to them); the others get theirs from the database.
OWN_IDS = ("contacts", "visitors", "shares", "events")

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余于杜叶程魏苏吕丁任沈姚卢"
GIVEN = ["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "秀英", "霞",
         "平", "刚", "桂英", "建华", "志强", "晓东", "海燕", "文杰", "子涵", "雨萱", "浩然", "思远", "嘉怡", "俊杰", "欣怡"]
CITIES = ["苏州", "宁波", "东莞", "佛山", "无锡", "青岛", "成都", "武汉", "合肥", "长沙", "常州", "厦门", "郑州", "西安", "天津", "重庆"]
CORES = ["华瑞", "恒通", "精工", "宏达", "博远", "鼎盛", "晨光", "天成", "锐进", "万向", "永泰", "新元", "同创", "联合", "金桥", "中科"]
TRADES = ["机械", "电子", "汽配", "化工", "食品", "精密制造", "智能装备", "新材料", "电气", "包装", "医疗器械", "五金"]
TITLES = ["采购经理", "生产总监", "IT经理", "工程师", "厂长", "总经理", "CIO", "信息化负责人", "质量经理", "财务总监",
          "设备主管", "运营VP", "项目经理", "技术员", "", ""]
SIZES = ["1-49", "50-99", "100-499", "500-999", "1000+"]
REGIONS = ["华东", "华南", "华北", "华中", "西南", "西北", "东北"]
INDUSTRIES = ["汽车零部件", "电子制造", "化工", "食品饮料", "机械装备", "医药"]
PERSONAS = ["IT负责人", "生产负责人", "财务负责人", "采购负责人", "企业高管"]
CHANNEL_SOURCES = ["官网", "展会", "线下沙龙", "公众号", "直播", "老客户推荐", "广告投放", "行业协会"]
USER_AGENTS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47",
    "Mozilla/5.0 (Linux; Android 14; V2307A) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/116.0 Mobile Safari/537.36 MicroMessenger/8.0.49",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 WindowsWechat",
]


def _chance(seed: int, event_id: int) -> float:
    """A fixed draw in [0, 1) per (seed, event), apart from the contacts' random streams (drawing from
    those would change everything generated after it)."""
    return zlib.crc32(f"{seed}:{event_id}".encode()) / 2**32


def default_reps(contacts: int) -> int:
    """2,000 reps per 1M contacts, at least 3."""
    return max(3, round(contacts * 2000 / 1_000_000))


@dataclass(frozen=True)
class Plan:
    contacts: int
    events: int
    reps: int
    seed: int
    now: dt.datetime  # the moment the synthetic company is "as of" (aware; kept in UTC)
    jobs: int = 1
    chunk: int = CHUNK
    # The reps the contacts go to, by userid, when they exist already (the demo's configured team);
    # empty: `reps` synthetic reps and their managers are written (`syn_rep00001`, ...).
    team: tuple[str, ...] = ()
    channel_prefix: str = "synth-"  # the synthetic channels' names: "synth-展会-0001"; "" names them by source alone

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("Plan.now must be aware")
        object.__setattr__(self, "now", self.now.astimezone(UTC))


@dataclass
class Report:
    rows: dict[str, int] = field(default_factory=lambda: {t: 0 for t in TABLES})
    reps: int = 0
    managers: int = 0
    channels: int = 0
    items: int = 0
    imported_library: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        r = self.rows
        return (
            f"synthesized {r['contacts']:,} contacts, {r['events']:,} events, {r['score_ledger']:,} ledger entries, "
            f"{r['shares']:,} shares, {r['stage_history']:,} stage changes, {r['tasks']:,} tasks; {self.reps:,} reps, "
            f"{self.managers:,} managers, {self.channels:,} channels, {self.items} library items"
            f"{' (sample library imported)' if self.imported_library else ''} in {self.seconds:.1f} s"
        )


class SynthError(RuntimeError):
    """The company could not be written (no schema, a database error)."""


# --- the world every chunk shares ------------------------------------------------------------------


@dataclass
class World:
    """What every chunk needs, sent once to each worker process."""

    scoring: Any  # ScoringSettings
    dialect: str  # "sqlite" | "postgresql"
    now: dt.datetime
    seed: int
    reps: list[str]
    rep_weights: list[float]
    channels: list[int]
    items: list[tuple[int, int, str, str, tuple[str, ...], str, bool, bool]]  # id, version, kind, stage, tags, title, gated, attachment
    industries: list[str]
    personas: list[str]
    dormant_after_days: int


@dataclass
class ChunkSpec:
    index: int
    first: int  # first contact's position (0-based) in the plan
    count: int  # contacts in the chunk
    events: int  # events the chunk must hold, exactly
    ids: dict[str, int]  # the first id of each table for this chunk (its rows take consecutive ids)
    id_room: dict[str, int]  # how many ids each table may use


@dataclass
class Chunk:
    index: int
    rows: dict[str, list[tuple[Any, ...]]]


_WORLD: World | None = None


def _init_worker(world: World) -> None:
    global _WORLD
    _WORLD = world


def _generate(spec: ChunkSpec) -> Chunk:
    assert _WORLD is not None
    return Generator(_WORLD).chunk(spec)


# How many ids a chunk may use in the tables whose ids it chooses, so chunks can be made in parallel
# with disjoint id ranges decided up front (gaps are harmless). Checked while generating.
def id_room(contacts: int, events: int) -> dict[str, int]:
    return {"contacts": contacts, "visitors": contacts, "shares": 4 * contacts, "events": events}


class Generator:
    """Makes one chunk of contacts with everything that belongs to them. Pure: same spec, same rows."""

    def __init__(self, world: World) -> None:
        from bot.scoring.engine import Scorer

        self.w = world
        self.scorer = Scorer(world.scoring)
        self.now = world.now
        self.rep_cum = _cumulative(world.rep_weights)
        self.ts: Callable[[dt.datetime | None], Any] = _sqlite_ts if world.dialect == "sqlite" else _pg_ts
        self.day: Callable[[int], Any] = _sqlite_day if world.dialect == "sqlite" else dt.date.fromordinal

    def chunk(self, spec: ChunkSpec) -> Chunk:
        from bot.scoring.engine import NOT_ENGAGEMENT, ScoredEvent, merge_spells
        from bot.scoring.rules import DECAY_RULE
        from bot.scoring.service import profile_of
        from bot.scoring.stages import reach_of, stage_for_score, temperature

        w, now, ts = self.w, self.now, self.ts
        rng = random.Random(f"beacon-synth:{w.seed}:{spec.ids['contacts']}")
        rows: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLES}
        next_id = dict(spec.ids)

        def take(table: str) -> int:
            value = next_id[table]
            next_id[table] = value + 1
            return value

        people = [self._person(rng, spec.ids["contacts"] + n) for n in range(spec.count)]
        self._allocate(rng, people, spec.events)
        processed_until = now - dt.timedelta(seconds=UNPROCESSED_S)
        dormant_cut = now - dt.timedelta(days=w.dormant_after_days)
        backlog_cut = dormant_cut - dt.timedelta(days=DORMANCY_BACKLOG_DAYS)
        per_person = [(p, self._events(rng, p)) for p in people]
        # Event ids follow time within the chunk, as the log's would.
        for e in sorted((e for _, events in per_person for e in events), key=lambda e: e[0]):
            e.append(take("events"))
        ledger, history, tasks, identities = rows["score_ledger"], rows["stage_history"], rows["tasks"], rows["identities"]
        midnights: dict[dt.datetime, Any] = {}
        for p, events in per_person:
            cid = p.id
            model = self.scorer.model_for(p.region or None)
            identities.append((cid, "external_userid", p.external, ts(p.created)))
            if p.phone:
                identities.append((cid, "phone", p.phone, ts(p.created)))
            visitor_id = None
            if p.shares_used:
                visitor_id = take("visitors")
                first_seen = min(e[0] for e in events if e[2] is not None)
                rows["visitors"].append((visitor_id, p.cookie, cid, p.ua, ts(first_seen)))
            for share in p.shares:
                share.id = take("shares")
                rows["shares"].append((share.id, share.token, share.item[0], share.item[1], share.rep, cid, None, None, None,
                                       share.source, ts(share.created)))
            # Score the contact event by event, as the tracker would have, with the product's scorer.
            contact = SimpleNamespace(
                name=p.name, company=p.company, title=p.title, phone=p.phone, email=p.email, region=p.region,
                industry=p.industry, company_size=p.size, persona=p.persona, profile={},
            )
            state = self.scorer.new_state(cid, p.region or None)
            entries = self.scorer.profile_entries(state, profile_of(contact), p.created)  # type: ignore[arg-type]
            stage, owner = "new", p.owner
            moves: list[tuple[str, str, str, str, dt.datetime]] = []
            mql_at = last_activity = last_payment = None
            updated = p.created
            for at, etype, share, props_json, props, item, lag, eid in events:
                processed = at <= processed_until
                received = at + dt.timedelta(milliseconds=lag)
                rep = share.rep if share is not None else (owner if etype in ("contact_added", "call") else None)
                rows["events"].append((
                    eid, etype, cid, visitor_id if share is not None else None, share.id if share is not None else None,
                    item[0] if item else None, item[1] if item else None, rep,
                    p.channel if etype == "contact_added" else None, props_json, ts(at), ts(received), None, processed,
                ))  # fmt: skip
                if not processed:
                    continue
                updated = received
                entries += self.scorer.apply(state, ScoredEvent(
                    id=eid, contact_id=cid, type=etype, at=at, item_id=item[0] if item else None,
                    item_kind=item[2] if item else None, item_stage=item[3] if item else None,
                    item_tags=item[4] if item else (), props=props, item_title=item[5] if item else None,
                ))  # fmt: skip
                score = state.cents / 100
                if etype == "payment":
                    last_payment = at if last_payment is None else max(last_payment, at)
                    if stage in ("new", "nurturing", "mql", "sql"):
                        moves.append((stage, "customer", "rule:payment", "收到付款", received))
                        stage = "customer"
                if etype not in NOT_ENGAGEMENT:
                    last_activity = at if last_activity is None else max(last_activity, at)
                if etype == "call" and stage == "mql" and owner is not None and _chance(w.seed, eid) < SQL_AFTER_CALL:
                    # The owner's call qualified the lead: SQL is a rep's decision (sql_at = 0 by default).
                    moves.append(("mql", "sql", owner, "电话沟通后确认有意向", received))
                    stage = "sql"
                target = stage_for_score(stage, score, model)
                if target is not None:
                    threshold = {"nurturing": model.nurturing_at, "mql": model.mql_at, "sql": model.sql_at}.get(target, 0)
                    moves.append((stage, target, "rule:score", f"评分 {score:g} ≥ {threshold:g}", received))
                    stage = target
                    if target == "mql":
                        mql_at = received
                        if owner is None:  # the hand-off assigns the sharing rep
                            owner = share.rep if share is not None else self._rep(rng)
            # Decay up to now: what last night's job (and lazy decay at each event) left in the ledger.
            entries += self.scorer.decay(state, now)
            if stage == "customer" and last_payment is not None and last_payment < backlog_cut:
                dormant_at = last_payment + dt.timedelta(days=w.dormant_after_days, hours=rng.uniform(18, 26))
                moves.append(("customer", "dormant", "rule:dormancy", f"超过 {w.dormant_after_days} 天未付款", dormant_at))
                stage = "dormant"
                updated = max(updated, dormant_at)
            for entry in merge_spells(entries):  # one row per quiet spell, as the ledger keeps them
                since = None
                if entry.event_id is None and entry.rule == DECAY_RULE:  # ticks fall on a few midnights
                    at = midnights.get(entry.at)
                    if at is None:
                        at = midnights[entry.at] = ts(entry.at)
                    if entry.quiet_since is not None:
                        since = self.day(entry.quiet_since)
                else:
                    at = ts(entry.at)
                ledger.append((cid, entry.model, entry.rule, entry.points, entry.event_id, entry.reason[:255], at, since))
            for from_stage, to_stage, by, reason, at in moves:
                history.append((cid, from_stage, to_stage, by, reason, ts(at)))
                updated = max(updated, at)
            score = round(state.score, 2)
            rows["contacts"].append((
                cid, p.external, p.name, p.company, p.title, p.phone, p.email, p.region, p.industry, p.size, p.persona,
                "{}", owner, p.channel, None, stage, temperature(score, model), score, ts(last_activity), ts(last_payment),
                None, None, ts(p.created), ts(updated), max(reach_of(s) for s in (stage, *(move[1] for move in moves))),
            ))  # fmt: skip
            tasks.extend(self._tasks(rng, p, owner, mql_at))
        for table, room in spec.id_room.items():
            if next_id[table] - spec.ids[table] > room:
                raise AssertionError(f"chunk {spec.index}: {table} used {next_id[table] - spec.ids[table]} ids, room for {room}")
        return Chunk(spec.index, rows)

    # -- people ---------------------------------------------------------------------------------

    def _rep(self, rng: random.Random) -> str:
        return self.w.reps[_pick(rng, self.rep_cum)]

    def _person(self, rng: random.Random, cid: int) -> SimpleNamespace:
        w, now = self.w, self.now
        customer = rng.random() < 0.04
        if customer:
            created = now - dt.timedelta(days=rng.uniform(120, CUSTOMER_DAYS))
        else:
            created = now - dt.timedelta(hours=6) - dt.timedelta(days=(HISTORY_DAYS - 0.25) * rng.random() ** 0.8)
        company_no = rng.randrange(max(1, 1 + cid // 4))  # several contacts per account
        crng = random.Random(company_no * 7919 + w.seed)
        company = f"{crng.choice(CITIES)}{crng.choice(CORES)}{crng.choice(TRADES)}有限公司"
        has_phone = rng.random() < 0.62
        return SimpleNamespace(
            id=cid,
            external=f"wmSyn{cid:09d}",
            name=rng.choice(SURNAMES) + rng.choice(GIVEN),
            company=company,
            title=rng.choice(TITLES),
            phone=f"13{(cid * 7919 + w.seed) % 1_000_000_000:09d}" if has_phone else None,
            email=f"u{cid}@example.com" if rng.random() < 0.3 else None,
            region=rng.choice(REGIONS),
            industry=crng.choice(w.industries),
            size=crng.choice(SIZES),
            persona=rng.choice(w.personas),
            owner=self._rep(rng) if rng.random() < 0.92 else None,
            channel=rng.choice(w.channels) if w.channels and rng.random() < 0.6 else None,
            created=created,
            customer=customer,
            cookie=_token(rng, 18),
            ua=rng.choice(USER_AGENTS),
            weight=0.0 if rng.random() < 0.3 else rng.lognormvariate(0.0, 1.3),
            fixed=[],  # (at, type, props) of events without a share
            budget=0,
            shares=[],
            shares_used=False,
        )

    def _allocate(self, rng: random.Random, people: list[SimpleNamespace], total: int) -> None:
        """Fixed events (contact added, payments, leaving) first, then the chunk's remaining events
        spread over the contacts by weight (largest remainder, so the total is exact)."""
        now = self.now
        for p in people:
            if p.owner is not None or p.channel is not None:
                if rng.random() < 0.85:
                    p.fixed.append((p.created + dt.timedelta(seconds=rng.uniform(1, 120)), "contact_added", {}))
            if p.customer:
                first = p.created + dt.timedelta(days=rng.uniform(5, 60))
                last = now - dt.timedelta(days=rng.uniform(1, max(2.0, (now - first).days)))
                pays = sorted({first, last, *(first + (last - first) * rng.random() for _ in range(rng.randrange(3)))})
                for at in pays:
                    if at <= now:
                        p.fixed.append((at, "payment", {"amount": rng.choice([30000, 50000, 120000, 260000])}))
            if rng.random() < 0.006:
                leave = p.created + (now - p.created) * rng.uniform(0.3, 1.0)
                p.fixed.append((leave, rng.choice(["unsubscribe", "contact_deleted"]), {}))
        fixed = sum(len(p.fixed) for p in people)
        # Too few events for the fixed ones: drop them from the end, cheapest meaning first.
        for kind in ("contact_added", "unsubscribe", "contact_deleted", "payment"):
            for p in reversed(people):
                if fixed <= total:
                    break
                keep = [f for f in p.fixed if f[1] != kind]
                fixed -= len(p.fixed) - len(keep)
                p.fixed = keep
        left = total - fixed
        weights = [p.weight for p in people]
        if left > 0 and not any(weights):
            weights = [1.0] * len(people)
        wsum = sum(weights) or 1.0
        shares = [left * x / wsum for x in weights]
        base = [int(s) for s in shares]
        rest = left - sum(base)
        order = sorted(range(len(people)), key=lambda i: shares[i] - base[i], reverse=True)
        for i in order[:rest]:
            base[i] += 1
        for p, n in zip(people, base):
            p.budget = n

    # -- events ---------------------------------------------------------------------------------

    def _events(self, rng: random.Random, p: SimpleNamespace) -> list[list[Any]]:
        """The contact's events in time order, each [at, type, share, props_json, props, item, lag ms]
        (the caller appends the event id). Sessions on a shared link: open, gate form, read depths,
        dwell, download, CTA; now and then a chat message, a call or a webinar instead."""
        now = self.now
        pays = [f[0] for f in p.fixed if f[1] == "payment"]
        # Nothing happens once a customer is dormant (it would have woken them up).
        active_until = min(now, max(pays) + dt.timedelta(days=self.w.dormant_after_days)) if pays else now
        span = max(600.0, (active_until - p.created).total_seconds() - 1200)
        out: list[list[Any]] = [[at, etype, None, _props_json(props), props, None, rng.randrange(5, 2000)]
                                for at, etype, props in p.fixed]
        n = p.budget
        items = self.w.items
        if n:
            for item in rng.sample(items, min(len(items), 1 + min(3, n // 8))):
                p.shares.append(SimpleNamespace(id=None, token=_token(rng, 18), item=item, rep=p.owner or self._rep(rng),
                                                source=rng.choice(("api", "sidebar", "sidebar", "chat")), created=None))
        while n > 0:
            offset = rng.expovariate(1 / (21 * 86400))  # interest fades after the contact is added
            if offset > span:
                offset = rng.uniform(0, span)
            start = p.created + dt.timedelta(seconds=offset + rng.uniform(30, 600))
            roll = rng.random()
            if roll < 0.08:
                session = [("message", None, {}) for _ in range(rng.randint(1, 3))]
            elif roll < 0.1:
                session = [("call" if rng.random() < 0.7 else "webinar_attended", None, {})]
            else:
                share = rng.choice(p.shares)
                item = share.item
                session = [("open", share, {})]
                if item[6] and rng.random() < 0.6:
                    session.append(("form_submit", share, {}))
                if rng.random() < 0.8:
                    for depth in (25, 50, 75, 100):
                        session.append(("read", share, {"depth": depth}))
                        if rng.random() > 0.72:
                            break
                    if rng.random() < 0.5:
                        session.append(("dwell", share, {"seconds": max(1, int(rng.lognormvariate(4.0, 0.9)))}))
                if item[7] and rng.random() < 0.15:
                    session.append(("download", share, {}))
                if rng.random() < 0.05:
                    session.append(("cta", share, {"cta": "demo" if rng.random() < 0.4 else "contact"}))
            session = session[:n]
            times = [start]
            for _ in session[1:]:
                times.append(times[-1] + dt.timedelta(seconds=rng.uniform(2, 90)))
            late = times[-1] - (active_until - dt.timedelta(seconds=rng.uniform(1, 120)))
            if late > dt.timedelta(0):  # the session must be over by now: move it back
                times = [t - late for t in times]
            for at, (etype, share, props) in zip(times, session):
                out.append([at, etype, share, _props_json(props), props, share.item if share else None, rng.randrange(5, 900)])
                if share is not None and (share.created is None or at < share.created):
                    share.created = at
            n -= len(session)
        for share in p.shares:
            if share.created is None:  # sent, never opened
                share.created = p.created + (active_until - p.created) * rng.random()
            else:  # sent a while before it was first opened
                share.created = max(p.created, share.created - dt.timedelta(seconds=rng.uniform(60, 7200)))
        p.shares_used = any(e[2] is not None for e in out)
        out.sort(key=lambda e: e[0])
        return out

    def _tasks(self, rng: random.Random, p: SimpleNamespace, owner: str | None, mql_at: dt.datetime | None) -> Iterator[tuple[Any, ...]]:
        ts, now = self.ts, self.now
        if owner is None:
            return
        if mql_at is not None:
            due = mql_at + dt.timedelta(hours=4)
            recent = now - mql_at < dt.timedelta(days=3)
            done = not recent or rng.random() < 0.5
            completed = mql_at + dt.timedelta(hours=rng.uniform(0.5, 30)) if done else None
            if completed is not None and completed > now:
                completed, done = None, False
            yield ("follow_up", f"跟进 MQL：{p.name}", "", owner, p.id, None, 1, "done" if done else "open", ts(due), None, None,
                   None, None, ts(mql_at), ts(completed))
        if rng.random() < 0.03:
            due = now + dt.timedelta(hours=rng.uniform(-120, 72))
            created = min(now, due - dt.timedelta(days=rng.uniform(0, 7)))
            open_ = due > now - dt.timedelta(days=2) or rng.random() < 0.3
            completed = None if open_ else max(created, min(now, due + dt.timedelta(hours=rng.uniform(-24, 24))))
            yield ("manual", f"回访 {p.name}（{p.company}）", "", owner, p.id, None, rng.choice((2, 2, 3)),
                   "open" if open_ else "done", ts(due), None, None, None, None, ts(created), ts(completed))


def _cumulative(weights: list[float]) -> list[float]:
    out, total = [], 0.0
    for x in weights:
        total += x
        out.append(total)
    return out


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    from bisect import bisect_right

    return min(bisect_right(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


def _token(rng: random.Random, nbytes: int) -> str:
    return base64.urlsafe_b64encode(rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big")).decode().rstrip("=")


def _props_json(props: dict[str, Any]) -> str:
    if not props:
        return "{}"
    return json.dumps(props)


def _sqlite_ts(value: dt.datetime | None) -> str | None:
    # SQLAlchemy's SQLite DateTime format, exactly (string comparisons depend on it); every datetime
    # here is aware UTC, so the first 26 characters are the naive UTC time with microseconds.
    return None if value is None else value.isoformat(" ", "microseconds")[:26]


def _pg_ts(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=None)


def _sqlite_day(ordinal: int) -> str:
    return dt.date.fromordinal(ordinal).isoformat()  # SQLAlchemy's SQLite Date format


# --- writing ---------------------------------------------------------------------------------------


class Sink:
    """Where the rows go: the same few operations on SQLite (sqlite3) and PostgreSQL (asyncpg)."""

    dialect: str

    async def scalar(self, sql: str) -> Any: ...
    async def fetch(self, sql: str) -> list[tuple[Any, ...]]: ...
    async def insert_ignore(self, table: str, columns: tuple[str, ...], key: str, rows: list[tuple[Any, ...]]) -> None: ...
    async def write_chunk(self, rows: dict[str, list[tuple[Any, ...]]]) -> None: ...
    async def finish(self) -> None: ...
    async def close(self) -> None: ...


class SqliteSink(Sink):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        import sqlite3

        if not Path(path).exists():
            raise SynthError(f"{path} does not exist (run `python -m bot migrate` first)")
        self.con = sqlite3.connect(path, isolation_level=None, timeout=60)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.execute("PRAGMA cache_size=-131072")  # 128 MiB: index pages stay hot while loading
        self.con.execute("PRAGMA temp_store=MEMORY")

    async def scalar(self, sql: str) -> Any:
        return self.con.execute(sql).fetchone()[0]

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    async def insert_ignore(self, table: str, columns: tuple[str, ...], key: str, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join("?" * len(columns))
        self.con.execute("BEGIN IMMEDIATE")
        self.con.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
        self.con.execute("COMMIT")

    async def write_chunk(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        self.con.execute("BEGIN IMMEDIATE")
        try:
            for table in TABLES:
                if rows[table]:
                    cols = TABLE_COLUMNS[table]
                    self.con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows[table])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    async def finish(self) -> None:
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def close(self) -> None:
        self.con.close()


class PostgresSink(Sink):
    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str) -> "PostgresSink":
        import asyncpg
        from sqlalchemy.engine import make_url

        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(await asyncpg.connect(dsn))

    async def scalar(self, sql: str) -> Any:
        return await self.conn.fetchval(sql)

    async def fetch(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(sql)]

    async def insert_ignore(self, table: str, columns: tuple[str, ...], key: str, rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        await self.conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING", rows
        )

    async def write_chunk(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        async with self.conn.transaction():
            for table in TABLES:
                if rows[table]:
                    await self.conn.copy_records_to_table(table, records=rows[table], columns=list(TABLE_COLUMNS[table]))

    async def finish(self) -> None:
        for table in (*TABLES, "channels"):
            await self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), GREATEST((SELECT MAX(id) FROM {table}), 1))"
            )
        await self.conn.execute("ANALYZE")

    async def close(self) -> None:
        await self.conn.close()


async def open_sink(settings: Settings) -> Sink:
    from sqlalchemy.engine import make_url

    url = make_url(settings.database.url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise SynthError("synth needs a database file, not an in-memory database")
        return SqliteSink(url.database)
    if url.get_backend_name() == "postgresql":
        return await PostgresSink.connect(settings.database.url)
    raise SynthError(f"unsupported database {url.get_backend_name()!r}")


# --- the run ---------------------------------------------------------------------------------------

Progress = Callable[[Report, int, int], None]


async def _import_library_if_empty(settings: Settings, sink: Sink, report: Report) -> None:
    if await sink.scalar("SELECT COUNT(*) FROM content_items WHERE current_version_id IS NOT NULL") > 0:
        return
    from bot.clock import SystemClock
    from bot.db import create_engine, session_factory
    from content.importer import import_library

    engine = create_engine(settings.database)
    try:
        async with session_factory(engine)() as session, session.begin():
            result = await import_library(session, LIBRARY, now=SystemClock().now())
    finally:
        await engine.dispose()
    if not result.ok:
        raise SynthError(f"importing {LIBRARY} failed: {'; '.join(str(e) for e in result.errors)}")
    report.imported_library = True


async def _team(sink: Sink, plan: Plan) -> tuple[list[str], list[float], int]:
    rng = random.Random(f"beacon-synth-team:{plan.seed}")
    if plan.team:
        return list(plan.team), _rep_weights(rng, len(plan.team)), 0
    managers = max(1, math.ceil(plan.reps / 10))
    created = _pg_ts(plan.now - dt.timedelta(days=CUSTOMER_DAYS + 30))
    when = _sqlite_ts(created) if sink.dialect == "sqlite" else created
    cols = ("userid", "name", "role", "manager_userid", "region", "source", "active", "created_at")
    rows: list[tuple[Any, ...]] = []
    for m in range(1, managers + 1):
        rows.append((f"syn_mgr{m:04d}", rng.choice(SURNAMES) + rng.choice(GIVEN) + "经理", "manager", None,
                     REGIONS[m % len(REGIONS)], SYNTH_SOURCE, True, when))
    reps = []
    for r in range(1, plan.reps + 1):
        userid = f"syn_rep{r:05d}"
        manager = f"syn_mgr{(r - 1) // 10 + 1:04d}"
        rows.append((userid, rng.choice(SURNAMES) + rng.choice(GIVEN), "rep", manager, REGIONS[r % len(REGIONS)], SYNTH_SOURCE, True, when))
        reps.append(userid)
    await sink.insert_ignore("reps", cols, "userid", rows)
    return reps, _rep_weights(rng, len(reps)), managers


def _rep_weights(rng: random.Random, reps: int) -> list[float]:
    """Some reps carry much more than others: a mild Zipf over a shuffled order."""
    order = list(range(reps))
    rng.shuffle(order)
    weights = [0.0] * reps
    for rank, i in enumerate(order, 1):
        weights[i] = 1 / rank**0.6
    return weights


async def _channels(sink: Sink, plan: Plan, reps: list[str]) -> list[int]:
    rng = random.Random(f"beacon-synth-channels:{plan.seed}")
    count = 4 if plan.team else max(3, plan.reps // 20)
    base = await sink.scalar("SELECT COALESCE(MAX(id), 0) FROM channels")
    created = _pg_ts(plan.now - dt.timedelta(days=CUSTOMER_DAYS + 30))
    when = _sqlite_ts(created) if sink.dialect == "sqlite" else created
    rows = []
    for n in range(1, count + 1):
        source = CHANNEL_SOURCES[n % len(CHANNEL_SOURCES)]
        name = f"{plan.channel_prefix}{source}-{n:04d}" if plan.channel_prefix else source
        members = json.dumps(rng.sample(reps, min(3, len(reps))))
        rows.append((base + n, name, f"syn{plan.seed % 100000}ch{n:05d}", "qr", None, None, members, None, "", when))
    cols = ("id", "name", "state", "kind", "config_id", "qr_code", "reps", "welcome_item_id", "welcome_text", "created_at")
    await sink.insert_ignore("channels", cols, "name", rows)
    names = ", ".join(f"'{r[1]}'" for r in rows)
    return [r[0] for r in await sink.fetch(f"SELECT id FROM channels WHERE name IN ({names}) ORDER BY id")]


async def _items(sink: Sink) -> list[tuple[int, int, str, str, tuple[str, ...], str, bool, bool]]:
    rows = await sink.fetch(
        "SELECT i.id, i.current_version_id, i.kind, i.stage, i.tags, i.title, i.gated, v.attachment_name "
        "FROM content_items i JOIN content_versions v ON v.id = i.current_version_id "
        "WHERE i.internal = " + ("0" if sink.dialect == "sqlite" else "false") + " AND i.retired_at IS NULL ORDER BY i.id"
    )
    out = []
    for item_id, version, kind, stage, tags, title, gated, attachment in rows:
        tag_list = json.loads(tags) if isinstance(tags, str) else (tags or [])
        out.append((item_id, version, kind, stage, tuple(tag_list), title, bool(gated), attachment is not None))
    return out


async def _vocabulary(sink: Sink) -> tuple[list[str], list[str]]:
    industries: set[str] = set()
    personas: set[str] = set()
    for ind, per in await sink.fetch("SELECT industries, personas FROM content_items"):
        industries.update(json.loads(ind) if isinstance(ind, str) else (ind or []))
        personas.update(json.loads(per) if isinstance(per, str) else (per or []))
    return sorted(industries) or INDUSTRIES, sorted(personas) or PERSONAS


async def synthesize(settings: Settings, plan: Plan, progress: Progress | None = None) -> Report:
    """Write the synthetic company described in the module docstring; returns what was written."""
    started = time.monotonic()
    report = Report()
    sink = await open_sink(settings)
    try:
        try:
            await sink.scalar("SELECT COUNT(*) FROM contacts")
        except Exception as exc:
            raise SynthError(f"the database has no Beacon schema ({str(exc).splitlines()[0]}); run `python -m bot migrate`") from exc
        await _import_library_if_empty(settings, sink, report)
        items = await _items(sink)
        if not items:
            raise SynthError("the content library has no public items to share")
        reps, weights, managers = await _team(sink, plan)
        channels = await _channels(sink, plan, reps)
        industries, personas = await _vocabulary(sink)
        report.reps, report.managers, report.channels, report.items = len(reps), managers, len(channels), len(items)
        world = World(
            scoring=settings.scoring, dialect=sink.dialect, now=plan.now, seed=plan.seed, reps=reps, rep_weights=weights,
            channels=channels, items=items, industries=industries, personas=personas,
            dormant_after_days=settings.lifecycle.dormant_after_days,
        )
        bases = {t: await sink.scalar(f"SELECT COALESCE(MAX(id), 0) FROM {t}") + 1 for t in OWN_IDS}
        specs = list(_specs(plan, bases))
        if progress:
            progress(report, 0, plan.contacts)
        async for chunk in _chunks(world, specs, plan.jobs):
            await sink.write_chunk(chunk.rows)
            for table, rows in chunk.rows.items():
                report.rows[table] += len(rows)
            if progress:
                progress(report, report.rows["contacts"], plan.contacts)
        await sink.finish()
    finally:
        await sink.close()
    report.seconds = time.monotonic() - started
    return report


def _specs(plan: Plan, bases: dict[str, int]) -> Iterator[ChunkSpec]:
    next_id = dict(bases)
    for index, first in enumerate(range(0, plan.contacts, plan.chunk)):
        count = min(plan.chunk, plan.contacts - first)
        events = plan.events * (first + count) // plan.contacts - plan.events * first // plan.contacts
        room = id_room(count, events)
        yield ChunkSpec(index, first, count, events, dict(next_id), room)
        for table in OWN_IDS:
            next_id[table] += room[table]


async def _chunks(world: World, specs: list[ChunkSpec], jobs: int) -> Any:
    """The chunks in order; made in `jobs` worker processes (a bounded window ahead of the writer)."""
    if jobs <= 1:
        generator = Generator(world)
        for spec in specs:
            yield generator.chunk(spec)
            await asyncio.sleep(0)
        return
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(world,)) as pool:
        pending: list[asyncio.Future[Chunk]] = []
        queue = iter(specs)
        for spec in queue:
            pending.append(asyncio.wrap_future(pool.submit(_generate, spec), loop=loop))
            if len(pending) >= 2 * jobs:
                break
        while pending:
            chunk = await pending.pop(0)
            spec = next(queue, None)
            if spec is not None:
                pending.append(asyncio.wrap_future(pool.submit(_generate, spec), loop=loop))
            yield chunk


def stderr_progress(every_s: float = 1.0) -> Progress:
    """A progress callback printing one line to stderr at most every `every_s` seconds (and at the end)."""
    started = time.monotonic()
    last = [-every_s]

    def show(report: Report, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and done > 0 and now - last[0] < every_s:
            return
        last[0] = now
        r = report.rows
        pct = done / total * 100 if total else 100.0
        sys.stderr.write(
            f"synth: {done:,}/{total:,} contacts ({pct:.0f} %), {r['events']:,} events, {r['score_ledger']:,} ledger entries, "
            f"{now - started:.0f} s\n"
        )
        sys.stderr.flush()

    return show


def run(settings: Settings, plan: Plan) -> int:
    """The CLI's entry: 0 done, 1 failed (message on stderr)."""
    try:
        report = asyncio.run(synthesize(settings, plan, stderr_progress()))
    except SynthError as exc:
        sys.stderr.write(f"synth: {exc}\n")
        return 1
    except Exception as exc:  # a database error: say what, not a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.stderr.write(f"synth: database error: {type(exc).__name__}: {first}\n")
        return 1
    print(report.summary())
    return 0
