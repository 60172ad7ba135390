"""Stage and temperature mirrored to WeCom customer tags, so reps see them in the WeCom client.

Beacon's tag group is created on first use (`get_corp_tag_list`, then `add_corp_tag` for what is
missing) and the tag ids are kept in `wecom_tags`. Each change is one outbox row ("tags:mark", by tag
name); the outbox worker resolves the names to ids and calls `mark_tag`. No WeCom call ever happens
inside the scoring transaction, which on SQLite holds the write lock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.inbox import insert_ignore
from bot.lifecycle import STAGE_LABELS, TEMPERATURE_LABELS
from bot.models import Contact, OutboxItem, WeComTag
from bot.outbox import enqueue
from bot.tracker_batch import BATCH_KEY
from bot.wecom.client import WeComError

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger("beacon.tags")
TAG_EXISTS = 40071  # add_corp_tag: a tag of that name exists in the group


def stage_tag(stage: str) -> str:
    return f"阶段·{STAGE_LABELS.get(stage, stage)}"


def temperature_tag(temperature: str) -> str:
    return f"温度·{TEMPERATURE_LABELS.get(temperature, temperature)}"


ALL_TAGS = [stage_tag(s) for s in STAGE_LABELS] + [temperature_tag(t) for t in TEMPERATURE_LABELS]


class TagMirror:
    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self._ids: dict[str, str] = {}

    async def tag_ids(self) -> dict[str, str]:
        """name → WeCom tag id, creating Beacon's group and tags in WeCom on first use.

        Several processes may do this at once (each outbox worker sends tag changes): the one whose
        `add_corp_tag` comes second gets 40071 (name exists) and takes the ids from a new listing, and
        storing them ignores rows another process stored first (WeCom gives one id per name)."""
        if len(self._ids) == len(ALL_TAGS):
            return self._ids
        async with self.rt.read_sessions() as session:
            stored = {t.name: t.tag_id for t in (await session.scalars(select(WeComTag))).all()}
        missing = [name for name in ALL_TAGS if name not in stored]
        if missing:
            group = self.rt.settings.lifecycle.tag_group
            found = await self._listed(group, missing)
            still = [name for name in missing if name not in found]
            if still:
                try:
                    created = await self.rt.wecom.post(
                        "/cgi-bin/externalcontact/add_corp_tag",
                        {"group_name": group, "tag": [{"name": name} for name in still]},
                    )
                except WeComError as exc:
                    if exc.errcode != TAG_EXISTS:
                        raise
                    found.update(await self._listed(group, still))  # created meanwhile by another process
                else:
                    for tag in created.get("tag_group", {}).get("tag", []):
                        found[tag["name"]] = tag["id"]
            if found:
                async with self.rt.sessions() as session, session.begin():
                    stmt = insert_ignore(session.bind.dialect.name, WeComTag.__table__, "name")
                    await session.execute(stmt, [{"name": n, "group_name": group, "tag_id": i} for n, i in found.items()])
            stored.update(found)
        self._ids = stored
        return stored

    async def _listed(self, group: str, names: list[str]) -> dict[str, str]:
        """The ids of these tag names in Beacon's group, as WeCom lists them now."""
        listing = await self.rt.wecom.post("/cgi-bin/externalcontact/get_corp_tag_list", {})
        return {
            tag["name"]: tag["id"]
            for g in listing.get("tag_group", []) if g.get("group_name") == group
            for tag in g.get("tag", []) if tag.get("name") in names
        }

    async def mirror(self, session: AsyncSession, contact: Contact) -> None:
        """Queue the tag change for the contact's current stage and temperature (in this transaction)."""
        wanted = {stage_tag(contact.stage), temperature_tag(contact.temperature)}
        profile = dict(contact.profile or {})
        previous = set(profile.get("wecom_tags", []))
        if wanted == previous:
            return
        now = self.rt.clock.now()
        payload = {"userid": contact.owner_userid, "external_userid": contact.external_userid,
                   "add": sorted(wanted - previous), "remove": sorted(previous - wanted)}
        key = f"mark_tag:{contact.id}:{','.join(sorted(wanted))}:{now.isoformat()}"
        batch = session.info.get(BATCH_KEY)
        if batch is not None:  # the tracker's batch: one executemany for all its rows (as bot.outbox.enqueue)
            batch.insert(OutboxItem.__table__, {"idempotency_key": key[:160], "path": "tags:mark", "payload": payload,
                                                "next_attempt_at": now, "created_at": now})
        else:
            enqueue(session, "tags:mark", payload, key=key, now=now)
        profile["wecom_tags"] = sorted(wanted)
        contact.profile = profile

    async def send(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The outbox's side: tag names to ids (creating them on first use), then `mark_tag`."""
        ids = await self.tag_ids()
        return await self.rt.wecom.post(
            "/cgi-bin/externalcontact/mark_tag",
            {"userid": payload["userid"], "external_userid": payload["external_userid"],
             "add_tag": sorted(ids[n] for n in payload["add"] if n in ids),
             "remove_tag": sorted(ids[n] for n in payload["remove"] if n in ids)},
        )
