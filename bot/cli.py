"""The command line: `python -m bot [--config PATH] COMMAND`. Exit 0 ok, 2 bad usage or bad config."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Coroutine

import click

from bot.config import ConfigError, Settings, config_path, load_settings
from bot.logs import setup_logging

log = logging.getLogger("beacon.cli")


def _secrets(settings: Settings) -> list[str]:
    w = settings.wecom
    return [w.secret, w.token, w.encoding_aes_key, settings.server.admin_token, settings.server.secret_key]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


@click.group()
@click.option("--config", "config_file", metavar="PATH", help="TOML config (else $BEACON_CONFIG, ./config.toml, defaults).")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """Beacon: a WeCom bot for B2B sales enablement."""
    import os

    ctx.meta["beacon.config_path"] = path = config_path(config_file, os.environ)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(2)
    setup_logging(settings.logging.level, settings.logging.format, _secrets(settings))
    ctx.obj = settings


@cli.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Bring the database schema to the newest revision (safe to repeat)."""
    from bot.db import migrate_sync

    migrate_sync(settings.database.url)
    click.echo("database is at the newest schema revision")


@cli.command()
@click.option("--host", default=None, help="Override [server].host.")
@click.option("--port", type=int, default=None, help="Override [server].port.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes sharing the port (SO_REUSEPORT), under a supervisor that restarts them.")
@click.option("--worker-index", type=int, default=None, hidden=True)  # set by the supervisor for its workers
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, workers: int, worker_index: int | None) -> None:
    """Run the HTTP server (callbacks, links, pages, API) and the scheduler."""
    from bot.serve import serve_forever, supervise

    settings: Settings = ctx.obj
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    if worker_index is not None:  # one of the supervisor's workers: the scheduler runs in worker 0 only
        if worker_index > 0:
            settings = settings.replace(scheduler={"enabled": False})
        run(serve_forever(settings, host=host, port=port, sibling=True))
        return
    _warn_connection_budget(settings, workers)
    if workers == 1:
        run(serve_forever(settings, host=host, port=port))
        return
    if settings.database.url.startswith("sqlite"):
        click.echo("note: several workers on SQLite take turns on its one write lock; PostgreSQL scales out", err=True)
    config = ctx.meta.get("beacon.config_path")
    base = [sys.executable, "-m", "bot", *(["--config", str(config)] if config else []), "serve", "--host", host, "--port", str(port)]
    stop_timeout = settings.server.stop_grace_s + 25  # a worker's own stop: grace, lease release, pool close, requests
    sys.exit(run(supervise(lambda i: [*base, "--worker-index", str(i)], workers, stop_timeout_s=stop_timeout)))


def _warn_connection_budget(settings: Settings, processes: int) -> None:
    """Before serving on PostgreSQL: say so when the processes' pools could outgrow max_connections."""
    from bot.db import connection_budget

    warning = run(connection_budget(settings.database, processes))
    if warning:
        logging.getLogger("beacon.serve").warning(warning)


@cli.group()
def inbox() -> None:
    """Inspect and requeue stored callbacks."""


@inbox.command("list")
@click.option("--status", type=click.Choice(["pending", "parked", "done"]), default="parked")
@click.option("--limit", type=int, default=50)
@click.pass_obj
def inbox_list(settings: Settings, status: str, limit: int) -> None:
    """List inbox rows (default: parked ones, which need an operator)."""
    from bot.ops import list_inbox

    for line in run(list_inbox(settings, status, limit)):
        click.echo(line)


@inbox.command("retry")
@click.argument("item_id", required=False, type=int)
@click.option("--all", "all_", is_flag=True, help="Requeue every parked row.")
@click.pass_obj
def inbox_retry(settings: Settings, item_id: int | None, all_: bool) -> None:
    """Put a parked callback (or --all) back in the queue."""
    from bot.ops import retry_inbox

    if item_id is None and not all_:
        raise click.UsageError("give an inbox id or --all")
    count = run(retry_inbox(settings, item_id))
    click.echo(f"requeued {count} callback(s)")


@cli.group("content")
def content_group() -> None:
    """Manage the content library."""


@content_group.command("import")
@click.argument("folder", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def content_import(settings: Settings, folder: Path) -> None:
    """Import/update the content library from DIR (Markdown + YAML front matter); prints a summary.

    Exit 0 when every file imported, 1 when some files had errors (printed as `path: field: why`;
    the valid files are imported anyway), 2 when DIR is missing or holds no item files.
    """
    from content.command import run_import

    sys.exit(run_import(settings, folder))


@cli.command()
@click.option("--port", type=int, default=None, help="Beacon's port (default [server].port).")
@click.option("--sim-port", type=int, default=8081, show_default=True, help="The WeCom simulator's port.")
@click.option("--once", is_flag=True, help="Play the scenario and exit instead of serving.")
@click.pass_obj
def demo(settings: Settings, port: int | None, sim_port: int, once: bool) -> None:
    """Beacon with the built-in WeCom simulator: a scripted scenario, then serve until Ctrl-C."""
    from bot.demo import run_demo

    if port is not None:
        settings = settings.replace(server={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    settings = settings.replace(wecom={"api_base": f"http://127.0.0.1:{sim_port}"})
    run(run_demo(settings, sim_port=sim_port, once=once))


@cli.command()
@click.pass_obj
def rescore(settings: Settings) -> None:
    """Replay every contact's event log under the current scoring rules (after a rule change)."""
    from bot.rescore import rescore_all

    with click.progressbar(length=1, label="rescoring contacts", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        report = run(rescore_all(settings, progress=progress))
    click.echo(report.summary())


@cli.command()
@click.option("--contacts", type=click.IntRange(min=1), required=True, help="Contacts to add.")
@click.option("--events", type=click.IntRange(min=0), required=True, help="Behavior events to add (exactly).")
@click.option("--reps", type=click.IntRange(min=1), default=None, help="Sales reps (default 2,000 per 1M contacts, at least 3).")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed and sizes, same company.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Worker processes generating chunks (default: 2 from 20,000 contacts).")
@click.option("--now", "now_text", metavar="ISO", default=None, help="The moment the company is as of (default: the current time).")
@click.pass_obj
def synth(settings: Settings, contacts: int, events: int, reps: int | None, seed: int, jobs: int | None, now_text: str | None) -> None:
    """Write a synthetic company (team, contacts, shares, events, score ledger) into the database, for benchmarks."""
    import datetime as dt
    import os

    from bot.synth import Plan, default_reps
    from bot.synth import run as run_synth

    try:
        now = dt.datetime.fromisoformat(now_text) if now_text else dt.datetime.now(dt.timezone.utc)
    except ValueError:
        raise click.BadParameter(f"not an ISO date-time: {now_text!r}", param_hint="--now") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    if jobs is None:
        jobs = min(2, len(os.sched_getaffinity(0))) if contacts >= 20_000 else 1
    plan = Plan(contacts=contacts, events=events, reps=reps or default_reps(contacts), seed=seed, now=now, jobs=jobs)
    sys.exit(run_synth(settings, plan))


@cli.group("channel")
def channel_group() -> None:
    """Channel QR codes: where customers come from, and what welcomes them."""


@channel_group.command("create")
@click.argument("name")
@click.option("--reps", default="", metavar="REP1,REP2", help="WeCom userids behind the QR code (default: every active rep).")
@click.option("--welcome", "welcome", default=None, metavar="ITEM_SLUG", help="Starter item sent as a tracked link.")
@click.option("--text", "text", default="", metavar="TEXT", help="Welcome text (default: a greeting from the rep).")
@click.pass_obj
def channel_create(settings: Settings, name: str, reps: str, welcome: str | None, text: str) -> None:
    """Create a channel QR code in WeCom (add_contact_way) and store it; prints state and qr_code."""
    from bot.channel_command import run_create
    from bot.channels import ChannelRequest

    req = ChannelRequest(name=name, reps=tuple(r for r in reps.split(",") if r.strip()), welcome=welcome, text=text)
    sys.exit(run_create(settings, req))


@channel_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def channel_list(settings: Settings, as_json: bool) -> None:
    """Channels with contacts first touched, total adds and opens of their shares."""
    from bot.channel_command import run_list

    sys.exit(run_list(settings, as_json))


@cli.group("contact")
def contact_group() -> None:
    """Contacts: import the reps' WeCom customers; personal-data requests for one contact (by external_userid, or id:<number>)."""


@contact_group.command("sync")
@click.option("--reps", default="", metavar="REP1,REP2", help="Only these reps' customers (default: every rep and manager in [team]).")
@click.option("--no-profiles", is_flag=True, help="Store the customers only; the serving process fetches their profiles.")
@click.pass_obj
def contact_sync(settings: Settings, reps: str, no_profiles: bool) -> None:
    """Import the reps' existing WeCom customers (externalcontact/batch/get_by_user), owned by their rep and named."""
    from bot.contact_sync import run_sync

    sys.exit(run_sync(settings, tuple(r.strip() for r in reps.split(",") if r.strip()), not no_profiles))


@contact_group.command("export")
@click.argument("contact")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write JSON here instead of stdout.")
@click.pass_obj
def contact_export(settings: Settings, contact: str, out: Path | None) -> None:
    """Everything Beacon holds about the contact, as JSON."""
    from bot.privacy_command import run_export

    run_export(settings, contact, out)


@contact_group.command("erase")
@click.argument("contact")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def contact_erase(settings: Settings, contact: str, yes: bool) -> None:
    """Erase the contact's personal data; anonymous aggregates stay."""
    from bot.privacy_command import run_erase

    if not yes:
        click.confirm(f"Erase all personal data of {contact}? This cannot be undone", abort=True)
    run_erase(settings, contact)


@cli.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_obj
def backup(settings: Settings, dest: Path) -> None:
    """Write a consistent, checked copy of the database (SQLite: online; PostgreSQL: pg_dump)."""
    from bot.privacy_command import run_backup

    run_backup(settings, dest, restore=False)


@cli.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def restore(settings: Settings, source: Path) -> None:
    """Replace the database with a backup (stop the server first)."""
    from bot.privacy_command import run_backup

    run_backup(settings, source, restore=True)


@cli.group("sop")
def sop_group() -> None:
    """SOP playbooks: import files, list versions."""


@sop_group.command("import")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.pass_obj
def sop_import(settings: Settings, folder: Path) -> None:
    """Import playbooks (*.toml, *.yaml) from DIR; a changed file becomes a new version.

    Exit 0 all imported, 1 some files had errors (`path: field: why`), 2 no playbook files in DIR.
    """
    from bot.sop.command import run_import

    sys.exit(run_import(settings, folder))


@sop_group.command("list")
@click.pass_obj
def sop_list(settings: Settings) -> None:
    """Playbook versions, which one is in force, and running enrollments per version."""
    from bot.sop.command import run_list

    sys.exit(run_list(settings))


@cli.command()
@click.argument("kind", type=click.Choice(["reps", "managers"]))
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="The digest's day (default today, local): reps' to-do list for it; managers' digest of the day before.")
@click.option("--dry-run", is_flag=True, help="Print what would be sent (charts to a temp folder); change nothing.")
@click.pass_obj
def digest(settings: Settings, kind: str, day: Any, dry_run: bool) -> None:
    """Build and send (or print) the reps' to-do lists or the managers' digests, once per day."""
    from bot.digest.command import run_digest

    sys.exit(run_digest(settings, kind, day.date() if day else None, dry_run))


@cli.command("mass-send")
@click.argument("content")
@click.option("--stage", default=None, help="Contacts in this stage (new, nurturing, mql, sql, customer, dormant, invalid).")
@click.option("--temperature", default=None, help="cold, warm or hot.")
@click.option("--owner", default=None, metavar="USERID", help="Contacts this rep owns.")
@click.option("--channel", default=None, metavar="NAME", help="Contacts who came through this channel (none: without one).")
@click.option("--q", "keyword", default=None, metavar="TEXT", help="Name or company contains TEXT (or the exact external_userid / phone).")
@click.option("--text", default=None, help="Message template: {name} {company} {title} {summary} {rep} {link} (the link is appended if missing).")
@click.option("--by", default="cli", show_default=True, help="Who sends it, for the record.")
@click.option("--dry-run", is_flag=True, help="Show who would get it, who is skipped and why, and the message; change nothing.")
@click.pass_obj
def mass_send(settings: Settings, content: str, stage: str | None, temperature: str | None, owner: str | None,
              channel: str | None, keyword: str | None, text: str | None, by: str, dry_run: bool) -> None:
    """Mass-send (群发) library item CONTENT to a segment: each contact gets a tracked link of their own,
    through their owner's 群发助手 (the rep confirms). Exit 2 names a bad option."""
    from bot.mass_send import run_command

    segment = {k: v for k, v in (("stage", stage), ("temperature", temperature), ("owner", owner), ("channel", channel),
                                 ("q", keyword)) if v is not None}  # fmt: skip
    sys.exit(run_command(settings, content, segment, text, by, dry_run))


@cli.group("menu")
def menu_group() -> None:
    """The self-built app's custom menu (from [menu] in the config)."""


@menu_group.command("sync")
@click.pass_obj
def menu_sync(settings: Settings) -> None:
    """Create the app menu in WeCom (menu/create?agentid=); replaces the current one."""
    from bot.menu import run_sync

    sys.exit(run_sync(settings))


def main() -> None:
    cli(prog_name="python -m bot")
