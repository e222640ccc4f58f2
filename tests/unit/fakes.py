"""Stand-ins for the faust pieces an agent's boundary touches, for unit tests without a
broker: a message with its coordinates, the event around it, and a topic that keeps what is
sent to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float = 0.0


@dataclass
class Event:
    message: Message


class Topic:
    """Stands in for the dead-letter topic: keeps (key, decoded value) of what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict[str, Any]]] = []

    async def send(self, *, key: bytes, value: bytes) -> None:
        self.sent.append((key, orjson.loads(value)))
