"""Fallback load generator for machines without wrk: the same requests as bench/links.lua, in aiohttp.

`python -m bench.loadgen --url URL --paths FILE --active SECONDS [--connections 32] [--zipf 1.0]`
prints the same `BENCH_JSON {...}` line as the wrk scripts. It is Python on one core, so it saturates
far earlier than wrk: its numbers (and the ratios) are NOT comparable with wrk runs or with
PERFORMANCE.md; use them only to see that a benchmark works.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import string
import time
from pathlib import Path

import aiohttp

PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148 MicroMessenger/8.0.47 NetType/WIFI Language/zh_CN"
)
ALPHABET = string.ascii_letters + string.digits + "-_"


def random_ip(rng: random.Random) -> str:
    """A new client address per request, as a trusted proxy in front of the app would report it."""
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def zipf_picker(n: int, s: float, rng: random.Random):  # type: ignore[no-untyped-def]
    """Rank r (0-based) with weight 1/(r+1)^s."""
    cumulative, total = [], 0.0
    for r in range(n):
        total += 1 / (r + 1) ** s
        cumulative.append(total)
    return lambda: min(bisect.bisect_left(cumulative, rng.random() * total), n - 1)


async def run(url: str, paths: list[str], *, connections: int, active_s: float, zipf: float, cookie: str) -> dict:
    rng = random.Random()
    pick = zipf_picker(len(paths), zipf, rng)
    latencies: list[float] = []
    counts = {"ok_2xx": 0, "non_2xx": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=connections)
    started = time.monotonic()
    stop_at = started + active_s
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                visitor = "".join(rng.choice(ALPHABET) for _ in range(24))
                headers = {"User-Agent": PHONE_UA, "Cookie": f"{cookie}={visitor}", "X-Forwarded-For": random_ip(rng)}
                t0 = time.perf_counter()
                try:
                    async with http.get(url + paths[pick()], headers=headers, allow_redirects=False) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                counts["ok_2xx" if 200 <= status < 300 else "non_2xx"] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    duration = time.monotonic() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e6 if latencies else 0.0

    return {
        "requests": len(latencies),
        "duration_us": int(duration * 1e6),
        "ok_2xx": counts["ok_2xx"],
        "non_2xx": counts["non_2xx"],
        "errors": {"connect": 0, "read": counts["errors"], "write": 0, "status": counts["non_2xx"], "timeout": 0},
        "latency_us": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": latencies[-1] * 1e6 if latencies else 0.0},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--paths", type=Path, required=True, help="file of request paths, most popular first")
    parser.add_argument("--active", type=float, required=True, help="seconds of load")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--cookie", default="bcn_v", help="visitor cookie name (a new random value per request)")
    args = parser.parse_args(argv)
    paths = [line.strip() for line in args.paths.read_text().splitlines() if line.strip()]
    result = asyncio.run(
        run(args.url.rstrip("/"), paths, connections=args.connections, active_s=args.active, zipf=args.zipf, cookie=args.cookie)
    )
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
