"""`python -m bot digest {reps|managers} [--date YYYY-MM-DD] [--dry-run]`.

`--date` is the digest's own day (default: today in `[scheduler] timezone`): the reps' to-do list
for that day, or the managers' digest sent that day about the day before. `--dry-run` prints every
message exactly as it would be sent, writes each chart to a temporary folder and prints its path,
and changes nothing. Without it, the digests go through the outbox, each recorded in `digests`, so a
second run for the same day sends nothing. The command waits until the outbox has delivered them,
and exits 1 if WeCom refused one of them for good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path

import click

from bot.clock import SystemClock
from bot.config import Settings
from bot.context import Context
from bot.db import create_engine, read_session_factory
from bot.digest.jobs import build_outgoing, send_digests, should_send
from bot.digest.window import today
from bot.outbox import deliver_now


def run_digest(settings: Settings, kind: str, day: dt.date | None, dry_run: bool) -> int:
    day = day or today(settings, SystemClock().now())
    if dry_run:
        return asyncio.run(_dry_run(settings, kind, day))
    return asyncio.run(_send(settings, kind, day))


async def _dry_run(settings: Settings, kind: str, day: dt.date) -> int:
    engine = create_engine(settings.database)
    try:
        async with read_session_factory(engine)() as session:
            outs = await build_outgoing(session, settings, kind, day)
    finally:
        await engine.dispose()
    folder = Path(tempfile.mkdtemp(prefix="beacon-digest-"))
    if not should_send(settings, day):
        click.echo(f"note: {day} is not a business day; with [digest] workdays_only nothing would be sent")
    click.echo(f"digest {kind} {day.isoformat()} (dry run): {sum(1 for o in outs if o.bodies)} message(s)")
    for out in outs:
        if not out.bodies:
            click.echo(f"\n=== {out.recipient}: nothing to send")
            continue
        for n, body in enumerate(out.bodies, 1):
            click.echo(f"\n=== to {out.recipient} · markdown {n}/{len(out.bodies)}")
            click.echo(body)
        if out.chart is not None:
            path = folder / out.chart_name
            path.write_bytes(out.chart)
            click.echo(f"=== to {out.recipient} · image {path}")
    return 0


async def _send(settings: Settings, kind: str, day: dt.date) -> int:
    from bot.runtime import Runtime

    rt = Runtime.build(settings, routers=[])
    await rt.start(background=False)
    try:
        async with rt.sessions() as session:
            ctx = Context(rt, session, origin=f"cli:digest:{kind}:{day.isoformat()}")
            sent, skipped = await send_digests(ctx, kind, day)
            await session.commit()
        failed = await deliver_now(rt, f"digest:{kind}:{day.isoformat()}:")
    finally:
        await rt.stop()
    click.echo(f"digest {kind} {day.isoformat()}: {sent} sent, {skipped} already sent or empty")
    if failed:
        click.echo(f"warning: {failed} digest message(s) failed to send; see the log", err=True)
        return 1
    return 0
