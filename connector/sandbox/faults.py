"""Injected failures shared by the CRM sandboxes: the next `count` requests to a route fail with `kind`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class FaultPlan:
    def __init__(self, kinds: Iterable[str]) -> None:
        self.kinds = tuple(kinds)
        self._pending: list[dict[str, Any]] = []

    def add(self, endpoint: str, kind: str, count: int) -> None:
        if kind not in self.kinds:
            raise ValueError(f"unknown fault kind {kind!r}; known: {list(self.kinds)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        self._pending.append({"endpoint": endpoint, "kind": kind, "count": count})

    def take(self, route: str) -> str | None:
        """The fault for this request to `route`, if one is planned (and count it down)."""
        for fault in self._pending:
            if fault["endpoint"] in (route, "any"):
                fault["count"] -= 1
                if fault["count"] == 0:
                    self._pending.remove(fault)
                return str(fault["kind"])
        return None

    def pending(self) -> list[dict[str, Any]]:
        return [dict(f) for f in self._pending]
