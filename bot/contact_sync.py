"""`python -m bot contact sync`: the team's existing WeCom customers into Beacon, owned and named.

A company that installs Beacon has customers already: each rep's WeCom holds them, and no
contact-added callback will ever come for them. This command pages through the reps' customers with
their profiles (`externalcontact/batch/get_by_user`: up to 100 reps a call, 100 relations a page, so
a million customers cost some ten thousand calls, not a call each). Each page is written as it
comes, CHUNK customers a transaction, set-based; only each customer's longest-standing rep is kept
across pages (a small tuple each), never all the customers:
- customers Beacon does not know become contacts named as their rep calls them (the owner's remark,
  else the WeChat name; see `WeComProfile.display_name`), with company and title, owned by the rep
  who has had them longest (the team's order breaks a tie; a rep seen on a later page who has had
  the customer longer takes over at the end: `move_owners`);
- known contacts get their empty fields filled (never what a rep or a form set), and an owner if
  they had none;
- each unionid, and each mobile number a rep noted for the customer (remark_mobiles), becomes the
  contact's identity. One already known for another contact (a web visitor who left it on a gate
  form, say) leaves the contact due for its profile: the profile worker (bot/profiles.py,
  `apply_profile`) merges the two, unless the other is a WeCom customer too (a number only).
Then the command works through what is due, with progress, unless the serving process holds the
profiles lease (it names them) or `--no-profiles` is given. The weekly `sync-customers` job runs the
same import without progress bars. Running it again changes only what is new. Exit status: 0 done;
1 WeCom refused every rep, or the database failed; 2 an unknown rep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Sequence, TypeVar

import click
from sqlalchemy import bindparam, case, func, insert, select, update

from bot.config import Settings
from bot.contact_changes import WeComProfile, profile_from
from bot.models import Contact, Identity
from bot.profiles import due_count
from bot.wecom.client import WeComError

if TYPE_CHECKING:
    from bot.context import Context
    from bot.runtime import Runtime

log = logging.getLogger("beacon.contacts.sync")

BATCH_GET = "/cgi-bin/externalcontact/batch/get_by_user"
REPS_PER_CALL = 100  # WeCom's most userids a call
PAGE = 100  # and relations a page
CHUNK = 500  # customers a transaction
T = TypeVar("T")


@dataclass
class Customer:
    contact: dict[str, Any]  # the batch's external_contact
    follows: list[dict[str, Any]] = field(default_factory=list)  # its follow_info for each rep on the page
    owner: str = ""  # the rep who has had the customer longest, among all the pages so far
    _profile: WeComProfile | None = None

    @property
    def profile(self) -> WeComProfile:
        if self._profile is None:
            self._profile = profile_from({"external_contact": self.contact}, self.follows)
        return self._profile

    def identities(self) -> list[tuple[str, str]]:
        """The identities the customer's profile gives: its unionid and the mobiles its reps noted."""
        unionid = [("unionid", self.profile.unionid)] if self.profile.unionid else []
        return unionid + [("phone", mobile) for mobile in self.profile.mobiles]


@dataclass
class SyncReport:
    reps: int = 0
    listed: int = 0  # distinct customers across the reps
    new: int = 0
    owned: int = 0  # known contacts without an owner that got one
    named: int = 0  # contacts of the listed customers that had no name before and have one now
    still_due: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # rep: WeCom's error


class _Owners:
    """Across the pages of one run: each customer's longest-standing rep so far (since, team order,
    userid), a small tuple per customer, and the owners given to the contacts this run created, so
    that a later page naming an earlier follower can move them."""

    def __init__(self, reps: list[str]) -> None:
        self.order = {userid: n for n, userid in enumerate(reps)}
        self.best: dict[str, tuple[int, int, str]] = {}
        self.given: dict[str, str] = {}  # external_userid: the owner this run gave its contact (new, or unowned before)

    def see(self, external_userid: str, follow: dict[str, Any]) -> None:
        userid = str(follow["userid"])
        seen = (int(follow.get("createtime") or 0), self.order[userid], userid)
        if external_userid not in self.best or seen < self.best[external_userid]:
            self.best[external_userid] = seen

    def owner(self, external_userid: str) -> str:
        return self.best[external_userid][2]

    def moved(self) -> dict[str, tuple[str, str]]:
        """The contacts this run gave an owner whose longest-standing rep turned up on a later page:
        {external_userid: (given, now)}."""
        return {x: (given, self.owner(x)) for x, given in self.given.items() if self.owner(x) != given}


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def pages(rt: "Runtime", reps: list[str], owners: _Owners, report: SyncReport, *,
                progress: bool = True) -> AsyncIterator[dict[str, Customer]]:
    """The reps' customers a page at a time, with their profiles and the page's follow_info (a progress
    bar on stderr unless `progress` is false). Only a page is held at once: a million customers are
    never all in memory, only each one's longest-standing rep (`owners`)."""
    with click.progressbar(length=len(reps), label="customers of the reps", file=sys.stderr, hidden=not progress,
                           item_show_func=lambda n: f"{n:,} customers" if n is not None else None) as bar:
        for group in chunks(reps, REPS_PER_CALL):
            cursor = ""
            while True:
                try:
                    answer = await rt.wecom.post(BATCH_GET, {"userid_list": list(group), "cursor": cursor, "limit": PAGE})
                except WeComError as exc:
                    report.refused.update((userid, str(exc)) for userid in group)
                    break
                page: dict[str, Customer] = {}
                for item in answer.get("external_contact_list") or []:
                    contact, follow = item.get("external_contact") or {}, item.get("follow_info") or {}
                    external_userid, userid = contact.get("external_userid"), follow.get("userid")
                    if not external_userid or userid not in owners.order:
                        continue
                    owners.see(external_userid, follow)
                    page.setdefault(external_userid, Customer(contact)).follows.append(follow)
                for external_userid, customer in page.items():
                    customer.owner = owners.owner(external_userid)
                yield page
                bar.update(0, len(owners.best))
                cursor = str(answer.get("next_cursor") or "")
                if not cursor:
                    break
            bar.update(len(group), len(owners.best))


_C = Contact.__table__.c
_FILL = (
    update(Contact.__table__)
    .where(_C.id == bindparam("b_id"))
    .values(
        name=case((_C.name == "", bindparam("b_name")), else_=_C.name),
        company=case((_C.company == "", bindparam("b_company")), else_=_C.company),
        title=case((_C.title == "", bindparam("b_title")), else_=_C.title),
        phone=func.coalesce(_C.phone, bindparam("b_phone")),
        owner_userid=func.coalesce(_C.owner_userid, bindparam("b_owner")),
        profile_due_at=bindparam("b_due", type_=_C.profile_due_at.type),
        updated_at=bindparam("b_now", type_=_C.updated_at.type),
    )
)


async def store_customers(rt: "Runtime", customers: dict[str, Customer], now: dt.datetime, report: SyncReport,
                          owners: _Owners) -> None:
    """The customers into contacts and identities, CHUNK a transaction (see the module docstring)."""
    c = Contact.__table__.c
    for chunk in chunks(list(customers), CHUNK):
        async with rt.sessions() as session, session.begin():
            rows_now = (await session.execute(
                select(c.id, c.external_userid, c.name, c.owner_userid, c.profile_due_at, c.merged_into_id, c.erased_at)
                .where(c.external_userid.in_(chunk))
            )).all()  # fmt: skip
            live = {x: (cid, name, owner, due) for cid, x, name, owner, due, merged, erased in rows_now
                    if merged is None and erased is None}
            known = {row.external_userid for row in rows_now}
            known |= set((await session.scalars(select(Identity.value).where(
                Identity.kind == "external_userid", Identity.value.in_(chunk)))).all())  # fmt: skip
            wanted = {x: customers[x].identities() for x in chunk}
            taken: dict[tuple[str, str], int] = {}
            for kind in ("unionid", "phone"):
                values = list({value for pairs in wanted.values() for k, value in pairs if k == kind})
                taken.update(((kind, value), cid) for value, cid in (await session.execute(
                    select(Identity.value, Identity.contact_id).where(Identity.kind == kind, Identity.value.in_(values))
                )).all())  # fmt: skip
            fresh = [x for x in chunk if x not in known]
            if fresh:
                rows = [_new_contact(x, customers[x], wanted[x], taken, now) for x in fresh]
                await session.execute(insert(Contact), rows)
                made = dict((await session.execute(select(c.external_userid, c.id).where(c.external_userid.in_(fresh)))).all())
                live.update({x: (made[x], row["name"], customers[x].owner, None) for x, row in zip(fresh, rows)})
                await session.execute(insert(Identity), [
                    {"contact_id": made[x], "kind": "external_userid", "value": x, "created_at": now} for x in fresh])
                report.new += len(fresh)
                report.named += sum(1 for row in rows if row["name"])
                owners.given.update((x, customers[x].owner) for x in fresh)
            fill = []
            for x in chunk:
                if x not in live or x in fresh:
                    continue
                cid, name, owner, due = live[x]
                profile = customers[x].profile
                display = profile.display_name(owner or customers[x].owner)[:128]
                merge_pending = any(taken.get(pair, cid) != cid for pair in wanted[x])
                fill.append({"b_id": cid, "b_name": display, "b_company": profile.company[:128], "b_title": profile.title[:128],
                             "b_owner": customers[x].owner, "b_now": now, "b_phone": profile.mobiles[0] if profile.mobiles else None,
                             "b_due": (due or now) if merge_pending else None})
                if owner is None:
                    report.owned += 1
                    owners.given.setdefault(x, customers[x].owner)
                report.named += not name and bool(display)
            if fill:
                await session.execute(_FILL, fill)
            # Identities nobody has yet, once each (two customers whose reps noted one number: the first).
            claimed: dict[tuple[str, str], int] = {}
            for x in chunk:
                for pair in wanted[x]:
                    if x in live and pair not in taken:
                        claimed.setdefault(pair, live[x][0])
            if claimed:
                await session.execute(insert(Identity), [
                    {"contact_id": cid, "kind": kind, "value": value, "created_at": now} for (kind, value), cid in claimed.items()])


async def move_owners(rt: "Runtime", owners: _Owners, now: dt.datetime) -> None:
    """Contacts this run gave an owner when a later page showed a rep who has had the customer longer:
    that rep owns them (unless someone changed the owner meanwhile)."""
    c = Contact.__table__.c
    moved = owners.moved()
    by_pair: dict[tuple[str, str], list[str]] = {}
    for x, pair in moved.items():
        by_pair.setdefault(pair, []).append(x)
    for (given, owner), ids in by_pair.items():
        for chunk in chunks(ids, CHUNK):
            async with rt.sessions() as session, session.begin():
                await session.execute(update(Contact).where(c.external_userid.in_(chunk), c.owner_userid == given)
                                      .values(owner_userid=owner, updated_at=now))


def _new_contact(external_userid: str, customer: Customer, wanted: list[tuple[str, str]], taken: dict[tuple[str, str], int],
                 now: dt.datetime) -> dict[str, Any]:
    profile = customer.profile
    merge_pending = any(pair in taken for pair in wanted)  # another contact has one: the profile worker merges (or not)
    name = profile.display_name(customer.owner)[:128]
    return {"external_userid": external_userid, "name": name, "profile": {"name_from": "wecom"} if name else {},
            "company": profile.company[:128],
            "title": profile.title[:128], "phone": profile.mobiles[0] if profile.mobiles else None,
            "owner_userid": customer.owner, "created_at": now, "updated_at": now,
            "profile_due_at": now if merge_pending else None}


async def _due(rt: "Runtime") -> int:
    async with rt.read_sessions() as session:
        return await due_count(session, cap=None)


async def sync(rt: "Runtime", reps: list[str], *, profiles: bool = True, progress: bool = True) -> SyncReport:
    """Import `reps`' customers (see the module docstring); the profile phase unless `profiles` is false."""
    report = SyncReport(reps=len(reps))
    owners = _Owners(reps)
    now = rt.clock.now()
    async for page in pages(rt, reps, owners, report, progress=progress):
        await store_customers(rt, page, now, report, owners)
    await move_owners(rt, owners, now)
    report.listed = len(owners.best)
    due = await _due(rt) if profiles else 0
    if due:
        with click.progressbar(length=due, label="customer profiles", file=sys.stderr, hidden=not progress) as bar:
            while handled := await rt.profiles.drain():
                bar.update(handled)
    report.still_due = await _due(rt)
    return report


def team_reps(settings: Settings) -> list[str]:
    """The members whose customers Beacon keeps: every rep and manager in [team]."""
    return [m.userid for m in settings.team.members if m.role in ("rep", "manager")]


async def sync_customers(ctx: "Context") -> None:
    """The weekly `sync-customers` job: the same import, without progress bars, its profiles left to
    the profile worker. Customers added while callbacks did not reach Beacon (a wrong callback URL, an
    app without the customer-contact permission for a while) get their contacts this way. A run in
    which WeCom refused every rep fails (its `job_runs` row says why)."""
    reps = team_reps(ctx.settings)
    if not reps:
        return
    report = await sync(ctx.runtime, reps, profiles=False, progress=False)
    log.info("sync-customers: %d reps, %d customers in WeCom: %d new contacts, %d given an owner, %d reps refused",
             report.reps, report.listed, report.new, report.owned, len(report.refused))
    if len(report.refused) == len(reps):
        raise RuntimeError(f"WeCom refused every rep's customers: {next(iter(report.refused.values()))}")


def run_sync(settings: Settings, reps: tuple[str, ...], profiles: bool) -> int:
    """The CLI edge: prints the report; returns the exit status."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.runtime import Runtime

    members = {m.userid for m in settings.team.members}
    unknown = [r for r in reps if r not in members]
    if unknown:
        click.echo(f"error: not in [team] members: {', '.join(unknown)}", err=True)
        return 2
    chosen = list(reps) or team_reps(settings)
    if not chosen:
        click.echo("error: no reps to sync: [team] members lists none", err=True)
        return 2

    async def work() -> SyncReport:
        rt = Runtime.build(settings, routers=[])
        await rt.start(background=False)
        try:
            return await sync(rt, chosen, profiles=profiles)
        finally:
            await rt.stop()

    try:
        report = asyncio.run(work())
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        click.echo(f"database error: {first} (has `python -m bot migrate` been run?)", err=True)
        return 1
    for userid, error in report.refused.items():
        click.echo(f"WeCom refused the customers of {userid}: {error}", err=True)
    click.echo(f"{report.reps} reps, {report.listed} customers in WeCom: {report.new} new contacts, "
               f"{report.owned} known contacts given an owner, {report.named} named from WeCom")
    if report.still_due:
        click.echo(f"{report.still_due} contacts still to be named: the serving process names them "
                   "(it fetches profiles itself, or WeCom did not answer: see the log)")
    return 1 if report.refused and len(report.refused) == report.reps else 0
