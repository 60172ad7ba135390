"""Fallback load generator for POST benchmarks on machines without wrk (bench/callbacks.lua's twin).

`python -m bench.postgen --url URL --requests FILE --active SECONDS [--connections 32]`: FILE holds one
request per line, "<path with query>\t<body>"; lines are sent strictly in file order, round-robin over
the connections (wrapping around at the end), each as POST with Content-Type text/xml. Prints the same
`BENCH_JSON {...}` line as the wrk scripts, with "sent": the number of lines taken. Python on one core
saturates far earlier than wrk: its numbers (and the ratios) are NOT comparable with wrk runs; use them
only to see that a benchmark works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp


def read_requests(path: Path) -> list[tuple[str, bytes]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        target, tab, body = line.partition("\t")
        if tab:
            out.append((target, body.encode()))
    return out


async def run(url: str, requests: list[tuple[str, bytes]], *, connections: int, active_s: float) -> dict:
    latencies: list[float] = []
    counts = {"ok_2xx": 0, "non_2xx": 0, "errors": 0, "sent": 0}
    connector = aiohttp.TCPConnector(limit=connections)
    started = time.monotonic()
    stop_at = started + active_s
    headers = {"Content-Type": "text/xml"}
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                target, body = requests[counts["sent"] % len(requests)]
                counts["sent"] += 1
                t0 = time.perf_counter()
                try:
                    async with http.post(url + target, data=body, headers=headers) as resp:
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
        "sent": counts["sent"],
        "duration_us": int(duration * 1e6),
        "ok_2xx": counts["ok_2xx"],
        "non_2xx": counts["non_2xx"],
        "errors": {"connect": 0, "read": counts["errors"], "write": 0, "status": counts["non_2xx"], "timeout": 0},
        "latency_us": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": latencies[-1] * 1e6 if latencies else 0.0},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.postgen")
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--requests", type=Path, required=True, help='file of "<path>\\t<body>" lines, sent in order')
    parser.add_argument("--active", type=float, required=True, help="seconds of load")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    result = asyncio.run(
        run(args.url.rstrip("/"), read_requests(args.requests), connections=args.connections, active_s=args.active)
    )
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
