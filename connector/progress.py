"""A live view of one sync's steps for the terminal (rich).

It fits the console's width (80 columns is enough): long pause reasons and errors are cut with
an ellipsis instead of wrapping, and the view always ends its last line, on a terminal or not.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from connector.models import Sync, SyncStatus
from connector.states import PROGRESS_ORDER


class SyncProgress:
    """Shows each step as done, running (with its elapsed time) or waiting."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.entered: dict[str, float] = {}

    def __enter__(self) -> SyncProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)
        if not self.console.is_terminal:
            self.console.line()  # rich ends the line itself only on a terminal

    def update(self, sync: Sync) -> None:
        self.entered.setdefault(sync.status, time.monotonic())
        self.live.update(self._render(sync))

    def _render(self, sync: Sync) -> Table:
        title = _shorten(f"sync {sync.id}: {sync.name}", self.console.width - 2)
        table = Table(title=title, show_header=False, box=None, min_width=len(title) + 2)
        # Mark, step (16), elapsed (5) and their padding take 31 columns; the detail gets the rest.
        detail_width = max(self.console.width - 31, 10)
        current = SyncStatus(sync.status)
        reached = current in PROGRESS_ORDER and PROGRESS_ORDER.index(current)
        for index, step in enumerate(PROGRESS_ORDER):
            if step == current and step != SyncStatus.COMPLETED:
                elapsed = time.monotonic() - self.entered.get(step, time.monotonic())
                pause = _shorten(sync.pause_reason or "", detail_width)
                table.add_row("[yellow]…[/]", step.value, f"{elapsed:.0f}s", pause)
            elif reached is not False and index <= reached:
                table.add_row("[green]✓[/]", step.value, "", "")
            else:
                table.add_row(" ", f"[dim]{step.value}[/]", "", "")
        if current not in PROGRESS_ORDER:
            detail = f"{sync.error_code}: {sync.error_message}" if sync.error_code else ""
            table.add_row("[red]■[/]", current.value, "", _shorten(detail, detail_width))
        return table


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
