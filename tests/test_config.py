"""Settings: precedence, env overrides, validation naming the key; example config kept in sync."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, config_path, load_settings

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file() -> None:
    s = load_settings(None, environ={})
    assert s.server.port == 8080
    assert s.database.url.startswith("sqlite+aiosqlite")
    assert s.scheduler.timezone == "Asia/Shanghai"


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9000\n[wecom]\nsecret = "from-file"\n')
    s = load_settings(path, environ={"BEACON_WECOM_SECRET": "from-env", "BEACON_SERVER_PORT": "9100"})
    assert s.wecom.secret == "from-env"
    assert s.server.port == 9100


@pytest.mark.parametrize(
    ("text", "env", "names"),
    [
        ("[server]\nprot = 1\n", {}, "server.prot: unknown key"),
        ("[nope]\nx = 1\n", {}, "nope: unknown key"),
        ('[server]\nport = "8080"\n', {}, "server.port"),
        ('[wecom]\nencoding_aes_key = "short"\n', {}, "wecom.encoding_aes_key: must be 43 characters (got 5)"),
        ("", {"BEACON_SERVER_PORT": "eighty"}, "server.port"),
        ("", {"BEACON_SERVER_PROT": "1"}, "BEACON_SERVER_PROT: unknown setting"),
        ('[scheduler]\ntimezone = "Mars/Base"\n', {}, "scheduler.timezone"),
        ('[database]\nurl = "mysql://x"\n', {}, "database.url"),
        ("[inbox]\noutbox_keep_days = 1\n", {}, "inbox.outbox_keep_days"),
        ("[database]\nslow_statement_ms = -5\n", {}, "database.slow_statement_ms"),
        ("", {"BEACON_PAGES_REPORT_CACHE_S": "soon"}, "pages.report_cache_s"),
        ("[pages]\nreport_stale_s = -1\n", {}, "pages.report_stale_s"),
        ('[[team.members]]\nuserid = "a"\nrole = "boss"\n', {}, "team.members.0.role"),
        ("[server\n", {}, "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), environ=env)
    assert names in str(err.value)
    assert "\n" not in str(err.value)


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_path(None, {}) is None
    (tmp_path / "config.toml").write_text("")
    assert config_path(None, {}) == Path("config.toml")
    assert config_path(None, {"BEACON_CONFIG": "/x.toml"}) == Path("/x.toml")
    assert config_path("/cli.toml", {"BEACON_CONFIG": "/x.toml"}) == Path("/cli.toml")


def _keys(model: type, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            out |= _keys(ann, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def _example_keys(data: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _example_keys(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict) and key == "members":
            out.add(f"{prefix}{key}")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_example_config_documents_every_setting() -> None:
    example = ROOT / "config.example.toml"
    data = tomllib.loads(example.read_text(encoding="utf-8"))
    load_settings(example, environ={})  # it is valid
    assert _example_keys(data) == _keys(Settings)
    # every key carries a comment in the example
    for line in example.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "[")) and "=" in stripped:
            assert "#" in stripped, f"no comment on: {line}"
