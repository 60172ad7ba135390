"""Run Beacon's nightly jobs once, now, as the scheduler would: `python -m bench.job_runner CONFIG [JOB...]`.

Each job goes through `bot.scheduler.run_job` (claim its run key in `job_runs`, one unit of work, record
the outcome), in the order and with the run keys `serve`'s scheduler uses (default: decay-scores, then
mark-dormant). Prints `JOBS_STARTED` once the runtime is up, then one `JOB_JSON {...}` line per job (name, start as
time.time(), seconds, error), so that a benchmark can line the jobs up with its load. No scheduler, no
HTTP server, no workers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

NIGHTLY = ("decay-scores", "mark-dormant")


async def run(config: str, names: list[str]) -> int:
    from sqlalchemy import select

    from bot.config import load_settings
    from bot.models import JobRun
    from bot.runtime import Runtime
    from bot.scheduler import default_jobs, run_job

    settings = load_settings(config)
    jobs = {job_id: (job, key) for job_id, job, _trigger, key in default_jobs(settings.scheduler.timezone, settings)}
    unknown = [n for n in names if n not in jobs]
    if unknown:
        print(f"unknown job(s): {', '.join(unknown)}; known: {', '.join(jobs)}", file=sys.stderr)
        return 2
    rt = Runtime.build(settings, routers=[])
    await rt.start(background=False)
    worst = 0
    print("JOBS_STARTED", flush=True)
    try:
        for name in names:
            job, key_of = jobs[name]
            key = key_of(name, rt)
            started = time.time()
            t0 = time.perf_counter()
            ran = await run_job(rt, name, job, key)
            seconds = time.perf_counter() - t0
            async with rt.sessions() as session:
                row = await session.scalar(select(JobRun).where(JobRun.run_key == key))
                error = None if row is None else row.error
            worst = max(worst, 1 if (error or not ran) else 0)
            line = {"job": name, "run_key": key, "ran": ran, "started": started, "seconds": round(seconds, 3), "error": error}
            print("JOB_JSON " + json.dumps(line, ensure_ascii=False), flush=True)
    finally:
        await rt.stop()
    return worst


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    return asyncio.run(run(argv[0], list(argv[1:]) or list(NIGHTLY)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
