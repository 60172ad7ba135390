"""`python -m bot contact sync`: the team's existing WeCom customers into Beacon, owned and named.

A company that installs Beacon has customers already: each rep's WeCom holds them, and no
contact-added callback will ever come for them. This command asks WeCom for each rep's customers
(`externalcontact/list?userid=`), stores the ones Beacon does not know yet as contacts owned by
their rep (the first in the team's order when several reps have the customer), gives an owner to
known contacts that had none, and then fetches the profiles of every contact still unnamed (name, company, title;
bot/profiles.py, under its lease) with a progress bar. Contacts are written set-based, CHUNK ids to
a transaction. Running it again adds only what is new.

If the serving process is fetching profiles (it holds the `profiles` lease), or WeCom stops
answering, the command says how many customers are still to be named: the serving process names
them. Exit status: 0 done; 1 WeCom refused every rep's list, or the database failed; 2 an unknown rep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click
from sqlalchemy import func, insert, select, update

from bot.config import Settings
from bot.models import Contact, Identity
from bot.wecom.client import WeComError

if TYPE_CHECKING:
    from bot.runtime import Runtime

LIST_CUSTOMERS = "/cgi-bin/externalcontact/list"
NO_CUSTOMERS = 84061  # WeCom's answer for a member without customers
CHUNK = 500


@dataclass
class SyncReport:
    reps: int = 0
    listed: int = 0  # distinct customers across the reps' lists
    new: int = 0
    owned: int = 0  # known contacts without an owner that got one
    named: int = 0
    still_due: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # rep: WeCom's error


async def list_customers(rt: "Runtime", userid: str) -> list[str]:
    """The external_userids of `userid`'s customers."""
    try:
        answer = await rt.wecom.get(LIST_CUSTOMERS, {"userid": userid})
    except WeComError as exc:
        if exc.errcode == NO_CUSTOMERS:
            return []
        raise
    return [str(x) for x in answer.get("external_userid") or [] if x]


async def store_customers(rt: "Runtime", owner_of: dict[str, str], now: dt.datetime) -> tuple[int, int]:
    """Contacts for the customers Beacon does not know (owned by their rep, their profile due), and
    owners for known live contacts without one; CHUNK ids a transaction. Returns (new, owned)."""
    new = owned = 0
    c = Contact.__table__.c
    ids = list(owner_of)
    for chunk in (ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)):
        async with rt.sessions() as session, session.begin():
            known = set((await session.scalars(select(c.external_userid).where(c.external_userid.in_(chunk)))).all())
            known |= set((await session.scalars(select(Identity.value).where(Identity.kind == "external_userid",
                                                                              Identity.value.in_(chunk)))).all())
            fresh = [x for x in chunk if x not in known]
            if fresh:
                await session.execute(insert(Contact), [
                    {"external_userid": x, "owner_userid": owner_of[x], "created_at": now, "updated_at": now, "profile_due_at": now}
                    for x in fresh
                ])
                made = (await session.execute(select(c.id, c.external_userid).where(c.external_userid.in_(fresh)))).all()
                await session.execute(insert(Identity), [
                    {"contact_id": cid, "kind": "external_userid", "value": x, "created_at": now} for cid, x in made
                ])
                new += len(fresh)
            unowned = (await session.execute(select(c.id, c.external_userid).where(
                c.external_userid.in_([x for x in chunk if x in known]), c.owner_userid.is_(None),
                c.merged_into_id.is_(None), c.erased_at.is_(None),
            ))).all()  # fmt: skip
            # Known by their id alone (met through a share, say, and WeCom has not been asked yet): named too.
            await session.execute(update(Contact).where(
                c.external_userid.in_([x for x in chunk if x in known]), c.name == "", c.profile_due_at.is_(None),
                c.merged_into_id.is_(None), c.erased_at.is_(None),
            ).values(profile_due_at=now))  # fmt: skip
            by_owner: dict[str, list[int]] = {}
            for cid, x in unowned:
                by_owner.setdefault(owner_of[x], []).append(cid)
            for owner, ids in by_owner.items():
                await session.execute(update(Contact).where(Contact.id.in_(ids)).values(owner_userid=owner, updated_at=now))
                owned += len(ids)
    return new, owned


async def due_count(rt: "Runtime") -> int:
    async with rt.read_sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Contact).where(Contact.profile_due_at.is_not(None))) or 0)


async def sync(rt: "Runtime", reps: list[str], *, profiles: bool = True) -> SyncReport:
    report = SyncReport(reps=len(reps))
    owner_of: dict[str, str] = {}
    with click.progressbar(reps, label="customers of each rep", file=click.get_text_stream("stderr")) as bar:
        for userid in bar:
            try:
                for external_userid in await list_customers(rt, userid):
                    owner_of.setdefault(external_userid, userid)
            except WeComError as exc:
                report.refused[userid] = str(exc)
    report.listed = len(owner_of)
    report.new, report.owned = await store_customers(rt, owner_of, rt.clock.now())
    due = await due_count(rt)
    if profiles and due:
        worker = rt.profiles
        with click.progressbar(length=due, label="customer profiles", file=click.get_text_stream("stderr")) as bar:
            while True:
                before = worker.fetched
                handled = await worker.drain()
                report.named += worker.fetched - before
                bar.update(handled)
                if not handled:
                    break
    report.still_due = await due_count(rt)
    return report


def run_sync(settings: Settings, reps: tuple[str, ...], profiles: bool) -> int:
    """The CLI edge: prints the report; returns the exit status."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.runtime import Runtime

    team = [m.userid for m in settings.team.members if m.role in ("rep", "manager")]
    unknown = [r for r in reps if r not in {m.userid for m in settings.team.members}]
    if unknown:
        click.echo(f"error: not in [team] members: {', '.join(unknown)}", err=True)
        return 2
    chosen = list(reps) or team
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
               f"{report.owned} known contacts given an owner, {report.named} named from their WeCom profile")
    if report.still_due:
        click.echo(f"{report.still_due} contacts still to be named: the serving process names them "
                   "(it fetches profiles itself, or WeCom did not answer: see the log)")
    return 1 if report.refused and len(report.refused) == report.reps else 0
