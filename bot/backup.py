"""`python -m bot backup` / `restore`: consistent copies of the database.

SQLite: the online backup API copies a consistent snapshot while the server keeps running (readers
and the writer are not stopped), then the copy is checked with `PRAGMA integrity_check`. Restore
refuses a file that fails the check and keeps the replaced database beside it (`.before-restore`).
PostgreSQL: `pg_dump --format=custom` / `pg_restore --clean`, which must be on PATH.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url


class BackupError(Exception):
    pass


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("database.url has no SQLite file")
    return Path(database)


def _check(path: Path) -> None:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = con.execute("PRAGMA integrity_check").fetchone()[0]
            con.execute("SELECT count(*) FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: not a usable Beacon database ({exc})") from None
    if result != "ok":
        raise BackupError(f"{path}: integrity check failed: {result}")


def backup(url: str, dest: Path) -> Path:
    """Write a consistent copy of the database to `dest` (a file, or a folder for a timestamped name)."""
    if make_url(url).get_backend_name() == "postgresql":
        return _pg_dump(url, dest)
    source = _sqlite_path(url)
    if not source.exists():
        raise BackupError(f"{source}: database file not found")
    if dest.is_dir():
        import datetime as dt

        dest = dest / f"beacon-{dt.datetime.now():%Y%m%d-%H%M%S}.db"
    tmp = dest.with_name(dest.name + ".partial")
    src = sqlite3.connect(source, timeout=30)
    out = sqlite3.connect(tmp)
    try:
        try:
            src.backup(out, pages=1024)
        except sqlite3.OperationalError as exc:
            raise BackupError(f"backup failed: {exc}") from None
    finally:
        out.close()
        src.close()
    _check(tmp)
    tmp.replace(dest)
    return dest


def restore(url: str, source: Path) -> Path:
    """Replace the database with a backup (server stopped). The old contents are kept as .before-restore.

    Both copies go through SQLite's backup API, which writes through the target's journal (WAL
    included), so no file is swapped under a connection's feet."""
    if make_url(url).get_backend_name() == "postgresql":
        return _pg_restore(url, source)
    if not source.exists():
        raise BackupError(f"{source}: backup file not found")
    _check(source)
    target = _sqlite_path(url)
    if target.exists():
        _copy(target, target.with_name(target.name + ".before-restore"))
    _copy(source, target)
    _check(target)
    return target


def _copy(source: Path, dest: Path) -> None:
    src = sqlite3.connect(source, timeout=30)
    out = sqlite3.connect(dest, timeout=30)
    try:
        src.backup(out)
    except sqlite3.OperationalError as exc:
        raise BackupError(f"copy {source} → {dest} failed: {exc} (is the server still running?)") from None
    finally:
        out.close()
        src.close()


def _pg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(cmd: list[str]) -> None:
    if shutil.which(cmd[0]) is None:
        raise BackupError(f"{cmd[0]} is not installed (needed for PostgreSQL backups)")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{cmd[0]} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")


def _pg_dump(url: str, dest: Path) -> Path:
    if dest.is_dir():
        import datetime as dt

        dest = dest / f"beacon-{dt.datetime.now():%Y%m%d-%H%M%S}.pgdump"
    _run(["pg_dump", "--format=custom", f"--file={dest}", _pg_dsn(url)])
    return dest


def _pg_restore(url: str, source: Path) -> Path:
    if not source.exists():
        raise BackupError(f"{source}: backup file not found")
    _run(["pg_restore", "--clean", "--if-exists", "--no-owner", f"--dbname={_pg_dsn(url)}", str(source)])
    return source
