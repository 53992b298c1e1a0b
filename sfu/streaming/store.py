"""Permanent mountpoints in an embedded SQLite file, so they survive a restart.

One row per mountpoint: its id and its configuration as JSON (``Mountpoint.to_admin_json()``,
secrets included, as Janus keeps them in its configuration file; the file is created mode 0600).
The schema version is SQLite's ``user_version``; opening a file written by a newer version is
refused rather than guessed at. ``":memory:"`` gives a store that lives as long as the object
(tests, or a server that wants no file).

Each call is one short transaction, made on the caller's thread: mountpoints change rarely.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["SCHEMA_VERSION", "MountpointStore", "StoreError", "StoredMountpoint"]

MEMORY: Final = ":memory:"

# _MIGRATIONS[n] takes a database from version n to n + 1.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS mountpoints (
        id INTEGER PRIMARY KEY,
        config TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
        updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
    );
    """,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


class StoreError(Exception):
    """The database cannot be opened, read or written."""


@dataclass(frozen=True)
class StoredMountpoint:
    id: int
    config: Any  # the JSON as stored; the registry validates it like a create body
    created_at: str
    updated_at: str


class MountpointStore:
    """SQLite persistence of permanent mountpoints."""

    def __init__(self, path: str | os.PathLike[str] = MEMORY) -> None:
        self.path = os.fspath(path)
        memory = self.path == MEMORY
        if not memory and not Path(self.path).parent.is_dir():
            raise StoreError(
                f"{self.path}: the directory {str(Path(self.path).parent)!r} does not exist"
            )
        created = not memory and not Path(self.path).exists()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open ({e})") from None
        try:
            if created:
                os.chmod(self.path, 0o600)
            self._migrate()
        except (sqlite3.Error, OSError) as e:
            self._db.close()
            raise StoreError(f"{self.path}: {e}") from None
        except StoreError:
            self._db.close()
            raise

    @property
    def version(self) -> int:
        row = self._db.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        version = self.version
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this server's "
                f"({SCHEMA_VERSION}); upgrade the server or use another db_path"
            )
        for n in range(version, SCHEMA_VERSION):
            script = f"BEGIN IMMEDIATE;\n{_MIGRATIONS[n]}\nPRAGMA user_version = {n + 1};\nCOMMIT;"
            try:
                self._db.executescript(script)
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def load_all(self) -> Sequence[StoredMountpoint]:
        """Every stored mountpoint, by id. A row whose JSON is unreadable has config None."""
        try:
            rows = self._db.execute(
                "SELECT id, config, created_at, updated_at FROM mountpoints ORDER BY id"
            ).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read ({e})") from None
        out = []
        for mp_id, text, created, updated in rows:
            try:
                config = json.loads(text)
            except (ValueError, TypeError):
                config = None
            out.append(StoredMountpoint(int(mp_id), config, str(created), str(updated)))
        return out

    def save(self, mp_id: int, config: Any) -> None:
        """Insert or replace one mountpoint's configuration."""
        text = json.dumps(config, separators=(",", ":"))
        self._write(
            "INSERT INTO mountpoints (id, config) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET "
            "config = excluded.config, updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')",
            (mp_id, text),
        )

    def delete(self, mp_id: int) -> None:
        """Forget one mountpoint (nothing happens when it is not stored)."""
        self._write("DELETE FROM mountpoints WHERE id = ?", (mp_id,))

    def ids(self) -> set[int]:
        try:
            return {int(r[0]) for r in self._db.execute("SELECT id FROM mountpoints")}
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot read ({e})") from None

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot write ({e})") from None

    def close(self) -> None:
        self._db.close()
