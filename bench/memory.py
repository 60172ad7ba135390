"""Memory of the scorer's in-memory state (ScoringService's ScoreBook) vs a plain dict id → score.

`python -m bench memory [--sizes 100000,1000000] [--sample 4000] [--strict]`

Each measurement is a fresh subprocess (`python -m bench.memory _measure VARIANT N MODE`; two run at
a time on two cores) that imports what it needs, builds its inputs, collects garbage, then fills one
structure with N contacts and reports how much it grew:
- dict: `{contact_id: score}` with N distinct float scores: the least a process can keep per contact;
- book: a ScoringService (bot/scoring/service.py) whose ScoreBook holds N contacts' states, ids 1…N;
- spread: the same with ids SPREAD apart: the contacts one process scored, spread over a company
  SPREAD times the book's size (the book's id → row index costs 4 bytes per id up to the largest:
  bot/scoring/engine.py RowIndex);
- objects (reference only, up to 200k contacts): a dict of N ContactScoreState objects, what the
  book's packing avoids.
The states are realistic: a sample of contacts is generated like `python -m bot synth` does (profile,
contact added, link sessions, messages, payments, a skewed number of events over 180 days) and
replayed through the product's scorer up to now; the book is then filled by cycling through the
sample's states under new ids (their cap counters and `max_times` totals copied, as each contact has
its own). Contacts active today keep their day's cap counters; contacts whose `max_times` rules fired
keep their totals: packed in their row (bot/scoring/engine.py pack_totals), or beside it in a
dict when they do not fit; cap counters live beside the packed arrays, in a dict.
Two modes: RSS growth (/proc/self/statm, after gc) and tracemalloc (traced bytes after the fill; dict
and book only).
Target (issue 9): the book ≤ 1.5× the plain dict, on RSS growth, for both id layouts. A breakdown of the book by part
(row index, arrays, cap counters, totals) says where the bytes go.
Exit status: 0 ran (the target may MISS; with --strict a MISS is exit 1), 1 a measurement failed,
2 could not run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import harness

NAME = "memory"
SUMMARY = "ScoreBook (the scorer's in-memory state) vs a plain dict id → score, 100k and 1M contacts"
TARGET_RATIO = 1.5
VARIANTS = ("dict", "book", "objects", "spread")
TRACED = ("dict", "book")  # measured with tracemalloc too
SPREAD = 10
OBJECTS_UP_TO = 200_000  # contacts: the ORM-free objects reference is measured up to this size
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def sample_states(n: int, seed: int = 1) -> tuple[Any, list[Any]]:
    """(ScoringService, states of `n` synthetic contacts replayed through the product's scorer)."""
    import datetime as dt

    from bot.config import load_settings
    from bot.scoring.engine import ScoredEvent
    from bot.scoring.service import ScoringService, profile_of
    from bot.synth import INDUSTRIES, PERSONAS, Generator, World

    settings = load_settings(None, {})
    service = ScoringService(settings.scoring)
    now = dt.datetime.now(dt.timezone.utc)
    kinds = [("solution", "decision"), ("case_study", "consideration"), ("whitepaper", "awareness"), ("blog", "awareness"),
             ("report", "consideration"), ("webinar", "consideration")]
    items = [(i, 100 + i, kind, stage, ("tag",), f"资料 {i}", i % 5 == 0, i % 4 == 0) for i, (kind, stage) in enumerate(kinds * 3, 1)]
    world = World(scoring=settings.scoring, dialect="postgresql", now=now, seed=seed, reps=[f"rep{i}" for i in range(20)],
                  rep_weights=[1.0] * 20, channels=[1, 2, 3], items=items, industries=INDUSTRIES, personas=PERSONAS,
                  dormant_after_days=settings.lifecycle.dormant_after_days)
    generator = Generator(world)
    import random

    rng = random.Random(seed)
    people = [generator._person(rng, cid) for cid in range(1, n + 1)]
    generator._allocate(rng, people, 10 * n)
    states = []
    for p in people:
        events = [ScoredEvent(id=k, contact_id=p.id, type=e[1], at=e[0], item_id=e[5][0] if e[5] else None,
                              item_kind=e[5][2] if e[5] else None, item_stage=e[5][3] if e[5] else None,
                              item_tags=e[5][4] if e[5] else (), props=e[4], item_title=e[5][5] if e[5] else None)
                  for k, e in enumerate(generator._events(rng, p))]
        contact = type("C", (), {})()
        for name, value in (("name", p.name), ("company", p.company), ("title", p.title), ("phone", p.phone), ("email", p.email),
                            ("region", p.region), ("industry", p.industry), ("company_size", p.size), ("persona", p.persona),
                            ("profile", {})):
            setattr(contact, name, value)
        state, _ = service.scorer.rescore(p.id, profile_of(contact), events, now, profile_at=p.created)  # type: ignore[arg-type]
        states.append(state)
    return service, states


def _copy(state: Any, contact_id: int) -> Any:
    from bot.scoring.engine import ContactScoreState, DayCaps

    caps = None
    if state.caps is not None:
        caps = DayCaps(state.caps.day)
        caps.earned = state.caps.earned
        caps.per_item = dict(state.caps.per_item) if state.caps.per_item is not None else None
    return ContactScoreState(contact_id, state.model, profile_mask=state.profile_mask, profile=state.profile,
                             behavior=state.behavior, penalty=state.penalty, active_day=state.active_day,
                             clock_day=state.clock_day, caps=caps, totals=dict(state.totals) if state.totals is not None else None)


def measure(variant: str, n: int, mode: str, sample: int) -> dict[str, Any]:
    """Fill one structure with n contacts; how much memory it took (bytes)."""
    import tracemalloc

    service, states = sample_states(sample) if variant != "dict" else (None, [])
    step = SPREAD if variant == "spread" else 1
    scores = [(i % 9973) * 0.37 for i in range(sample)]  # a few floats to cycle through, as distinct objects below
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
    before = rss()
    started = time.perf_counter()
    holder: Any
    if variant == "dict":
        holder = {}
        for i in range(1, n + 1):
            holder[i] = scores[i % sample] + 0.0 * i  # a new float object per contact, as real scores are
    elif variant in ("book", "spread"):
        holder = service.book  # type: ignore[union-attr]
        for i in range(1, n + 1):
            holder.put(_copy(states[i % sample], i * step))
    else:
        holder = {i: _copy(states[i % sample], i) for i in range(1, n + 1)}
    fill_s = time.perf_counter() - started
    gc.collect()
    grown = rss() - before
    traced = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else None
    out: dict[str, Any] = {"variant": variant, "n": n, "mode": mode, "bytes": traced if traced is not None else grown,
                           "fill_s": fill_s}
    if variant in ("book", "spread"):
        out["parts"] = book_parts(holder)
        out["with_caps"] = len(holder._caps)
        out["with_totals"] = len(holder._totals)
    assert len(holder) == n
    return out


def book_parts(book: Any) -> dict[str, int]:
    """Bytes per part of a ScoreBook (containers and the objects they alone hold; int keys counted once)."""
    rows = book._rows.nbytes()
    arrays = sum(a.buffer_info()[1] * a.itemsize for a in (book._model, book._mask, book._behavior, book._penalty, book._active, book._clock, book._packed_totals))
    caps = sys.getsizeof(book._caps) + sum(
        sys.getsizeof(c) + sys.getsizeof(c.earned) + (sys.getsizeof(c.per_item) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in c.per_item.items())
                                                      if c.per_item else 0) for c in book._caps.values())
    totals = sys.getsizeof(book._totals) + sum(sys.getsizeof(t) for t in book._totals.values())
    return {"row index (id → row)": rows, "packed arrays": arrays, "cap counters (today)": caps, "max_times totals (unpacked)": totals}


def run_one(variant: str, n: int, mode: str, sample: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.memory", "_measure", variant, str(n), mode, str(sample)]
    proc = subprocess.run(argv, cwd=harness.ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise harness.BenchError(f"{variant} {n} {mode} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_measure":
        print(json.dumps(measure(argv[1], int(argv[2]), argv[3], int(argv[4]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=SUMMARY)
    parser.add_argument("--sizes", default="100000,1000000", help="contact counts, comma-separated")
    parser.add_argument("--sample", type=int, default=2000, help="synthetic contacts replayed for realistic states")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    started = time.monotonic()
    print(f"memory benchmark: {SUMMARY}")
    print(f"  each number from a fresh subprocess; book states cycled from {args.sample:,} synthetic contacts replayed by the scorer")
    # the objects reference only at the smaller sizes: at 1M it costs a quarter of the run
    wanted = [(variant, n, mode) for n in sizes for mode in ("rss", "tracemalloc") for variant in (VARIANTS if mode == "rss" else TRACED)
              if not (variant == "objects" and n > OBJECTS_UP_TO)]
    results: dict[tuple[str, int, str], dict[str, Any]] = {}
    try:
        # Each measurement is a process of its own, whose memory the others do not touch: as many at
        # once as there are cores (mostly CPU: replaying the sample states), to halve the wait.
        with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
            running = {key: pool.submit(run_one, *key, args.sample) for key in wanted}
            for key, future in running.items():
                results[key] = future.result()
    except (harness.BenchError, subprocess.TimeoutExpired) as exc:
        print(f"\nmemory: a measurement failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"\nmemory: could not run: {exc}", file=sys.stderr)
        return 2
    mib = 2**20
    rows = []
    verdicts = []
    def times(a: dict[str, Any], b: dict[str, Any]) -> float:
        return a["bytes"] / b["bytes"] if b["bytes"] else float("inf")

    for n in sizes:
        d, b, o, w = (results.get((v, n, "rss")) for v in VARIANTS)
        assert d is not None and b is not None and w is not None
        dt_, bt = (results[(v, n, "tracemalloc")] for v in TRACED)
        verdicts.append(times(b, d) <= TARGET_RATIO and times(w, d) <= TARGET_RATIO)
        rows.append([f"{n:,}", d["bytes"] / mib, b["bytes"] / mib, times(b, d), w["bytes"] / mib, times(w, d),
                     o["bytes"] / mib if o else "-", times(o, d) if o else "-",
                     times(bt, dt_), b["bytes"] / n, w["bytes"] / n, d["bytes"] / n])
    print()
    print(harness.table(
        ["contacts", "dict MiB", "book MiB", "book × dict", "spread MiB", "spread × dict", "objects MiB", "objects × dict",
         "book × dict (tm)", "book B/contact", "spread B/contact", "dict B/contact"], rows))
    print(f"  book: ids 1…N; spread: ids {SPREAD} apart (a book of the contacts one process scored in a company {SPREAD} times its size)")
    last = results[("book", sizes[-1], "rss")]
    print(f"\n  where the book's bytes go at {sizes[-1]:,} contacts (sys.getsizeof; {last['with_totals']:,} contacts with unpacked "
          f"max_times totals, {last['with_caps']:,} with today's cap counters):")
    total = sum(last["parts"].values())
    print(harness.table(["part", "MiB", "share", "B/contact"],
                        [[k, v / mib, f"{v / total * 100:.0f} %", v / sizes[-1]] for k, v in last["parts"].items()]))
    ok = all(verdicts)
    for n, good in zip(sizes, verdicts):
        d, b, w = (results[(v, n, "rss")] for v in ("dict", "book", "spread"))
        print(f"  {n:>9,}: book {times(b, d):.2f}× the dict, ids {SPREAD} apart {times(w, d):.2f}× (RSS growth; target ≤ "
              f"{TARGET_RATIO}×)  {harness.verdict(good)}")
    elapsed = time.monotonic() - started
    print(f"\n  whole benchmark {elapsed:.0f} s")
    path = harness.write_results(NAME, {
        "benchmark": NAME, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sample": args.sample,
        "results": [v for v in results.values()], "target_ratio": TARGET_RATIO, "pass": ok, "elapsed_s": round(elapsed, 1),
    })  # fmt: skip
    print(f"  results: {path.relative_to(harness.ROOT)}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
