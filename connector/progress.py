"""A live view of one sync's steps for the terminal (rich)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from connector.models import Sync, SyncStatus

STEP_ORDER = [
    SyncStatus.EXPORTING,
    SyncStatus.UPLOADING,
    SyncStatus.CONFIGURING,
    SyncStatus.PARSING,
    SyncStatus.READY,
    SyncStatus.LAUNCHING,
    SyncStatus.VERIFYING,
    SyncStatus.FETCHING_RESULTS,
    SyncStatus.WRITING_BACK,
    SyncStatus.COMPLETED,
]


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

    def update(self, sync: Sync) -> None:
        self.entered.setdefault(sync.status, time.monotonic())
        self.live.update(self._render(sync))

    def _render(self, sync: Sync) -> Table:
        table = Table(title=f"sync {sync.id}: {sync.name}", show_header=False, box=None)
        current = SyncStatus(sync.status)
        reached = current in STEP_ORDER and STEP_ORDER.index(current)
        for index, step in enumerate(STEP_ORDER):
            if step == current and step != SyncStatus.COMPLETED:
                elapsed = time.monotonic() - self.entered.get(step, time.monotonic())
                table.add_row("[yellow]…[/]", step.value, f"{elapsed:.0f}s", sync.pause_reason or "")
            elif reached is not False and index <= reached:
                table.add_row("[green]✓[/]", step.value, "", "")
            else:
                table.add_row(" ", f"[dim]{step.value}[/]", "", "")
        if current not in STEP_ORDER:
            detail = f"{sync.error_code}: {sync.error_message}" if sync.error_code else ""
            table.add_row("[red]■[/]", current.value, "", detail)
        return table
