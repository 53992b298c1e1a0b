"""A :class:`MountpointStore` that creates its SQLite file only when something is stored.

``sfu serve`` keeps permanent mountpoints in ``[streaming] db_path`` (``sfu-streaming.db`` in
the working directory by default). A server that never stores a permanent mountpoint should
not leave a file behind: the file is opened at start-up only if it exists, and created by the
first ``save``. A directory that does not exist is still an error at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sfu.streaming.store import MEMORY, MountpointStore, StoredMountpoint, StoreError

__all__ = ["LazyStore", "open_store"]


class LazyStore(MountpointStore):
    """The store of ``path``, opened (and the file created) on the first write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:  # no super(): opened later
        self.path = os.fspath(path)
        parent = Path(self.path).parent
        if not parent.is_dir():
            raise StoreError(f"{self.path}: the directory {str(parent)!r} does not exist")
        self._inner: MountpointStore | None = None
        if Path(self.path).exists():
            self._inner = MountpointStore(self.path)

    def _open(self) -> MountpointStore:
        if self._inner is None:
            self._inner = MountpointStore(self.path)
        return self._inner

    @property
    def opened(self) -> bool:
        return self._inner is not None

    @property
    def version(self) -> int:
        return self._open().version

    def load_all(self) -> Sequence[StoredMountpoint]:
        return self._inner.load_all() if self._inner is not None else []

    def save(self, mp_id: int, config: Any) -> None:
        self._open().save(mp_id, config)

    def delete(self, mp_id: int) -> None:
        if self._inner is not None:
            self._inner.delete(mp_id)

    def ids(self) -> set[int]:
        return self._inner.ids() if self._inner is not None else set()

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def open_store(path: str) -> MountpointStore:
    """``:memory:`` as is; a file path lazily (see the module)."""
    return MountpointStore(MEMORY) if path == MEMORY else LazyStore(path)
