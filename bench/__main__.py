"""`python -m bench [NAME [ARGS...]]`: run one benchmark (with its own options), or all of them.

A benchmark is a module in this package with NAME, SUMMARY and `main(argv) -> int` (exit status:
0 ran, 1 ran and found a problem, 2 could not run). Add a new one to BENCHMARKS below.

With no NAME every benchmark runs once on SQLite (with its defaults, or the options in ON_SQLITE), then the runs of
EXTRA_ON_SQLITE (the callbacks edge alone), then those that take a database
again on PostgreSQL (ON_POSTGRESQL: links, callbacks, latency, rescore, nightly) when a server answers at bench.store.DEFAULT_PG_URL
(`BENCH_POSTGRES_URL` to point elsewhere); `python -m bench --sqlite-only` skips those.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import time
from typing import TextIO

from bench.store import DEFAULT_PG_URL

# name -> module; run in this order by `python -m bench` with no name
BENCHMARKS = {
    "links": "bench.links",
    "rescore": "bench.rescore",
    "callbacks": "bench.callbacks",
    "latency": "bench.latency",
    "nightly": "bench.nightly",
    "memory": "bench.memory",
}
# `python -m bench` with no NAME keeps within ten minutes, even on a machine whose bare baselines run
# at half the speed of the fastest seen (11 min 21 s on 2026-12-02 with 2 latency rounds, rescore
# 200k/4k and nightly 20k/200k): these options on SQLite (the rest run with their defaults), then on
# PostgreSQL with `--db postgresql`, fewer rounds and smaller companies (memory uses no database).
ON_SQLITE = {
    "latency": ["--rounds", "1"], "rescore": ["--events", "100000", "--contacts", "2000"],
    "nightly": ["--contacts", "10000", "--events", "100000", "--idle", "5"],
}
# More runs on SQLite after those: (title, benchmark, options). The callbacks edge alone, as a process
# with `[inbox] workers = 0` runs it (the target is about acknowledging durably).
EXTRA_ON_SQLITE = [("callbacks, edge only", "callbacks", ["--inbox-workers", "0", "--rounds", "1"])]
ON_POSTGRESQL = {
    "links": ["--rounds", "2"], "callbacks": ["--rounds", "2"], "latency": ["--rounds", "1"], "rescore": ["--events", "100000", "--contacts", "2000"],
    "nightly": ["--contacts", "5000", "--events", "50000", "--idle", "4"],
}


def usage() -> str:
    lines = [
        "usage: python -m bench [NAME [OPTIONS...]]   (no NAME: every benchmark, default options; then links,",
        "       callbacks, latency, rescore and nightly on PostgreSQL unless --sqlite-only)", "", "benchmarks:",
    ]
    for name, module in BENCHMARKS.items():
        lines.append(f"  {name:<10} {importlib.import_module(module).SUMMARY}")
    lines.append("\n`python -m bench NAME --help` lists a benchmark's options.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "help", "list"):
        print(usage())
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
            return 2
        return importlib.import_module(BENCHMARKS[name]).main(rest)
    sqlite_only = argv == ["--sqlite-only"]
    if argv and not sqlite_only:
        print(f"unknown option {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    runs = [(name, module, ON_SQLITE.get(name, [])) for name, module in BENCHMARKS.items()]
    runs += [(title, BENCHMARKS[name], args) for title, name, args in EXTRA_ON_SQLITE]
    if not sqlite_only:
        problem = _postgres_problem()
        if problem:
            print(f"PostgreSQL benchmarks skipped: no PostgreSQL at {DEFAULT_PG_URL} ({problem})")
        else:
            runs += [(f"{name} on PostgreSQL", BENCHMARKS[name], ["--db", "postgresql", *args]) for name, args in ON_POSTGRESQL.items()]
    worst, took, started = 0, [], time.monotonic()
    verdicts: list[tuple[str, list[str]]] = []
    for n, (title, module, args) in enumerate(runs, 1):
        print(f"=== {title}  ({n}/{len(runs)}, {_minutes(time.monotonic() - started)} so far)", flush=True)
        began = time.monotonic()
        tee = _Verdicts(sys.stdout)
        with contextlib.redirect_stdout(tee):
            worst = max(worst, importlib.import_module(module).main(args))
        took.append((title, time.monotonic() - began))
        verdicts.append((title, tee.lines))
    total = time.monotonic() - started
    print("\n=== verdicts (each benchmark's own lines above; targets PASS or MISS, checks PASS or FAIL)")
    counts = {"PASS": 0, "MISS": 0, "FAIL": 0}
    for title, lines in verdicts:
        print(f"  {title}")
        for line in lines:
            print(f"    {line}")
            counts[line.rsplit(None, 1)[-1]] += 1  # _verdict ends every line with PASS, MISS or FAIL
        if not lines:
            print("    (no verdict printed: see its output above)")
    print(f"  in all: {counts['PASS']} PASS, {counts['MISS']} MISS, {counts['FAIL']} FAIL")
    print("\n=== time taken")
    for title, seconds in took:
        print(f"  {title:<26} {_minutes(seconds):>7}")
    print(f"  {'all':<26} {_minutes(total):>7}  (budget {_minutes(BUDGET_S)}{'' if total <= BUDGET_S else ': OVER'})")
    return worst


# A benchmark's verdict lines: a target met or missed, or a check passed or failed, as the last word;
# not the rows of its per-round tables, which end the same way (mostly numbers).
_VERDICT = re.compile(r"^\s*(\S.*?)\s+(PASS|MISS|FAIL)\s*$")
_NUMBER = re.compile(r"^[\d,.\-]+$")


def _verdict(line: str) -> str | None:
    match = _VERDICT.match(line)
    if match is None:
        return None
    words = match.group(1).split()
    if sum(1 for word in words if _NUMBER.match(word)) >= 5:
        return None  # a table row
    return f"{' '.join(words)}  {match.group(2)}"


class _Verdicts:
    """stdout for one benchmark: passed through as it is written, and its verdict lines kept."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self.out.write(text)
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        self.lines += [verdict for line in done if (verdict := _verdict(line)) is not None]
        return len(text)

    def flush(self) -> None:
        self.out.flush()


BUDGET_S = 600  # issue 9: `make bench` runs every benchmark in under ten minutes


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _postgres_problem() -> str | None:
    import asyncio

    try:
        import asyncpg

        async def probe() -> None:
            conn = await asyncpg.connect(DEFAULT_PG_URL, timeout=3)
            await conn.close()

        asyncio.run(probe())
    except Exception as exc:  # any failure means "not there"; the message says which
        return f"{type(exc).__name__}: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
