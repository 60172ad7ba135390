"""`python -m bench [NAME [ARGS...]]`: run one benchmark (with its own options), or all of them.

A benchmark is a module in this package with NAME, SUMMARY and `main(argv) -> int` (exit status:
0 ran, 1 ran and found a problem, 2 could not run). Add a new one to BENCHMARKS below.
"""

from __future__ import annotations

import importlib
import sys

# name -> module; run in this order by `python -m bench` with no name
BENCHMARKS = {
    "links": "bench.links",
    "rescore": "bench.rescore",
    "callbacks": "bench.callbacks",
    "latency": "bench.latency",
    "nightly": "bench.nightly",
    "memory": "bench.memory",
}


def usage() -> str:
    lines = ["usage: python -m bench [NAME [OPTIONS...]]   (no NAME: every benchmark, default options)", "", "benchmarks:"]
    for name, module in BENCHMARKS.items():
        lines.append(f"  {name:<10} {importlib.import_module(module).SUMMARY}")
    lines.append("\n`python -m bench NAME --help` lists a benchmark's options.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "help", "list"):
        print(usage())
        return 0
    if argv:
        name, rest = argv[0], argv[1:]
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
            return 2
        return importlib.import_module(BENCHMARKS[name]).main(rest)
    worst = 0
    for name, module in BENCHMARKS.items():
        print(f"=== {name}", flush=True)
        worst = max(worst, importlib.import_module(module).main([]))
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
