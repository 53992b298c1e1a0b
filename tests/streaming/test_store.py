"""The SQLite store, and permanent mountpoints surviving a registry restart."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from sfu.streaming.model import ErrorCode, StreamingError, parse_mountpoint, parse_patch
from sfu.streaming.registry import Credentials, MountpointRegistry
from sfu.streaming.store import SCHEMA_VERSION, MountpointStore, StoreError
from tests.streaming import make_media_file

ADMIN = Credentials(admin_key="k")
PORTS: dict[str, Any] = {"rtp_port_min": 46100, "rtp_port_max": 46119}


def test_memory_store_saves_loads_and_deletes() -> None:
    store = MountpointStore(":memory:")
    assert store.version == SCHEMA_VERSION == 1
    store.save(2, {"b": 2})
    store.save(1, {"a": 1})
    store.save(2, {"b": 3})  # replaces
    rows = store.load_all()
    assert [(r.id, r.config) for r in rows] == [(1, {"a": 1}), (2, {"b": 3})]
    assert rows[0].created_at.endswith("Z")
    store.delete(1)
    store.delete(99)  # absent: nothing happens
    assert store.ids() == {2}
    store.close()


def test_file_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "mp.db"
    store = MountpointStore(path)
    store.save(5, {"name": "kept"})
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds secrets
    again = MountpointStore(path)
    assert [(r.id, r.config) for r in again.load_all()] == [(5, {"name": "kept"})]
    assert again.version == SCHEMA_VERSION
    again.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mp.db"
    MountpointStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        MountpointStore(path)


def test_missing_directory_and_garbage_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        MountpointStore(tmp_path / "nope" / "mp.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=str(garbage)):
        MountpointStore(garbage)


def test_an_unreadable_row_loads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "mp.db"
    MountpointStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO mountpoints (id, config) VALUES (3, '{not json')")
    assert [(r.id, r.config) for r in MountpointStore(path).load_all()] == [(3, None)]


# -- permanence through the registry ------------------------------------------------------


def rtp_body(**extra: Any) -> dict[str, Any]:
    return {
        "media": [
            {"codec": "VP8", "source": {"type": "rtp"}},
            {"codec": "opus", "source": {"type": "rtp", "port": 46150}},
        ],
        **extra,
    }


async def started(path: Path, **kwargs: Any) -> MountpointRegistry:
    registry = MountpointRegistry(admin_key="k", store=MountpointStore(path), **PORTS, **kwargs)
    assert await registry.start() == []
    return registry


async def stop(registry: MountpointRegistry) -> None:
    await registry.close()
    assert registry.store is not None
    registry.store.close()


async def test_permanent_mountpoints_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "mp.db"
    webm = make_media_file(tmp_path / "clip.webm")
    first = await started(db)
    kept = await first.create(
        parse_mountpoint(
            rtp_body(name="cam", secret="s", pin="p", metadata={"x": [1]}, permanent=True)
        ),
        ADMIN,
    )
    paused = await first.create(
        parse_mountpoint(
            {
                "permanent": True,
                "media": [
                    {"codec": "opus", "source": {"type": "file", "path": str(webm)}},
                    {"codec": "VP8", "source": {"type": "file", "path": str(webm)}},
                ],
            }
        ),
        ADMIN,
    )
    await first.disable(paused.id, ADMIN)
    gone = await first.create(
        parse_mountpoint(
            {"id": 77, **rtp_body()} | {"media": [{"codec": "VP8", "source": {"type": "rtp"}}]}
        ),
        ADMIN,
    )
    assert not gone.permanent
    await stop(first)

    second = await started(db)
    assert [m.id for m in second.mountpoints()] == sorted([kept.id, paused.id])
    restored = second.get(kept.id)
    assert restored == kept  # same id, name, secret, pin, metadata, allocated port
    assert restored.rtp_ports()[0] >= 46100 and restored.rtp_ports()[1] == 46150
    assert second.info(kept.id, ADMIN)["state"] == "running"
    assert not second.get(paused.id).enabled
    assert second.info(paused.id, ADMIN)["state"] == "stopped"
    assert second.file_streams(paused.id) == (1, 0)
    # The restored ports are taken: a new mountpoint cannot claim them.
    with pytest.raises(StreamingError) as info:
        await second.create(
            parse_mountpoint(
                {"media": [{"codec": "VP8", "source": {"type": "rtp", "port": 46150}}]}
            ),
            ADMIN,
        )
    assert info.value.code is ErrorCode.CONFLICT
    await stop(second)


async def test_edit_and_destroy_reach_the_database(tmp_path: Path) -> None:
    db = tmp_path / "mp.db"
    registry = await started(db)
    mp = await registry.create(parse_mountpoint(rtp_body(permanent=True)), ADMIN)
    other = await registry.create(
        parse_mountpoint({"media": [{"codec": "opus", "source": {"type": "test"}}]}), ADMIN
    )
    await registry.edit(mp.id, parse_patch({"description": "edited"}), ADMIN)
    await registry.edit(other.id, parse_patch({"permanent": True}), ADMIN)
    assert registry.store is not None
    stored = {r.id: r.config for r in registry.store.load_all()}
    assert stored[mp.id]["description"] == "edited"
    assert other.id in stored
    await registry.edit(other.id, parse_patch({"permanent": False}), ADMIN)
    await registry.destroy(mp.id, ADMIN)
    assert registry.store.ids() == set()
    await stop(registry)
    again = await started(db)
    assert again.mountpoints() == []
    await stop(again)


async def test_a_stored_mountpoint_that_no_longer_validates_is_skipped(tmp_path: Path) -> None:
    db = tmp_path / "mp.db"
    webm = make_media_file(tmp_path / "clip.webm")
    registry = await started(db)
    mp = await registry.create(
        parse_mountpoint(
            {
                "permanent": True,
                "media": [{"codec": "VP8", "source": {"type": "file", "path": str(webm)}}],
            }
        ),
        ADMIN,
    )
    await stop(registry)
    webm.unlink()
    store = MountpointStore(db)
    store.save(12, {"id": 12, "media": "garbage"})
    again = MountpointRegistry(admin_key="k", store=store, **PORTS)
    problems = {p.field: p.reason for p in await again.start()}
    assert "does not exist" in problems[f"mountpoint {mp.id}"]
    assert 'media: "garbage" is not a list' in problems["mountpoint 12"]
    assert again.mountpoints() == []
    assert store.ids() == {mp.id, 12}  # kept for the operator to fix
    with pytest.raises(StreamingError, match="already exists"):
        await again.create(parse_mountpoint({"id": 12, **rtp_body()}), ADMIN)
    await stop(again)


async def test_permanent_needs_a_store() -> None:
    registry = MountpointRegistry(**PORTS)
    await registry.start()
    with pytest.raises(StreamingError) as info:
        await registry.create(parse_mountpoint(rtp_body(permanent=True)), Credentials())
    assert info.value.code is ErrorCode.CONFLICT
    assert "keeps no database" in info.value.reason
    assert registry.ports.in_use() == {}
