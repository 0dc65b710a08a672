"""Named points in the steps where the crash-safety tests stop a worker dead.

With `CONNECTOR_CHAOS_PAUSE_AT` naming a point, a worker that reaches it writes a marker file
into `CONNECTOR_CHAOS_MARKER_DIR` and hangs, so a test can SIGKILL it at exactly that moment
(say, after ApexVerify accepted a launch but before the launch was committed). Unset, as in
production, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def chaos_point(name: str) -> None:
    wanted = os.environ.get("CONNECTOR_CHAOS_PAUSE_AT")
    if not wanted or name not in wanted.split(","):
        return
    marker_dir = Path(os.environ.get("CONNECTOR_CHAOS_MARKER_DIR", "."))
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / name).write_text(str(os.getpid()))
    while True:  # until the test kills this process
        time.sleep(60)
