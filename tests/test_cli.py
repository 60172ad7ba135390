"""The command line as a subprocess: exit codes, messages, migrate idempotency."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_cli


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[wecom]\nencoding_aes_key = "tooshort"\n')
    result = run_cli("--config", str(cfg), "migrate")
    assert result.returncode == 2
    assert result.stderr.strip() == "config error: wecom.encoding_aes_key: must be 43 characters (got 8)"


def test_env_override_is_validated(tmp_path: Path) -> None:
    result = run_cli("migrate", env={"BEACON_SERVER_PORT": "http"})
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_config_from_env_var(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nbogus = 1\n")
    result = run_cli("migrate", env={"BEACON_CONFIG": str(cfg)})
    assert result.returncode == 2
    assert "server.bogus: unknown key" in result.stderr


def test_unknown_command_is_usage_error() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_migrate_twice_is_safe(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    for _ in range(2):
        result = run_cli("migrate", env={"BEACON_DATABASE_URL": url})
        assert result.returncode == 0, result.stderr
        assert "newest schema revision" in result.stdout
    import sqlite3

    con = sqlite3.connect(tmp_path / "x.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
