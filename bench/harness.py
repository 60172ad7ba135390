"""What every Beacon benchmark needs: pinned processes, a load generator, A/B rounds, a table.

The method (see shared/design/PERFORMANCE.md): the server under test on one core, the load generator
on the other, short runs, the variants alternated round by round (A B, B A, A B, ...) so that drift
in the machine hits both alike, the median of the rounds, and always a ratio to a baseline measured in
the same session, never an absolute number from another day.

Typical use in a benchmark module (bench/links.py is a complete one)::

    plan, tool = CpuPlan.detect(), load_tool()

    def run_bare(n: int) -> LoadResult:
        port = free_port()
        argv = [sys.executable, "-m", "bench.bare_server", "--port", str(port), "--page", str(page)]
        with Server.start("bare", argv, core=plan.server, ready_url=f"http://127.0.0.1:{port}/l/x", log=tmp / "bare.log"):
            return run_load(f"http://127.0.0.1:{port}", plan=plan, tool=tool, wrk_script=SCRIPT,
                            script_args=[...], duration_s=6, active_s=5)

    rounds = alternate({"bare": run_bare, "app": run_app}, rounds=3)
    bare, app = median_of(rounds["bare"]), median_of(rounds["app"])
    print(table(["variant", "req/s"], [["bare", bare["rps"]], ["app", app["rps"]]]))

A new benchmark: a module with NAME, SUMMARY and main(argv) -> int, listed in bench/__main__.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
WRK = shutil.which("wrk")
TASKSET = shutil.which("taskset")


class BenchError(RuntimeError):
    """The benchmark could not be run as designed (a server did not start, a tool failed)."""


# --- cores -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuPlan:
    """Which core the server gets and which the load generator gets (None: not pinned)."""

    server: int | None
    load: int | None

    @classmethod
    def detect(cls) -> "CpuPlan":
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return cls(None, None)
        return cls(cores[0], cores[1])

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (fewer than 2 cores): server and load share the CPU"
        return f"server on core {self.server}, load generator on core {self.load}"


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """`argv` run on one core: through taskset when present (so every thread the program starts
    later inherits the mask); otherwise the caller pins the child after it starts (see Server)."""
    if core is None or TASKSET is None:
        return list(argv)
    return [TASKSET, "-c", str(core), *argv]


def pin_pid(pid: int, core: int | None) -> None:
    if core is not None and TASKSET is None:
        os.sched_setaffinity(pid, {core})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_load() -> float:
    """The 1-minute load average: above ~0.5 before a run, something else is using the cores."""
    return os.getloadavg()[0]


# --- servers ---------------------------------------------------------------------------------------


def wait_http(url: str, *, timeout_s: float, proc: subprocess.Popen[bytes] | None = None, headers: dict[str, str] | None = None) -> None:
    """Poll `url` until it answers 2xx; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode} before {url} answered")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise BenchError(f"{url} did not answer within {timeout_s:.0f} s ({last})")


@dataclass
class Server:
    """A server process under test: started pinned, waited for, stopped with SIGTERM."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    _log_file: Any = field(repr=False, default=None)
    returncode: int | None = None
    stop_seconds: float | None = None
    timed_out: bool = False

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        *,
        core: int | None,
        ready_url: str,
        log: Path,
        env: dict[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> "Server":
        log_file = open(log, "ab")
        proc = subprocess.Popen(
            pinned(argv, core), cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT
        )
        pin_pid(proc.pid, core)
        server = cls(name, proc, log, log_file)
        try:
            wait_http(ready_url, timeout_s=timeout_s, proc=proc)
        except BaseException:
            server.stop(signal.SIGKILL, timeout_s=5)
            raise BenchError(f"{name} did not start; its log {log}:\n{tail(log)}") from None
        return server

    def stop(self, sig: int = signal.SIGTERM, *, timeout_s: float = 20.0) -> int:
        """Ask the server to stop (graceful on SIGTERM) and wait; SIGKILL after `timeout_s`
        (then `timed_out` is set and the exit status is -9)."""
        if self.returncode is None:
            started = time.monotonic()
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.returncode = self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                # reported, not raised: the caller's checks show the exit status (-9) and the time
                self.timed_out = True
                self.proc.kill()
                self.returncode = self.proc.wait()
            finally:
                self.stop_seconds = time.monotonic() - started
                if self._log_file is not None:
                    self._log_file.close()
        return self.returncode

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- profiling -------------------------------------------------------------------------------------


def start_py_spy(py_spy: str, pid: int, *, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Sample `pid` (all threads) for `seconds` into a py-spy "raw" (collapsed stacks) file. py-spy is not
    a dependency: install it anywhere (e.g. a throwaway venv) and pass its path. It needs ptrace."""
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
            "--format", "raw", "--output", str(out), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize_stacks(path: Path, *, marks: Sequence[str], top: int = 12) -> str:
    """Where the samples of a collapsed-stacks file went: the share of samples whose stack passes
    through each of `marks` (substrings of frame names: inclusive time), then the top leaf frames."""
    from collections import Counter

    total, through, leaves = 0, Counter[str](), Counter[str]()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaves[frames[-1].strip()] += n
        for mark in marks:
            if any(mark in f for f in frames):
                through[mark] += n
    if not total:
        return "  (no samples)"
    lines = [f"  {total:,} samples (busy threads only); through:"]
    lines += [f"    {through[m] / total * 100:5.1f}%  {m}" for m in marks]
    lines.append("  top leaf frames:")
    lines += [f"    {n / total * 100:5.1f}%  {f}" for f, n in leaves.most_common(top)]
    return "\n".join(lines)


# --- load ------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One load run. `seconds` is the time load was offered (the quiet tail excluded)."""

    tool: str
    requests: int
    seconds: float
    ok_2xx: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_s: float | None = None  # the server's CPU time during the run, when the caller measured it

    @property
    def cpu_us_per_request(self) -> float | None:
        return self.server_cpu_s / self.requests * 1e6 if self.server_cpu_s is not None and self.requests else None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        cpu = self.cpu_us_per_request
        return {**asdict(self), "rps": round(self.rps, 1), "cpu_us_per_request": None if cpu is None else round(cpu, 1)}


def parse_bench_json(stdout: str, *, tool: str, seconds: float) -> LoadResult:
    """Read the `BENCH_JSON {...}` line that the wrk scripts' done() and bench.loadgen print."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line[len("BENCH_JSON "):])
            break
    else:
        raise BenchError(f"{tool} printed no BENCH_JSON line:\n{stdout[-2000:]}")
    errors = data.get("errors", {})
    lat = data["latency_us"]
    return LoadResult(
        tool=tool,
        requests=int(data["requests"]),
        seconds=seconds,
        ok_2xx=int(data["ok_2xx"]),
        non_2xx=int(data["non_2xx"]),
        socket_errors=sum(int(errors.get(k, 0)) for k in ("connect", "read", "write", "timeout")),
        p50_ms=float(lat["p50"]) / 1000,
        p90_ms=float(lat["p90"]) / 1000,
        p99_ms=float(lat["p99"]) / 1000,
        max_ms=float(lat["max"]) / 1000,
    )


def load_tool(prefer: str = "auto") -> str:
    """'wrk' when installed (or asked for), else 'aiohttp' (bench.loadgen: numbers not comparable)."""
    if prefer == "aiohttp":
        return "aiohttp"
    if WRK is None:
        if prefer == "wrk":
            raise BenchError("wrk is not installed (apt-get install wrk)")
        return "aiohttp"
    return "wrk"


def run_load(
    base_url: str,
    *,
    plan: CpuPlan,
    tool: str,
    wrk_script: Path,
    script_args: Sequence[str],
    duration_s: int,
    active_s: float,
    connections: int = 32,
    loadgen_args: Sequence[str] = (),
) -> LoadResult:
    """Offer load to `base_url` for `duration_s` seconds (load only during the first `active_s`).

    wrk: one thread, `connections` keep-alive connections, the Lua script decides the requests and
    prints BENCH_JSON. aiohttp: `python -m bench.loadgen` with `loadgen_args`, same output line.
    """
    if tool == "wrk":
        argv = [
            WRK or "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s",
            "-s", str(wrk_script), base_url, "--", *script_args,
        ]  # fmt: skip
    else:
        argv = [
            sys.executable, "-m", "bench.loadgen", "--url", base_url, "--connections", str(connections),
            "--active", str(active_s), *loadgen_args,
        ]  # fmt: skip
    proc = subprocess.run(pinned(argv, plan.load), cwd=ROOT, capture_output=True, text=True, timeout=duration_s + 30)
    if proc.returncode != 0:
        raise BenchError(f"{tool} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse_bench_json(proc.stdout, tool=tool, seconds=active_s)


# --- rounds and reporting --------------------------------------------------------------------------


def alternate(variants: dict[str, Callable[[int], Any]], *, rounds: int = 3, deadline: float | None = None) -> dict[str, list[Any]]:
    """Run each variant once per round, reversing the order every other round (A B, B A, A B):
    slow drift in the machine then falls on both sides alike. Stops early past `deadline`
    (a time.monotonic() value) once every variant has at least one result."""
    names = list(variants)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for n in range(rounds):
        if deadline is not None and n > 0 and time.monotonic() > deadline:
            print(f"  (time budget spent: stopping after {n} round(s))", flush=True)
            break
        for name in names if n % 2 == 0 else reversed(names):
            results[name].append(variants[name](n))
    return results


def median_of(results: Sequence[LoadResult]) -> dict[str, float]:
    """Median requests/s, p50, p99 and server CPU per request over rounds (each median on its own)."""
    cpu = [c for c in (r.cpu_us_per_request for r in results) if c is not None]
    return {
        "rps": statistics.median(r.rps for r in results),
        "p50_ms": statistics.median(r.p50_ms for r in results),
        "p99_ms": statistics.median(r.p99_ms for r in results),
        "cpu_us_per_request": statistics.median(cpu) if cpu else float("nan"),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str], numeric: Sequence[bool]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    numeric_cols = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    out = [line(list(headers), numeric_cols), line(["-" * w for w in widths], numeric_cols)]
    out += [line(r, numeric_cols) for r in cells]
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def write_results(name: str, data: dict[str, Any]) -> Path:
    """bench/results/<name>.json (gitignored): the numbers of the last run, for comparing by hand."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class timed:
    """`with timed("what"):` prints "  what ... 1.2 s" around a setup step."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> "timed":
        self.start = time.monotonic()
        print(f"  {self.label} ...", end="", flush=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        print(f" {time.monotonic() - self.start:.1f} s", flush=True)


def print_round(n: int, name: str, r: LoadResult, *, name_width: int = 6) -> None:
    """One load run's line: throughput, latency, server CPU per request and what went wrong."""
    cpu = r.cpu_us_per_request
    print(
        f"  round {n + 1} {name:<{name_width}} {r.rps:>9,.0f} req/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:8.2f} ms  "
        f"server CPU {cpu or 0:6.0f} µs/request  ({r.requests:,} requests, {r.non_2xx} non-2xx, "
        f"{r.socket_errors} socket errors)",
        flush=True,
    )


def bot(config: Path, *args: str) -> list[str]:
    """argv of `python -m bot --config CONFIG ARGS...` (the app as an operator runs it)."""
    return [sys.executable, "-m", "bot", "--config", str(config), *args]


def run_checked(argv: list[str], what: str, timeout_s: float = 60) -> str:
    """Run a setup command from the project root; BenchError with its output tail if it fails."""
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return proc.stdout


BENCH_ADMIN = "bench-admin-token"


def beacon_config(title: str, *, port: int, db_url: str, wecom: dict[str, Any] | None = None,
                  members: Sequence[tuple[str, str]] = (), **sections: dict[str, Any]) -> str:
    """A Beacon config file for a benchmark run: its own port and database, the scheduler off, WeCom
    pointed at a closed port unless `wecom` says otherwise (nothing may leave the machine), warnings
    only in the log. `sections` adds or overrides keys ({"inbox": {"workers": 2}}); `members` are
    (userid, name) pairs of reps."""
    config: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}",
                   "admin_token": BENCH_ADMIN, "secret_key": "bench-secret-key-not-for-production"},
        "database": {"url": db_url},
        "wecom": {"api_base": "http://127.0.0.1:9", **(wecom or {})},
        "scheduler": {"enabled": False},
        "logging": {"level": "WARNING", "format": "text"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    lines = [f"# {title} (generated by the benchmark)"]
    for name, values in config.items():
        lines += ["", f"[{name}]", *(f"{key} = {_toml_value(value)}" for key, value in values.items())]
    for userid, display in members:
        lines += ["", "[[team.members]]", f"userid = {_toml_value(userid)}", f"name = {_toml_value(display)}", 'role = "rep"']
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    """A scalar as TOML: booleans and numbers bare, strings as basic strings (JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)
