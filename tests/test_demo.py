"""`python -m bot demo --once` as a subprocess: the scenario plays end to end against the simulator."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, bot_cmd, free_port, run_cli

pytestmark = pytest.mark.slow


def demo_config(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "demo.toml"
    text = (ROOT / "demo" / "config.toml").read_text(encoding="utf-8")
    db = tmp_path / "state" / "beacon.db"
    config.write_text(text.replace("sqlite+aiosqlite:///demo/state/beacon.db", f"sqlite+aiosqlite:///{db}"), encoding="utf-8")
    return config, db


def test_demo_plays_the_scenario(tmp_path: Path) -> None:
    config, db = demo_config(tmp_path)
    port, sim_port = free_port(), free_port()
    result = run_cli("--config", str(config), "demo", "--once", "--port", str(port), "--sim-port", str(sim_port), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Sample content library imported" in out and "created 18" in out
    # Half a year of the configured team's history, so the dashboards show a working team.
    assert "Half a year of the team's history, so the dashboards have something to show: 400 customers and leads from 4 channels, 6,000 events" in out
    assert "answer 200: 'demo-echo-1234'" in out
    assert "bot → rep1: 我是 Beacon 销售助手" in out
    assert f"http://127.0.0.1:{port}/l/" in out
    assert "landing page: HTTP 200" in out
    # The score breakdown: each line is one ledger reason, naming its points once.
    breakdown = [line for line in out.splitlines() if "《" in line and re.search(r"[+-]\d", line)]
    assert any("预约演示" in line and line.rstrip().endswith("+30") for line in breakdown), breakdown
    assert all(len(re.findall(r"(?<![\w.])[+-]\d+(?:\.\d+)?", line)) == 1 for line in breakdown), breakdown
    # The customer met through the share is named from his WeCom profile before the alert names him.
    assert "it fetched his WeCom profile: 陈总, 副总经理 @ 华东精密制造有限公司" in out
    assert "alert card: 陈总：点击「预约演示」" in out
    assert re.search(r"task #\d+: 跟进 MQL：陈总", out), out
    # Reaching MQL enrolled him in the sample MQL playbook ([sop] folder, loaded as `serve` loads it).
    assert re.search(r"SOP playbook 「MQL 跟进」: step \d 「[^」]+」 due \d\d-\d\d \d\d:\d\d", out), out
    # The reps' customers from before Beacon: imported, owned, named as the rep calls them (the remark).
    assert "6 customers in WeCom: 5 new contacts" in out
    assert "刘建国-苏州精工 · 苏州精工机械有限公司 · owner rep1" in out and "王磊 · 宁波海天注塑科技 · owner rep2" in out
    assert "Where to look" in out and f"http://127.0.0.1:{port}/healthz" in out
    assert db.exists()
    with sqlite3.connect(db) as con:
        owners = dict(con.execute("SELECT owner_userid, COUNT(*) FROM contacts WHERE external_userid LIKE 'wmSyn%' GROUP BY 1"))
        channels = [name for (name,) in con.execute("SELECT name FROM channels ORDER BY id")]
        stages = dict(con.execute("SELECT stage, COUNT(*) FROM contacts GROUP BY 1"))
    assert sum(owners.values()) == 400
    assert set(owners) - {None} == {"rep1", "rep2", "rep3", "rep4"}  # the configured reps, no synthetic ones (some leads unowned)
    assert channels == ["展会", "线下沙龙", "公众号", "直播"]
    assert stages.get("customer", 0) > 0 and stages.get("mql", 0) > 0 and stages.get("sql", 0) > 0
    shutil.rmtree(tmp_path / "state")


def test_the_serving_demo_runs_the_scheduled_jobs_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    config, db = demo_config(tmp_path)
    port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
    proc = subprocess.Popen(bot_cmd("--config", str(config), "demo", "--port", str(port), "--sim-port", str(sim_port)), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(lines) + proc.stderr.read()  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("Serving until Ctrl-C (scheduled jobs running)"):
                break
        # The scheduler's minute tick claims its run keys as it fires; wait for one.
        with sqlite3.connect(db) as con:
            for _ in range(150):
                if con.execute("SELECT COUNT(*) FROM job_runs WHERE job_id = 'sop-tick' AND run_key != 'sop-tick:demo'").fetchone()[0]:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError("no scheduled sop-tick ran within 75 s")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert '"demo": "stopped"' in out
