"""`python -m bot contact sync`: the team's existing WeCom customers into Beacon, owned and named.

A company that installs Beacon has customers already: each rep's WeCom holds them, and no
contact-added callback will ever come for them. This command pages through the reps' customers with
their profiles (`externalcontact/batch/get_by_user`: up to 100 reps a call, 100 relations a page, so
a million customers cost some ten thousand calls, not a call each) and, CHUNK customers a
transaction, set-based:
- stores the customers Beacon does not know as contacts named as their rep calls them (the owner's
  remark, else the WeChat name; see `WeComProfile.display_name`), with company and title, owned by
  the rep who has had them longest (the team's order breaks a tie);
- fills the empty fields of known contacts (never what a rep or a form set) and gives an owner to
  those without one;
- records each unionid, and each mobile number a rep noted for the customer (remark_mobiles), as the
  contact's identity. One already known for another contact (a web visitor who left it on a gate
  form, say) leaves the contact due for its profile: the profile worker (bot/profiles.py,
  `apply_profile`) merges the two, unless the other is a WeCom customer too (a number only). Then the command works through what is due, with progress,
  unless the serving process holds the profiles lease (it names them) or `--no-profiles` is given.
Running it again changes only what is new. Exit status: 0 done; 1 WeCom refused every rep, or the
database failed; 2 an unknown rep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence, TypeVar

import click
from sqlalchemy import bindparam, case, func, insert, select, update

from bot.config import Settings
from bot.contact_changes import WeComProfile, profile_from
from bot.models import Contact, Identity
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
    follows: list[dict[str, Any]] = field(default_factory=list)  # its follow_info for each of the reps
    followers: list[tuple[int, int, str]] = field(default_factory=list)  # (since, team order, userid)
    _profile: WeComProfile | None = None

    @property
    def owner(self) -> str:
        return min(self.followers)[2]

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


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def fetch_customers(rt: "Runtime", reps: list[str], report: SyncReport, *, progress: bool = True) -> dict[str, Customer]:
    """Every customer of `reps` with its profile and followers among them (with a progress bar on
    stderr unless `progress` is false)."""
    order = {userid: n for n, userid in enumerate(reps)}
    customers: dict[str, Customer] = {}
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
                for item in answer.get("external_contact_list") or []:
                    contact, follow = item.get("external_contact") or {}, item.get("follow_info") or {}
                    external_userid, userid = contact.get("external_userid"), follow.get("userid")
                    if not external_userid or userid not in order:
                        continue
                    customer = customers.get(external_userid)
                    if customer is None:
                        customer = customers[external_userid] = Customer(contact)
                    customer.follows.append(follow)
                    customer.followers.append((int(follow.get("createtime") or 0), order[userid], userid))
                bar.update(0, len(customers))
                cursor = str(answer.get("next_cursor") or "")
                if not cursor:
                    break
            bar.update(len(group), len(customers))
    return customers


_FILL = (
    update(Contact.__table__)
    .where(Contact.__table__.c.id == bindparam("b_id"))
    .values(
        name=case((Contact.__table__.c.name == "", bindparam("b_name")), else_=Contact.__table__.c.name),
        company=case((Contact.__table__.c.company == "", bindparam("b_company")), else_=Contact.__table__.c.company),
        title=case((Contact.__table__.c.title == "", bindparam("b_title")), else_=Contact.__table__.c.title),
        phone=func.coalesce(Contact.__table__.c.phone, bindparam("b_phone")),
        owner_userid=func.coalesce(Contact.__table__.c.owner_userid, bindparam("b_owner")),
        profile_due_at=bindparam("b_due", type_=Contact.__table__.c.profile_due_at.type),
        updated_at=bindparam("b_now", type_=Contact.__table__.c.updated_at.type),
    )
)


async def store_customers(rt: "Runtime", customers: dict[str, Customer], now: dt.datetime, report: SyncReport, *,
                          progress: bool = True) -> list[str]:
    """The customers into contacts and identities, CHUNK a transaction (see the module docstring).
    Returns the customers whose contact had no name before (the new ones included)."""
    unnamed: list[str] = []
    c = Contact.__table__.c
    ids = list(customers)
    with click.progressbar(length=len(ids), label="contacts", file=sys.stderr, hidden=not progress) as bar:
        for chunk in chunks(ids, CHUNK):
            async with rt.sessions() as session, session.begin():
                live = {x: (cid, name, owner, due) for cid, x, name, owner, due in (await session.execute(
                    select(c.id, c.external_userid, c.name, c.owner_userid, c.profile_due_at)
                    .where(c.external_userid.in_(chunk), c.merged_into_id.is_(None), c.erased_at.is_(None))
                )).all()}  # fmt: skip
                known = set((await session.scalars(select(c.external_userid).where(c.external_userid.in_(chunk)))).all())
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
                    await session.execute(insert(Contact), [_new_contact(x, customers[x], wanted[x], taken, now) for x in fresh])
                    made = dict((await session.execute(select(c.external_userid, c.id).where(c.external_userid.in_(fresh)))).all())
                    live.update({x: (made[x], "", customers[x].owner, None) for x in fresh})
                    await session.execute(insert(Identity), [
                        {"contact_id": made[x], "kind": "external_userid", "value": x, "created_at": now} for x in fresh])
                    report.new += len(fresh)
                    unnamed.extend(fresh)
                fill = []
                for x in chunk:
                    if x not in live or x in fresh:
                        continue
                    cid, name, owner, due = live[x]
                    profile = customers[x].profile
                    merge_pending = any(taken.get(pair, cid) != cid for pair in wanted[x])
                    fill.append({"b_id": cid, "b_name": profile.display_name(owner or customers[x].owner)[:128],
                                 "b_company": profile.company[:128],
                                 "b_title": profile.title[:128], "b_owner": customers[x].owner, "b_now": now,
                                 "b_phone": profile.mobiles[0] if profile.mobiles else None,
                                 "b_due": (due or now) if merge_pending else None})
                    report.owned += owner is None
                    if not name:
                        unnamed.append(x)
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
            bar.update(len(chunk))
    return unnamed


async def count_named(rt: "Runtime", external_userids: list[str]) -> int:
    c = Contact.__table__.c
    named = 0
    async with rt.read_sessions() as session:
        for chunk in chunks(external_userids, CHUNK):
            named += int(await session.scalar(select(func.count()).where(c.external_userid.in_(chunk), c.name != "")) or 0)
    return named


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


async def due_count(rt: "Runtime") -> int:
    async with rt.read_sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Contact).where(Contact.profile_due_at.is_not(None))) or 0)


async def sync(rt: "Runtime", reps: list[str], *, profiles: bool = True) -> SyncReport:
    report = SyncReport(reps=len(reps))
    customers = await fetch_customers(rt, reps, report)
    report.listed = len(customers)
    unnamed = await store_customers(rt, customers, rt.clock.now(), report)
    due = await due_count(rt)
    if profiles and due:
        with click.progressbar(length=due, label="customer profiles", file=sys.stderr) as bar:
            while handled := await rt.profiles.drain():
                bar.update(handled)
    report.named = await count_named(rt, unnamed)
    report.still_due = await due_count(rt)
    return report


def team_reps(settings: Settings) -> list[str]:
    """The members whose customers Beacon keeps: every rep and manager in [team]."""
    return [m.userid for m in settings.team.members if m.role in ("rep", "manager")]


async def sync_customers(ctx: "Context") -> None:
    """The weekly `sync-customers` job: the same import, without progress bars, its profiles left to
    the profile worker. Customers added while callbacks did not reach Beacon (a wrong callback URL, an
    app without the customer-contact permission for a while) get their contacts this way. A run in
    which WeCom refused every rep fails (its `job_runs` row says why)."""
    rt = ctx.runtime
    reps = team_reps(rt.settings)
    if not reps:
        return
    report = SyncReport(reps=len(reps))
    customers = await fetch_customers(rt, reps, report, progress=False)
    report.listed = len(customers)
    await store_customers(rt, customers, ctx.clock.now(), report, progress=False)
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
