"""The room application: publish/subscribe SFU rooms (docs/rooms.md)."""

from sfu.apps.room.app import RoomApp
from sfu.apps.room.model import RoomPolicy

__all__ = ["RoomApp", "RoomPolicy"]
